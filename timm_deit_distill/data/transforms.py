"""timm's transforms, as timm's train.py builds them, with Pillow 13's posterize refusal made harmless."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from PIL import Image, ImageOps
from timm.data import create_transform
from timm.data.auto_augment import AugmentOp, AugMixAugment, AutoAugment, RandAugment

from .views import ViewSettings

__all__ = ["safe_posterize", "make_posterize_safe", "build_train_transform", "build_eval_transform"]


def safe_posterize(img: Image.Image, bits_to_keep: int, **_: Any) -> Image.Image:
    """timm's ``posterize`` op that accepts 0 bits as Pillow < 13 did (an all-black image).

    Pillow 13 rejects ``bits=0`` with ``ValueError``; timm's ``PosterizeIncreasing`` asks for it at
    high magnitudes (DeiT's ``rand-m9-mstd0.5-inc1``). Pillow < 13 computed the mask
    ``~(2 ** 8 - 1)``, i.e. every channel 0, which is also what TensorFlow's posterize gives.
    """
    bits = int(bits_to_keep)
    if bits >= 8:
        return img
    if bits >= 1:
        return ImageOps.posterize(img, bits)
    if img.mode in ("L", "RGB"):
        return img.point(lambda _: 0)
    return ImageOps.posterize(img, 1)  # other modes: the closest value Pillow 13 accepts


def make_posterize_safe(transform: Any) -> int:
    """Swap timm's posterize for :func:`safe_posterize` in every augment op inside ``transform``.

    Works on a ``Compose`` (or nested ones) holding timm's RandAugment, AutoAugment or AugMix;
    only the op's function changes, so every random draw stays timm's. Returns the ops patched.
    """
    patched = 0
    stack = [transform]
    while stack:
        t = stack.pop()
        if isinstance(t, AugmentOp):
            if t.name.startswith("Posterize"):
                t.aug_fn = safe_posterize
                patched += 1
        elif isinstance(t, (RandAugment, AugMixAugment)):
            stack.extend(t.ops)
        elif isinstance(t, AutoAugment):
            stack.extend(op for sub in t.policy for op in sub)
        elif hasattr(t, "transforms"):
            stack.extend(t.transforms)
    return patched


def build_train_transform(view: ViewSettings) -> Any:
    """timm's training transform for ``view`` (timm train.py flag semantics), posterize made safe."""
    a = view.augment
    transform = create_transform(
        view.input_size,
        is_training=True,
        no_aug=bool(a.no_aug),
        train_crop_mode=a.train_crop_mode,
        scale=a.scale,
        ratio=a.ratio,
        hflip=a.hflip,
        vflip=a.vflip,
        color_jitter=a.color_jitter,
        color_jitter_prob=a.color_jitter_prob,
        grayscale_prob=a.grayscale_prob,
        gaussian_blur_prob=a.gaussian_blur_prob,
        auto_augment=a.aa,
        interpolation=view.train_interpolation,
        mean=view.mean,
        std=view.std,
        re_prob=a.reprob,
        re_mode=a.remode,
        re_count=a.recount,
        re_num_splits=0,
        use_prefetcher=False,
    )
    make_posterize_safe(transform)
    return transform


def build_eval_transform(data_config: Mapping[str, Any]) -> Any:
    """timm's evaluation transform (resize, center crop by ``crop_pct``, normalise)."""
    return create_transform(
        data_config["input_size"],
        is_training=False,
        interpolation=data_config.get("interpolation", "bicubic"),
        mean=data_config["mean"],
        std=data_config["std"],
        crop_pct=data_config.get("crop_pct"),
        crop_mode=data_config.get("crop_mode"),
        use_prefetcher=False,
    )
