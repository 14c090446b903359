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

Stores: ``hard`` (teacher argmax, int16: exact for hard distillation), ``topk:K`` (the K largest
logits in fp16 and their classes; the other classes get a large negative logit, so soft targets are
renormalised over the stored classes: an approximation), ``full`` (every logit in fp32: exact) and
``full:fp16`` (half the size, logits rounded to fp16).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .atomic import atomic_path, sha256_file
from .data import (
    LoaderSettings,
    ViewLayout,
    ViewSettings,
    build_train_loader,
    check_num_classes,
    dataset_fingerprint,
)
from .errors import CacheError, CacheMismatch
from .run_folder import RunLock, format_size, partial_pattern
from .teacher import TeacherSettings

__all__ = [
    "CacheError",
    "CacheMismatch",
    "CacheStore",
    "TeacherTargetCache",
    "TOPK_FILL",
    "build_cache",
    "dataset_fingerprint",
    "library_versions",
    "make_fingerprint",
]

_logger = logging.getLogger(__name__)

FORMAT = "timm-deit-distill/teacher-target-cache"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
# Logit given to classes a top-k row does not store: finite (no inf - inf = nan in a softmax or a KL
# term) and low enough that exp() of it is exactly 0 beside any real logit at any sane temperature.
TOPK_FILL = -1.0e4
# check_training hashes every chunk a run needs when they add up to no more than this; beyond it, it checks
# their sizes and headers up front and each chunk's sha256 when its epoch is loaded.
HASH_UP_FRONT_BYTES = 4_000_000_000

_CACHE_PARTIAL = partial_pattern(r"epoch-\d+\.(?:safetensors|json)|manifest\.json")
_BUILD_BUSY = ("{folder} is in use: another deit-distill cache build{holder} is writing this cache now. Wait for it "
               "to end, then rerun the build to resume or extend it; or build into another --out.")

_DTYPES = {"U8": np.uint8, "I16": np.int16, "I32": np.int32, "I64": np.int64, "F16": np.float16,
           "F32": np.float32}


# --------------------------------------------------------------------------------------------------
# What is stored


@dataclass(frozen=True)
class CacheStore:
    """Parsed ``--store`` value: ``hard``, ``topk:K``, ``full`` or ``full:fp16``."""

    kind: str
    k: int = 0
    dtype: str = "float32"

    @classmethod
    def parse(cls, spec: str) -> CacheStore:
        spec = str(spec).strip().lower()
        if spec == "hard":
            return cls("hard")
        if spec in ("full", "full:fp32"):
            return cls("full", dtype="float32")
        if spec == "full:fp16":
            return cls("full", dtype="float16")
        if spec.startswith("topk:"):
            try:
                k = int(spec[5:])
            except ValueError:
                k = 0
            if k >= 1:
                return cls("topk", k=k, dtype="float16")
        raise CacheError(f"--store {spec!r} is not a store; use hard, topk:K (e.g. topk:5), full or full:fp16.")

    @property
    def spec(self) -> str:
        if self.kind == "topk":
            return f"topk:{self.k}"
        return "full:fp16" if self.kind == "full" and self.dtype == "float16" else self.kind

    def bytes_per_view(self, num_classes: int) -> int:
        """Bytes one view takes on disk (targets plus the one-byte sample-index check)."""
        cls_bytes = 2 if num_classes <= np.iinfo(np.int16).max else 4
        if self.kind == "hard":
            target = cls_bytes
        elif self.kind == "topk":
            target = self.k * (2 + cls_bytes)
        else:
            target = num_classes * (2 if self.dtype == "float16" else 4)
        return target + 1

    def encode(self, logits: torch.Tensor) -> dict[str, np.ndarray]:
        """Arrays to store for teacher logits ``(B, C)`` float."""
        num_classes = logits.shape[1]
        index_dtype = np.int16 if num_classes <= np.iinfo(np.int16).max else np.int32
        if self.kind == "hard":
            return {"hard": logits.argmax(dim=1).numpy().astype(index_dtype)}
        if self.kind == "topk":
            k = min(self.k, num_classes)
            values, indices = logits.float().topk(k, dim=1)
            return {"topk_values": values.numpy().astype(np.float16),
                    "topk_indices": indices.numpy().astype(index_dtype)}
        return {"logits": logits.float().numpy().astype(self.dtype)}

    def decode(self, arrays: dict[str, np.ndarray], num_classes: int) -> torch.Tensor:
        """Targets from stored rows: int64 ``(B,)`` for hard, float32 logits ``(B, C)`` otherwise."""
        if self.kind == "hard":
            return torch.from_numpy(arrays["hard"].astype(np.int64))
        if self.kind == "topk":
            values = torch.from_numpy(arrays["topk_values"].astype(np.float32))
            indices = torch.from_numpy(arrays["topk_indices"].astype(np.int64))
            out = torch.full((len(values), num_classes), TOPK_FILL, dtype=torch.float32)
            return out.scatter_(1, indices, values)
        return torch.from_numpy(arrays["logits"].astype(np.float32))


