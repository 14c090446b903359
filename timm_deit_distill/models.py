"""Registry entries for the distilled DeiT family.

timm already registers the four canonical distilled DeiT models; re-registering a name would wipe
timm's pretrained tags (FACTS.md), so canonical names are registered here only when the installed
timm lacks them. The variants timm has never had are added, each timm's own
``VisionTransformerDistilled`` built through timm's DeiT builder (pretrained filter, feature cfg).
Importing this module touches neither the network nor the disk.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import generate_default_cfgs, is_model, register_model
from timm.models.deit import VisionTransformerDistilled, _create_deit

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


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": None,
        "crop_pct": 0.9,
        "interpolation": "bicubic",
        "fixed_input_size": True,
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj",
        "classifier": ("head", "head_dist"),
        "license": "apache-2.0",
        "paper_ids": "arXiv:2012.12877",
        **kwargs,
    }


def _fb_in1k(arch: str, **kwargs: Any) -> dict[str, Any]:
    # Full hub ids: timm only auto-completes the bare 'timm/' prefix for its own modules' names.
    return _cfg(hf_hub_id=f"timm/{arch}.fb_in1k", **kwargs)


_FINETUNE_NOTE = (
    "ImageNet-1k weights trained at 224px; timm resamples the position embedding to 384 on load. "
    "Fine-tune at 384 before use.",
)
_SMALL_IMAGE_NOTE = ("No released weights: a 32x32 architecture for small-image datasets and the CPU demo.",)

default_cfgs = generate_default_cfgs({
    # Canonical entries, used only where the installed timm lacks the name.
    "deit_tiny_distilled_patch16_224.fb_in1k": _fb_in1k("deit_tiny_distilled_patch16_224"),
    "deit_small_distilled_patch16_224.fb_in1k": _fb_in1k("deit_small_distilled_patch16_224"),
    "deit_base_distilled_patch16_224.fb_in1k": _fb_in1k("deit_base_distilled_patch16_224"),
    "deit_base_distilled_patch16_384.fb_in1k": _fb_in1k(
        "deit_base_distilled_patch16_384", input_size=(3, 384, 384), crop_pct=1.0),
    # Fine-tuning targets: the 224 weights, resampled to 384 by timm's checkpoint filter.
    "deit_tiny_distilled_patch16_384.fb_in1k_224": _fb_in1k(
        "deit_tiny_distilled_patch16_224", input_size=(3, 384, 384), crop_pct=1.0, notes=_FINETUNE_NOTE),
    "deit_small_distilled_patch16_384.fb_in1k_224": _fb_in1k(
        "deit_small_distilled_patch16_224", input_size=(3, 384, 384), crop_pct=1.0, notes=_FINETUNE_NOTE),
    # Small-image variants: 32x32 inputs, 4x4 patches (64 tokens), 10 classes by default.
    "deit_tiny_distilled_patch4_32.untrained": _cfg(
        input_size=(3, 32, 32), num_classes=10, crop_pct=1.0, notes=_SMALL_IMAGE_NOTE),
    "deit_small_distilled_patch4_32.untrained": _cfg(
        input_size=(3, 32, 32), num_classes=10, crop_pct=1.0, notes=_SMALL_IMAGE_NOTE),
})


def _builder(variant: str) -> Callable[..., VisionTransformerDistilled]:
    def build(pretrained: bool = False, **kwargs: Any) -> VisionTransformerDistilled:
        model_args = dict(VARIANT_ARGS[variant])
        model_args.pop("num_classes", None)  # the pretrained cfg supplies the default class count
        return _create_deit(variant, pretrained=pretrained, distilled=True, **dict(model_args, **kwargs))

    build.__name__ = variant
    build.__qualname__ = variant
    build.__module__ = __name__
    build.__doc__ = f"DeiT distilled variant `{variant}` ({VARIANT_ARGS[variant]})."
    return build


def _register_all() -> None:
    for variant in DISTILLED_VARIANTS:
        if variant in CANONICAL_VARIANTS and is_model(variant):
            continue  # timm owns it; shadowing would delete its pretrained tags
        fn = _builder(variant)
        globals()[variant] = register_model(fn)


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


_register_all()
