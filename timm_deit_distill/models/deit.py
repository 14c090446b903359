"""timm registry entries for the distilled DeiT family, one ``@register_model`` function per name.

Written the way timm writes ``timm/models/deit.py``: a ``_cfg`` helper, ``default_cfgs`` made by
``generate_default_cfgs`` before the entrypoints, and one greppable function per architecture, each building
timm's own ``VisionTransformerDistilled`` with timm's public builder (``build_model_with_cfg``, timm's ViT
checkpoint filter, a feature cfg), as timm's DeiT builder does. The module's name makes timm's module key
``'deit'``, the key of timm's own DeiT models: ``timm.list_models(module='deit')`` lists these beside timm's,
and timm's module-filtered tests collect them.

timm already registers the four canonical distilled DeiT models; re-registering a name would wipe timm's
pretrained tags (FACTS.md), so their entrypoints here are registered only when the installed timm lacks
them. Importing this module touches neither the network nor the disk.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, is_model, register_model
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import checkpoint_filter_fn

from .variants import VARIANT_ARGS

__all__: list[str] = []  # filled by register_model, as in timm's model modules


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


def _create_distilled(variant: str, pretrained: bool, **kwargs: Any) -> VisionTransformerDistilled:
    """timm's DeiT builder for a distilled variant: its architecture args (:data:`VARIANT_ARGS`), overridden
    by ``kwargs``; the pretrained cfg supplies the default class count."""
    model_args = {k: v for k, v in VARIANT_ARGS[variant].items() if k != "num_classes"}
    out_indices = kwargs.pop("out_indices", 3)
    return build_model_with_cfg(
        VisionTransformerDistilled,
        variant,
        pretrained,
        pretrained_filter_fn=partial(checkpoint_filter_fn, adapt_layer_scale=True),
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **dict(model_args, **kwargs),
    )


# --- canonical names: timm's own, registered below only where the installed timm lacks them ----------------

def deit_tiny_distilled_patch16_224(pretrained: bool = False, **kwargs: Any) -> VisionTransformerDistilled:
    """DeiT-Ti distilled, 224px, 16x16 patches (timm's own where it has it)."""
    return _create_distilled("deit_tiny_distilled_patch16_224", pretrained, **kwargs)


def deit_small_distilled_patch16_224(pretrained: bool = False, **kwargs: Any) -> VisionTransformerDistilled:
    """DeiT-S distilled, 224px, 16x16 patches (timm's own where it has it)."""
    return _create_distilled("deit_small_distilled_patch16_224", pretrained, **kwargs)


def deit_base_distilled_patch16_224(pretrained: bool = False, **kwargs: Any) -> VisionTransformerDistilled:
    """DeiT-B distilled, 224px, 16x16 patches (timm's own where it has it)."""
    return _create_distilled("deit_base_distilled_patch16_224", pretrained, **kwargs)


def deit_base_distilled_patch16_384(pretrained: bool = False, **kwargs: Any) -> VisionTransformerDistilled:
    """DeiT-B distilled, fine-tuned at 384px (timm's own where it has it)."""
    return _create_distilled("deit_base_distilled_patch16_384", pretrained, **kwargs)


for _canonical in (deit_tiny_distilled_patch16_224, deit_small_distilled_patch16_224,
                   deit_base_distilled_patch16_224, deit_base_distilled_patch16_384):
    if not is_model(_canonical.__name__):  # timm owns it otherwise; shadowing would delete its pretrained tags
        register_model(_canonical)


# --- the variants timm has never had --------------------------------------------------------------------------

@register_model
def deit_tiny_distilled_patch16_384(pretrained: bool = False, **kwargs: Any) -> VisionTransformerDistilled:
    """DeiT-Ti distilled at 384px: the fine-tuning target for the 224px weights (position embedding resampled)."""
    return _create_distilled("deit_tiny_distilled_patch16_384", pretrained, **kwargs)


@register_model
def deit_small_distilled_patch16_384(pretrained: bool = False, **kwargs: Any) -> VisionTransformerDistilled:
    """DeiT-S distilled at 384px: the fine-tuning target for the 224px weights (position embedding resampled)."""
    return _create_distilled("deit_small_distilled_patch16_384", pretrained, **kwargs)


@register_model
def deit_tiny_distilled_patch4_32(pretrained: bool = False, **kwargs: Any) -> VisionTransformerDistilled:
    """DeiT-Ti distilled for 32x32 images: 4x4 patches (64 tokens), 10 classes by default; no released weights."""
    return _create_distilled("deit_tiny_distilled_patch4_32", pretrained, **kwargs)


@register_model
def deit_small_distilled_patch4_32(pretrained: bool = False, **kwargs: Any) -> VisionTransformerDistilled:
    """DeiT-S distilled for 32x32 images: 4x4 patches (64 tokens), 10 classes by default; no released weights."""
    return _create_distilled("deit_small_distilled_patch4_32", pretrained, **kwargs)