# --------------------------------------------------------------------------------------------------
# Fingerprint


def library_versions() -> dict[str, str]:
    """Versions of every library whose code decides a view's pixels or order."""
    import PIL
    import timm

    from .version import __version__

    return {"torch": torch.__version__.split("+")[0], "timm": timm.__version__, "numpy": np.__version__,
            "pillow": PIL.__version__, "timm_deit_distill": __version__}


def make_fingerprint(*, dataset: dict[str, Any], views: dict[str, Any], teacher: dict[str, Any] | None,
                     store: str, versions: dict[str, str]) -> dict[str, Any]:
    """Everything that decides a cache's contents (plain JSON types)."""
    return {"dataset": dataset, "views": views, "teacher": teacher, "store": store, "versions": versions}


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def _fingerprint_id(fingerprint: dict[str, Any]) -> str:
    return hashlib.sha256(_canonical(fingerprint).encode()).hexdigest()


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for key, value in obj.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: obj}


def _differences(cached: dict[str, Any], current: dict[str, Any]) -> list[str]:
    a, b = _flatten(cached), _flatten(current)
    diffs = []
    for key in sorted(set(a) | set(b)):
        if _canonical(a.get(key)) != _canonical(b.get(key)):
            diffs.append(f"{key}: cache {a.get(key)!r}, now {b.get(key)!r}")
    return diffs


# --------------------------------------------------------------------------------------------------
# Files


