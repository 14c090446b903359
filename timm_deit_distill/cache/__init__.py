"""Teacher target cache: run the teacher once over exactly the views training will see, replay it later.

A view is identified by ``(seed, epoch, position)`` under ``--deterministic-aug`` (see
:mod:`timm_deit_distill.data`): the same identity picks the image, its augmentation, its Mixup/CutMix
partner and the cache row, so replaying targets is the same computation as running the teacher.

On disk (``DIR``)::

    manifest.json              fingerprint, store, epochs, rows per epoch, chunk list with sha256
    epoch-0000.safetensors     one chunk per epoch: the targets of every position, plus a one-byte
    epoch-0000.json            hash of each row's sample index; a sidecar with the chunk's sha256

Every file is written to a temporary sibling and renamed into place, so a killed build leaves whole
chunks or nothing; a new build over the same directory keeps finished chunks and computes the rest.
Several processes (torchrun) share the work by epoch.

:mod:`.store` (the files and what a row holds), :mod:`.fingerprint` (what decides a cache's contents),
:mod:`.build` (building) and :mod:`.replay` (:class:`TeacherTargetCache`).

Stores: ``hard`` (teacher argmax, int16: exact for hard distillation), ``topk:K`` (the K largest
logits in fp16 and their classes; the other classes get a large negative logit, so soft targets are
renormalised over the stored classes: an approximation), ``full`` (every logit in fp32: exact) and
``full:fp16`` (half the size, logits rounded to fp16).
"""

from __future__ import annotations

from ..data import dataset_fingerprint
from ..errors import CacheError, CacheMismatch
from .build import build_cache, check_cache_dir, rows_per_epoch
from .fingerprint import library_versions, make_fingerprint
from .replay import TeacherTargetCache
from .store import TOPK_FILL, CacheStore

__all__ = [
    "CacheError",
    "CacheMismatch",
    "CacheStore",
    "TeacherTargetCache",
    "TOPK_FILL",
    "build_cache",
    "check_cache_dir",
    "rows_per_epoch",
    "dataset_fingerprint",
    "library_versions",
    "make_fingerprint",
]
