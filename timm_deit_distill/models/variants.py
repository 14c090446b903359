"""The distilled DeiT family this package knows: names, architecture args, and their plain-timm equivalents.

Data only (the registry entries that build them are in :mod:`.deit`). Importing this module touches neither
the network nor the disk.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DISTILLED_VARIANTS", "PLUGIN_VARIANTS", "CANONICAL_VARIANTS", "VARIANT_ARGS", "timm_equivalent"]

_TINY = dict(embed_dim=192, depth=12, num_heads=3)
_SMALL = dict(embed_dim=384, depth=12, num_heads=6)
_BASE = dict(embed_dim=768, depth=12, num_heads=12)

# Architecture args for every distilled variant this package knows, canonical ones included.
VARIANT_ARGS: dict[str, dict[str, Any]] = {
    "deit_tiny_distilled_patch16_224": dict(patch_size=16, **_TINY),
    "deit_small_distilled_patch16_224": dict(patch_size=16, **_SMALL),
    "deit_base_distilled_patch16_224": dict(patch_size=16, **_BASE),
    "deit_base_distilled_patch16_384": dict(patch_size=16, img_size=384, **_BASE),
    "deit_tiny_distilled_patch16_384": dict(patch_size=16, img_size=384, **_TINY),
    "deit_small_distilled_patch16_384": dict(patch_size=16, img_size=384, **_SMALL),
    "deit_tiny_distilled_patch4_32": dict(patch_size=4, img_size=32, num_classes=10, **_TINY),
    "deit_small_distilled_patch4_32": dict(patch_size=4, img_size=32, num_classes=10, **_SMALL),
}
CANONICAL_VARIANTS = (
    "deit_tiny_distilled_patch16_224",
    "deit_small_distilled_patch16_224",
    "deit_base_distilled_patch16_224",
    "deit_base_distilled_patch16_384",
)
PLUGIN_VARIANTS = (
    "deit_tiny_distilled_patch16_384",
    "deit_small_distilled_patch16_384",
    "deit_tiny_distilled_patch4_32",
    "deit_small_distilled_patch4_32",
)
DISTILLED_VARIANTS = CANONICAL_VARIANTS + PLUGIN_VARIANTS


def timm_equivalent(variant: str, **overrides: Any) -> tuple[str, dict[str, Any]]:
    """The architecture plain timm registers plus the model args that build ``variant`` with it.

    Used to write configs that load without this package: e.g. ``deit_tiny_distilled_patch4_32`` is
    ``deit_tiny_distilled_patch16_224`` with ``img_size=32, patch_size=4, num_classes=10``.
    """
    if variant not in VARIANT_ARGS:
        raise KeyError(f"{variant!r} is not a distilled DeiT variant; choose one of {sorted(VARIANT_ARGS)}")
    if variant in CANONICAL_VARIANTS:
        return variant, dict(overrides)
    base = {192: "deit_tiny_distilled_patch16_224", 384: "deit_small_distilled_patch16_224"}
    args = VARIANT_ARGS[variant]
    model_args = {"img_size": args["img_size"], "patch_size": args["patch_size"]}
    if "num_classes" in args:
        model_args["num_classes"] = args["num_classes"]
    model_args.update(overrides)
    return base[args["embed_dim"]], model_args