def _write_json(path: Path, data: dict[str, Any]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.write("\n")


def _chunk_name(epoch: int) -> str:
    return f"epoch-{epoch:04d}.safetensors"


def _read_header(path: Path) -> tuple[dict[str, Any], int]:
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise CacheError(f"{path} is not a safetensors file (truncated); fix: rebuild that epoch.")
        (length,) = struct.unpack("<Q", raw)
        if length > 100_000_000:
            raise CacheError(f"{path} is not a safetensors file; fix: rebuild that epoch.")
        header = json.loads(f.read(length))
    return header, 8 + length


def _memmap_chunk(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Map a safetensors file's tensors as read-only numpy arrays (rows are read on demand)."""
    header, start = _read_header(path)
    metadata = header.pop("__metadata__", {}) or {}
    arrays = {}
    for name, info in header.items():
        dtype = np.dtype(_DTYPES[info["dtype"]]).newbyteorder("<")
        begin, end = info["data_offsets"]
        count = (end - begin) // dtype.itemsize
        arr = np.memmap(path, dtype=dtype, mode="r", offset=start + begin, shape=(count,)) if count else \
            np.zeros(0, dtype)
        arrays[name] = arr.reshape(info["shape"])
    return arrays, metadata


def _write_chunk(path: Path, arrays: dict[str, np.ndarray], metadata: dict[str, str]) -> str:
    from safetensors.numpy import save_file

    with atomic_path(path) as tmp:
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, tmp, metadata=metadata)
    return sha256_file(path)


def _chunk_metadata(fid: str, epoch: int) -> dict[str, str]:
    # One key: safetensors writes metadata from a hash map, so several keys come out in varying order and
    # equal chunks would get different bytes (and sha256s).
    return {"timm_deit_distill_cache": _canonical({"format": FORMAT, "fingerprint_sha256": fid, "epoch": epoch})}


def _parse_chunk_metadata(metadata: dict[str, str]) -> dict[str, Any]:
    try:
        return json.loads(metadata.get("timm_deit_distill_cache", "{}"))
    except json.JSONDecodeError:
        return {}


def _sample_check(sample_index: np.ndarray) -> np.ndarray:
    """One byte per row from each row's sample index (Knuth's multiplicative hash, top byte).

    A row computed for another image fails the check with probability 255/256, so a misordered batch
    of B rows slips through with probability 256**-B, for a sixth of the cost of storing the index.
    """
    h = (np.asarray(sample_index, dtype=np.uint64) * np.uint64(2654435761)) & np.uint64(0xFFFFFFFF)
    return (h >> np.uint64(24)).astype(np.uint8)


# --------------------------------------------------------------------------------------------------
# Building


def rows_per_epoch(num_samples: int, group_size: int) -> int:
    """Positions a cache holds per epoch: every one a single process trains on (any world size uses a subset)."""
    return (num_samples // group_size) * group_size


def _teacher_logits(teacher: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return teacher(inputs).float().cpu()


def _progress(total: int, desc: str) -> Any:
    if sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit="batch", leave=False)
    return None


def build_cache(
    train_ds: Any,
    view: ViewSettings,
    loader: LoaderSettings,
    teacher: Callable[[torch.Tensor], torch.Tensor],
    out: str | os.PathLike[str],
    *,
    epochs: int,
    store: str | CacheStore,
    teacher_description: dict[str, Any] | None = None,
    teacher_check: dict[str, Any] | None = None,
    rank: int = 0,
    world_size: int = 1,
    barrier: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Run ``teacher`` over every view of epochs ``0..epochs-1`` and write the cache into ``out``.

    ``view`` and ``loader`` are the training run's settings; the views are built with
    ``--deterministic-aug`` whatever ``view`` says. Finished chunks already in ``out`` are kept; a
    cache in ``out`` built for other settings is refused (:class:`CacheMismatch`). With several
    processes, process ``rank`` computes the epochs ``e`` with ``e % world_size == rank``;
    ``barrier`` (e.g. ``torch.distributed.barrier``) is called once rank 0 has removed temporary files
    a killed build left, and again before rank 0 writes the final manifest. ``teacher_check`` (the
    teacher's ``TeacherCheck.as_dict()`` measured before building) is recorded in the manifest, outside the
    fingerprint, so training from the cache can report it. Returns the manifest.
    """
    store = store if isinstance(store, CacheStore) else CacheStore.parse(store)
    if epochs < 1:
        raise CacheError(f"--epochs {epochs} must be >= 1.")
    view = view.deterministic()  # a cache is only replayable from deterministic views
    num_classes = check_num_classes(train_ds, view.num_classes)
    views = view.fingerprint()
    if teacher_description is None:
        teacher_description = getattr(teacher, "description", None)
    # Where the weights file lies is no part of the teacher's identity (its sha256 is).
    teacher_identity = {k: v for k, v in (teacher_description or {}).items() if k != "file"} or None
    fingerprint = make_fingerprint(dataset=dataset_fingerprint(train_ds), views=views, teacher=teacher_identity,
                                   store=store.spec, versions=library_versions())
    fid = _fingerprint_id(fingerprint)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / MANIFEST
    previous = _load_manifest(manifest_path) if manifest_path.exists() else None
    if previous is not None and previous["fingerprint_sha256"] != fid:
        diffs = _differences(previous["fingerprint"], fingerprint)
        raise CacheMismatch(
            f"{out} holds a cache built with other settings ({'; '.join(diffs) or 'format'}); fix: build into "
            "another --out directory, or delete this one.")
    rows = rows_per_epoch(len(train_ds), views["mix_group_size"])
    total_epochs = max(epochs, previous["epochs"] if previous else 0)
    manifest = {"format": FORMAT, "version": FORMAT_VERSION, "fingerprint": fingerprint, "fingerprint_sha256": fid,
                "store": store.spec, "num_classes": num_classes, "teacher": teacher_description,
                "teacher_check": teacher_check,
                "rows_per_epoch": rows, "epochs": total_epochs, "bytes_per_view": store.bytes_per_view(num_classes),
                "chunks": [], "complete": False}
    lock = None
    if rank == 0:
        # The build's lock on --out: a second build into it is refused, and what a killed build left half
        # written (temporaries of the cache's own file names only) is removed, since no live writer owns it.
        lock = RunLock.acquire(out, busy=_BUILD_BUSY)
        removed, size = lock.remove_partial_files(_CACHE_PARTIAL)
        if removed:
            _logger.info("Removed %d partial file(s) (%s) a killed build left in %s.", removed, format_size(size), out)
    try:
        return _build_epochs(out, manifest, train_ds, view, loader, teacher, store, fid, rows,
                             epochs=epochs, rank=rank, world_size=world_size, barrier=barrier)
    finally:
        if lock is not None:
            lock.release()


def _build_epochs(out: Path, manifest: dict[str, Any], train_ds: Any, view: ViewSettings, loader_settings: LoaderSettings,
                  teacher: Callable[[torch.Tensor], torch.Tensor], store: CacheStore, fid: str, rows: int, *,
                  epochs: int, rank: int, world_size: int, barrier: Callable[[], None] | None) -> dict[str, Any]:
    if rank == 0:
        _finalise_manifest(out, manifest)
    if barrier is not None:
        barrier()

    layout = ViewLayout(len(train_ds), seed=int(view.augment.seed), repeats=view.augment.repeats,
                        group_size=int(view.augment.mix_group_size), grouped=True)
    loader = None
    for epoch in range(epochs):
        if epoch % world_size != rank or _chunk_done(out, epoch, fid):
            continue
        if loader is None:
            loader = build_train_loader(train_ds, view, loader_settings, drop_last=False)
        _build_epoch(out, epoch, loader, layout, teacher, store, fid, rows)
        if rank == 0:
            _finalise_manifest(out, manifest)
    if barrier is not None:
        barrier()
    if rank == 0:
        manifest = _finalise_manifest(out, manifest)
    return manifest


def _build_epoch(out: Path, epoch: int, loader: Any, layout: ViewLayout,
                 teacher: Callable[[torch.Tensor], torch.Tensor], store: CacheStore, fid: str, rows: int) -> None:
    loader.set_epoch(epoch)
    columns: dict[str, np.ndarray] = {}
    filled = np.zeros(rows, dtype=bool)
    bar = _progress(len(loader), f"epoch {epoch}")
    for step, (inputs, _, view_index) in enumerate(loader):
        encoded = store.encode(_teacher_logits(teacher, inputs))
        positions = view_index.numpy()
        for name, values in encoded.items():
            if name not in columns:
                columns[name] = np.zeros((rows, *values.shape[1:]), dtype=values.dtype)
            columns[name][positions] = values
        filled[positions] = True
        if bar is not None:
            bar.update(1)
        elif step % 50 == 0 or step == len(loader) - 1:
            _logger.info("cache epoch %d: batch %d/%d", epoch, step + 1, len(loader))
    if bar is not None:
        bar.close()
    if not filled.all():  # the loader and the row count disagree: never write a chunk with holes
        raise CacheError(f"epoch {epoch}: {int((~filled).sum())} of {rows} rows were not produced by the loader.")
    columns["sample_check"] = _sample_check(layout.epoch(epoch)[0][:rows])
    path = out / _chunk_name(epoch)
    sha = _write_chunk(path, columns, _chunk_metadata(fid, epoch))
    _write_json(path.with_suffix(".json"), {"epoch": epoch, "file": path.name, "sha256": sha, "rows": rows,
                                            "bytes": path.stat().st_size, "fingerprint_sha256": fid})
    _logger.info("cache epoch %d written: %s (%d rows)", epoch, path.name, rows)


def _chunk_done(out: Path, epoch: int, fid: str) -> bool:
    """Whether epoch's chunk is complete; adopts a chunk renamed into place before its sidecar was written."""
    path = out / _chunk_name(epoch)
    sidecar = path.with_suffix(".json")
    if not path.exists():
        return False
    if sidecar.exists():
        info = json.loads(sidecar.read_text())
        return info.get("fingerprint_sha256") == fid and info.get("bytes") == path.stat().st_size
    try:  # killed between the chunk's rename and its sidecar's: the chunk itself is whole
        header, _ = _read_header(path)
    except (CacheError, ValueError):
        return False
    meta = _parse_chunk_metadata(header.get("__metadata__") or {})
    if meta.get("fingerprint_sha256") != fid or meta.get("epoch") != epoch:
        return False
    rows = header["sample_check"]["shape"][0]
    _write_json(sidecar, {"epoch": epoch, "file": path.name, "sha256": sha256_file(path), "rows": rows,
                          "bytes": path.stat().st_size, "fingerprint_sha256": fid})
    return True


def _finalise_manifest(out: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    chunks = []
    for epoch in range(manifest["epochs"]):
        sidecar = (out / _chunk_name(epoch)).with_suffix(".json")
        if sidecar.exists():
            info = json.loads(sidecar.read_text())
            if info.get("fingerprint_sha256") == manifest["fingerprint_sha256"]:
                chunks.append({k: info[k] for k in ("epoch", "file", "sha256", "rows", "bytes")})
    manifest = {**manifest, "chunks": chunks, "complete": len(chunks) == manifest["epochs"]}
    _write_json(out / MANIFEST, manifest)
    return manifest


def _load_manifest(path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CacheError(f"cannot read the cache manifest {path}: {e}; fix: rebuild the cache.") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CacheError(f"{path} is not a teacher target cache manifest; fix: point at a directory written by "
                         "`deit-distill cache build`.")
    if manifest.get("version") != FORMAT_VERSION:
        raise CacheError(f"{path} has cache format version {manifest.get('version')}, this package reads "
                         f"{FORMAT_VERSION}; fix: rebuild the cache with this version.")
    return manifest


# --------------------------------------------------------------------------------------------------
# Replay


class TeacherTargetCache:
    """A built cache, opened for replay.

    ``check_training(view, train_ds, epochs, ...)`` must pass before ``targets(epoch, view_index)``: it
    refuses a training configuration that would see other views (naming the fields) and sets up
    the per-row sample-index check.
    """

    def __init__(self, directory: Path, manifest: dict[str, Any], *, verify: bool = True) -> None:
        self.directory = directory
        self.manifest = manifest
        self.store = CacheStore.parse(manifest["store"])
        self.num_classes = int(manifest["num_classes"])
        self.rows_per_epoch = int(manifest["rows_per_epoch"])
        self.verify = verify
        self._chunks = {int(c["epoch"]): c for c in manifest["chunks"]}
        self._layout: ViewLayout | None = None
        self._open_epoch: int | None = None
        self._arrays: dict[str, np.ndarray] = {}
        self._expected_check: np.ndarray | None = None

    @classmethod
    def open(cls, directory: str | os.PathLike[str], *, verify: bool = True) -> TeacherTargetCache:
        """Open the cache in ``directory`` (each chunk's sha256 is checked on first use when ``verify``)."""
        directory = Path(directory)
        path = directory / MANIFEST
        if not path.exists():
            raise CacheError(f"no teacher target cache in {directory} ({MANIFEST} missing); fix: build one with "
                             "`deit-distill cache build <training flags> --epochs N --store hard --out DIR`.")
        return cls(directory, _load_manifest(path), verify=verify)

    @property
    def fingerprint(self) -> dict[str, Any]:
        return self.manifest["fingerprint"]

    @property
    def teacher_description(self) -> dict[str, Any] | None:
        """The teacher's ``description`` as recorded at build time (for checkpoints and model cards)."""
        return self.manifest.get("teacher") or self.fingerprint.get("teacher")

    @property
    def epochs(self) -> list[int]:
        """Epochs whose chunks are complete."""
        return sorted(self._chunks)

    def check_training(self, view: ViewSettings, train_ds: Any, epochs: int, *, distill_type: str,
                       teacher: TeacherSettings | None = None, start_epoch: int = 0) -> None:
        """Refuse training settings that would not replay this cache's views; name what differs.

        ``view`` are the run's view settings, ``epochs`` the number of epochs it trains (``0..epochs-1``),
        ``distill_type`` its distillation type; ``teacher``, the teacher settings given with the cache, are
        accepted only when they are the cache's own (no teacher runs).
        """
        problems = []
        if not view.augment.deterministic_aug:
            problems.append("deterministic_aug: cache True, now False (fix: add --deterministic-aug)")
        current = make_fingerprint(
            dataset=dataset_fingerprint(train_ds), views=view.deterministic().fingerprint(),
            teacher=self.teacher_description, store=self.store.spec, versions=library_versions())
        problems += _differences({k: v for k, v in self.fingerprint.items() if k != "teacher"},
                                 {k: v for k, v in current.items() if k != "teacher"})
        if teacher is not None:
            problems += self._teacher_problems(teacher)
        if distill_type == "soft" and self.store.kind == "hard":
            problems.append("store: cache 'hard' holds teacher labels only, soft distillation needs logits "
                            "(fix: rebuild with --store full or --store topk:K, or train with --distill-type hard)")
        if problems:
            # One fix per problem: the general one only for the problems that do not carry their own.
            general = ("" if all("fix:" in p for p in problems) else " fix: train with the cache's settings, or "
                       "build a cache for these (`deit-distill cache build` with the same flags).")
            raise CacheMismatch(f"the teacher target cache in {self.directory} was built for other settings: "
                                + "; ".join(problems) + "." + general)
        needed = range(int(start_epoch), int(epochs))
        missing = [e for e in needed if e not in self._chunks]
        if missing:
            have = self.epochs
            span = f"epochs {have[0]}-{have[-1]}" if have else "no epochs"
            raise CacheMismatch(
                f"training runs epochs {needed.start}-{needed.stop - 1} ({epochs} epochs) but the cache in "
                f"{self.directory} holds {len(have)} ({span}); missing: {_ranges(missing)}. fix: extend it with "
                f"`deit-distill cache build ... --epochs {epochs} --out {self.directory}` (finished epochs are kept), "
                f"or train --epochs {len(have)}.")
        self._verify_chunks(needed)
        self._layout = ViewLayout(len(train_ds), seed=self.fingerprint["views"]["seed"],
                                  repeats=self.fingerprint["views"]["aug_repeats"],
                                  group_size=self.fingerprint["views"]["mix_group_size"], grouped=True)

    def _verify_chunks(self, epochs: range) -> None:
        """Refuse, before training starts, a chunk the run needs that is missing, truncated or altered.

        Every chunk is hashed when the needed ones add up to at most :data:`HASH_UP_FRONT_BYTES`;
        otherwise sizes and headers are checked here and each chunk's sha256 when its epoch is loaded.
        """
        chunks = [self._chunks[e] for e in epochs]
        hash_now = self.verify and sum(int(c.get("bytes", 0)) for c in chunks) <= HASH_UP_FRONT_BYTES
        for chunk in chunks:
            path = self.directory / chunk["file"]
            if not path.is_file():
                raise CacheError(f"cache chunk {path} is missing; fix: rerun `deit-distill cache build` on "
                                 f"{self.directory} (only missing epochs are recomputed).")
            size = path.stat().st_size
            if "bytes" in chunk and size != int(chunk["bytes"]):
                raise CacheError(f"cache chunk {path} has {size} bytes but {MANIFEST} records {chunk['bytes']} "
                                 "(truncated or replaced); " + _REBUILD_CHUNK)
            if hash_now:
                if sha256_file(path) != chunk["sha256"]:
                    raise CacheError(f"cache chunk {path} does not match its sha256 in {MANIFEST} (corrupted or "
                                     "replaced); " + _REBUILD_CHUNK)
                continue
            try:
                header, _ = _read_header(path)
            except (CacheError, ValueError, UnicodeDecodeError):
                raise CacheError(f"cache chunk {path} has no readable safetensors header (corrupted); "
                                 + _REBUILD_CHUNK) from None
            meta = _parse_chunk_metadata(header.get("__metadata__") or {})
            if meta.get("fingerprint_sha256") != self.manifest["fingerprint_sha256"] or meta.get("epoch") != chunk["epoch"]:
                raise CacheError(f"cache chunk {path} belongs to another cache; " + _REBUILD_CHUNK)

    def _teacher_problems(self, teacher: TeacherSettings) -> list[str]:
        problems = self._teacher_file_problems(teacher.checkpoint_path)
        problems += self._teacher_setting_problems(teacher)
        name = teacher.source
        desc = self.teacher_description or {}
        if not name or not desc:
            return problems
        known = {str(desc.get(k)) for k in ("name", "hub_id", "source") if desc.get(k)}
        if desc.get("name") and desc.get("tag"):
            known.add(f"{desc['name']}.{desc['tag']}")
        known |= {f"hf-hub:{desc['hub_id']}"} if desc.get("hub_id") else set()
        if str(name) in known:
            return problems
        return [*problems, f"teacher: cache {desc.get('name')!r}, now {name!r} (fix: drop --distill-teacher when "
                "training from a cache, or build a cache with this teacher)"]

    def _teacher_setting_problems(self, teacher: TeacherSettings) -> list[str]:
        """Teacher settings given with a cache change nothing (no teacher runs): accepted only when they are the
        cache's, so a run never believes its teacher ran at a size or precision it did not."""
        desc = self.teacher_description or {}
        problems = []
        size = tuple(int(v) for v in teacher.input_size or ())
        wanted_hw = size * 2 if len(size) == 1 else size[-2:]  # N, (H, W) or (C, H, W)
        cached_size = desc.get("input_size")
        if wanted_hw and cached_size and wanted_hw != tuple(int(v) for v in cached_size[-2:]):
            problems.append(f"teacher input size: cache {'x'.join(map(str, cached_size[-2:]))}, now "
                            f"--teacher-input-size {' '.join(map(str, size))} (fix: drop --teacher-input-size when "
                            "training from a cache, or build a cache at that size)")
        precision = teacher.precision
        if precision not in (None, "auto") and desc.get("precision") and precision != desc["precision"]:
            problems.append(f"teacher precision: cache {desc['precision']}, now --teacher-precision {precision} "
                            "(fix: drop --teacher-precision when training from a cache, or build a cache with it)")
        return problems

    def _teacher_file_problems(self, path: str | None) -> list[str]:
        """A teacher checkpoint given with a cache is accepted only when it is the file the cache was built from."""
        if not path:
            return []
        desc = self.teacher_description or {}
        cached = desc.get("sha256")
        if not os.path.isfile(path):
            return [f"teacher checkpoint: --distill-teacher-path {path} does not exist (fix: drop it: the cache "
                    "holds the teacher's targets)"]
        given = sha256_file(path)
        if given != cached:
            return [f"teacher checkpoint: cache built with {desc.get('name')!r} (weights sha256 {str(cached)[:12]}), "
                    f"--distill-teacher-path {path} has sha256 {given[:12]} (fix: drop --distill-teacher-path: "
                    "the cache holds the teacher's targets; or build a cache with this teacher)"]
        _logger.info("--distill-teacher-path %s matches the cache's teacher (%s, sha256 %s).", path,
                     desc.get("name"), given[:12])
        return []

    def _load_epoch(self, epoch: int) -> None:
        chunk = self._chunks.get(epoch)
        if chunk is None:
            raise CacheMismatch(f"the cache in {self.directory} holds no epoch {epoch} "
                                f"(it holds {_ranges(self.epochs) or 'none'}).")
        path = self.directory / chunk["file"]
        if not path.exists():
            raise CacheError(f"cache chunk {path} is missing; fix: rerun `deit-distill cache build` on "
                             f"{self.directory} (only missing epochs are recomputed).")
        if self.verify and sha256_file(path) != chunk["sha256"]:
            raise CacheError(f"cache chunk {path} does not match its sha256 in {MANIFEST} (corrupted or replaced); "
                             + _REBUILD_CHUNK)
        arrays, metadata = _memmap_chunk(path)
        meta = _parse_chunk_metadata(metadata)
        if meta.get("fingerprint_sha256") != self.manifest["fingerprint_sha256"] or meta.get("epoch") != epoch:
            raise CacheError(f"cache chunk {path} belongs to another cache; fix: rebuild it.")
        assert self._layout is not None
        self._arrays = arrays
        self._expected_check = _sample_check(self._layout.epoch(epoch)[0][: self.rows_per_epoch])
        self._open_epoch = epoch

    def targets(self, epoch: int, view_index: torch.Tensor) -> torch.Tensor:
        """Teacher targets of views ``view_index`` (positions) of ``epoch``.

        int64 class indices ``(B,)`` for a ``hard`` store, float32 logits ``(B, C)`` otherwise (classes
        a top-k row does not hold get :data:`TOPK_FILL`). Raises :class:`CacheError` when a row's
        stored sample index is not the one the training loader shows at that position.
        """
        if self._layout is None:
            raise CacheError("call check_training(view, train_ds, epochs, ...) before reading targets.")
        if self._open_epoch != epoch:
            self._load_epoch(int(epoch))
        positions = view_index.detach().cpu().numpy().astype(np.int64)
        if positions.size and (positions.min() < 0 or positions.max() >= self.rows_per_epoch):
            raise CacheError(f"view positions up to {int(positions.max())} requested but the cache holds "
                             f"{self.rows_per_epoch} per epoch; fix: train with the cache's settings.")
        order = np.argsort(positions, kind="stable")  # memmap reads in file order
        rows = positions[order]
        stored = np.asarray(self._arrays["sample_check"][rows])
        assert self._expected_check is not None
        bad = np.nonzero(stored != self._expected_check[rows])[0]
        if bad.size:
            p = int(rows[bad[0]])
            raise CacheError(
                f"cache row {p} of epoch {epoch} was computed for another image than the one training shows at "
                f"that position ({bad.size} of {len(rows)} rows in this batch); the view order differs from the "
                "cache's. fix: rebuild the cache with this version and these settings.")
        picked = {name: np.asarray(arr[rows]) for name, arr in self._arrays.items() if name != "sample_check"}
        out = self.store.decode(picked, self.num_classes)
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        return out[torch.from_numpy(inverse)]


_REBUILD_CHUNK = "fix: delete it and its .json sidecar and rerun `deit-distill cache build` (only that epoch is recomputed)."


def _ranges(values: list[int]) -> str:
    if not values:
        return ""
    parts, start, prev = [], values[0], values[0]
    for v in [*values[1:], None]:
        if v is not None and v == prev + 1:
            prev = v
            continue
        parts.append(f"{start}" if start == prev else f"{start}-{prev}")
        if v is not None:
            start = prev = v
    return ", ".join(parts)
