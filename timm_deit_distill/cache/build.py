"""Building a teacher target cache: the teacher over exactly the views training will see, one chunk per epoch.

Every file is written to a temporary sibling and renamed into place, so a killed build leaves whole
chunks or nothing; a new build over the same directory keeps finished chunks and computes the rest.
Several processes (torchrun) share the work by epoch.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import sha256_file
from ..data import (
    LoaderSettings,
    ViewLayout,
    ViewSettings,
    build_train_loader,
    check_num_classes,
    dataset_fingerprint,
)
from ..errors import CacheError, CacheMismatch
from ..progress import is_progress_bar, progress_bar
from ..run_folder import RunLock, format_size, partial_pattern
from .fingerprint import differences, fingerprint_id, library_versions, make_fingerprint
from .store import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    CacheStore,
    chunk_metadata,
    chunk_name,
    chunk_record_problem,
    load_manifest,
    read_chunk_info,
    sample_check,
    write_chunk,
    write_json,
)

__all__ = ["build_cache", "rows_per_epoch", "check_cache_dir", "UNLABELED_DIR"]

#: The sub-folder of a cache holding its unlabelled passes: a cache of its own, pass ``p`` stored as its epoch ``p``.
UNLABELED_DIR = "unlabeled"

_logger = logging.getLogger(__name__)

_CACHE_PARTIAL = partial_pattern(r"epoch-\d+\.(?:safetensors|json)|manifest\.json")
_BUILD_BUSY = ("{folder} is in use: another deit-distill cache build{holder} is writing this cache now. Wait for it "
               "to end, then rerun the build to resume or extend it; or build into another --out.")


def check_cache_dir(out: str | os.PathLike[str]) -> None:
    """Refuse an ``--out`` no cache can be built in: a file, a folder under a file, a folder nothing can be
    written to, a folder holding files but no cache (a run folder, someone's files: the chunks would be mixed
    in). Reads only (a folder that does not exist yet is created by the build)."""
    from ..atomic import unwritable_reason

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CacheError(f"--out {out} is a file, not a folder; fix: give the folder the cache is built in (it is "
                         "created if missing).")
    if out.is_dir():
        # the build renames its chunks and sidecars onto these names: a folder there would fail it after the work
        blocked = sorted(p.name for p in out.iterdir()
                         if re.fullmatch(r"epoch-\d+\.(?:safetensors|json)|" + re.escape(MANIFEST), p.name)
                         and not p.is_file())
        if blocked:
            raise CacheError(f"--out {out}: {', '.join(blocked[:5])} {'is a folder' if len(blocked) == 1 else 'are folders'}"
                             " where the cache writes its files; fix: remove "
                             f"{'it' if len(blocked) == 1 else 'them'} and rerun (only missing epochs are computed).")
    if (out / MANIFEST).is_file():
        _check_manifest_is_a_cache(out / MANIFEST)
    if out.is_dir() and not (out / MANIFEST).exists():
        # a killed first build leaves its chunks, lock and hidden partial files: that folder is this cache's,
        # resumed (hidden files, e.g. .DS_Store or .gitkeep, are nobody's data either)
        others = sorted(p.name for p in out.iterdir() if not p.name.startswith(".") and p.name != UNLABELED_DIR
                        and not re.fullmatch(r"epoch-\d+\.(?:safetensors|json)", p.name))
        if others:
            shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
            raise CacheError(f"--out {out} holds files but no cache ({shown}); a cache is built in a folder of its "
                             "own. fix: give --out a new or empty folder (or the folder of an existing cache to "
                             "resume or extend it).")
    parent = out
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise CacheError(f"--out {out} cannot be created: {parent} is a file, not a folder; fix: give another --out.")
    reason = unwritable_reason(parent)
    if reason is not None:
        raise CacheError(f"--out {out}: no file can be written in {parent} (creating one there failed: {reason}); "
                         "fix: give another --out.")


def _check_manifest_is_a_cache(path: Path) -> None:
    """Refuse, before any work, an ``--out`` whose manifest.json is another program's, or this format's but unusable
    (another version, damaged): the build would otherwise refuse it only after building and checking the teacher."""
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        found = None  # unreadable or not JSON: load_manifest says so, with the fix
    if found is not None and not (isinstance(found, dict) and found.get("format") == FORMAT):
        raise CacheError(f"--out {path.parent} holds a {path.name} that is not a teacher target cache's (another "
                         "program's file); a cache is built in a folder of its own. fix: give --out a new or empty "
                         "folder (or the folder of an existing cache to resume or extend it).")
    load_manifest(path)


def rows_per_epoch(num_samples: int, group_size: int) -> int:
    """Positions a cache holds per epoch: every one a single process trains on (any world size uses a subset)."""
    return (num_samples // group_size) * group_size


def _teacher_logits(teacher: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return teacher(inputs).float().cpu()


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
    unlabeled: dict[str, Any] | None = None,
    labels_ignored: bool = False,
) -> dict[str, Any]:
    """Run ``teacher`` over every view of epochs ``0..epochs-1`` and write the cache into ``out``.

    ``view`` and ``loader`` are the training run's settings; the views are built with
    ``--deterministic-aug`` whatever ``view`` says. Finished chunks already in ``out`` are kept; a
    cache in ``out`` built for other settings is refused (:class:`CacheMismatch`). With several
    processes, process ``rank`` computes the epochs ``e`` with ``e % world_size == rank``;
    ``barrier`` (e.g. ``torch.distributed.barrier``) is called once rank 0 has removed temporary files
    a killed build left, and again before rank 0 writes the final manifest. ``teacher_check`` (the
    teacher's ``TeacherCheck.as_dict()`` measured before building) is recorded in the manifest, outside the
    fingerprint, so training from the cache can report it. ``unlabeled``: the unlabelled images' record (its
    ``fingerprint`` joins the cache's, the rest is kept in the manifest). ``labels_ignored``: ``train_ds`` is
    unlabelled images (its epochs are their passes, under the view settings' seed). Returns the manifest.
    """
    store = store if isinstance(store, CacheStore) else CacheStore.parse(store)
    if epochs < 1:
        raise CacheError(f"--epochs {epochs} must be >= 1.")
    view = view.deterministic()  # a cache is only replayable from deterministic views
    num_classes = int(view.num_classes) if labels_ignored else check_num_classes(train_ds, view.num_classes)
    views = view.fingerprint()
    if teacher_description is None:
        teacher_description = getattr(teacher, "description", None)
    # Where the weights file lies is no part of the teacher's identity (its sha256 is).
    teacher_identity = {k: v for k, v in (teacher_description or {}).items() if k != "file"} or None
    fingerprint = make_fingerprint(dataset=dataset_fingerprint(train_ds), views=views, teacher=teacher_identity,
                                   store=store.spec, versions=library_versions())
    if unlabeled is not None:  # only then: the fingerprints of caches without unlabelled images stay as they were
        fingerprint["unlabeled"] = unlabeled["fingerprint"]
    fid = fingerprint_id(fingerprint)
    check_cache_dir(out)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / MANIFEST
    previous = load_manifest(manifest_path) if manifest_path.exists() else None
    if previous is not None and previous["fingerprint_sha256"] != fid:
        diffs = differences(previous["fingerprint"], fingerprint)
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
    if unlabeled is not None:
        manifest["unlabeled"] = {k: v for k, v in unlabeled.items() if k != "fingerprint"}
    lock = None
    if rank == 0:
        # The build's lock on --out: a second build into it is refused, and what a killed build left half
        # written (temporaries of the cache's own file names only) is removed, since no live writer owns it.
        lock = RunLock.acquire(out, busy=_BUILD_BUSY, command="deit-distill cache build")
        removed, size = lock.remove_partial_files(_CACHE_PARTIAL)
        if removed:
            _logger.info("Removed %d partial file(s) (%s) a killed build left in %s.", removed, format_size(size), out)
    try:
        return _build_epochs(out, manifest, train_ds, view, loader, teacher, store, fid, rows,
                             epochs=epochs, rank=rank, world_size=world_size, barrier=barrier,
                             labels_ignored=labels_ignored)
    finally:
        if lock is not None:
            lock.release()


def _build_epochs(out: Path, manifest: dict[str, Any], train_ds: Any, view: ViewSettings, loader_settings: LoaderSettings,
                  teacher: Callable[[torch.Tensor], torch.Tensor], store: CacheStore, fid: str, rows: int, *,
                  epochs: int, rank: int, world_size: int, barrier: Callable[[], None] | None,
                  labels_ignored: bool = False) -> dict[str, Any]:
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
            loader = build_train_loader(train_ds, view, loader_settings, drop_last=False, unlabeled=labels_ignored)
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
    batches = progress_bar(loader, f"epoch {epoch}", unit="batch")
    for step, (inputs, _, view_index) in enumerate(batches):
        encoded = store.encode(_teacher_logits(teacher, inputs))
        positions = view_index.numpy()
        for name, values in encoded.items():
            if name not in columns:
                columns[name] = np.zeros((rows, *values.shape[1:]), dtype=values.dtype)
            columns[name][positions] = values
        filled[positions] = True
        if not is_progress_bar(batches) and (step % 50 == 0 or step == len(loader) - 1):
            _logger.info("cache epoch %d: batch %d/%d", epoch, step + 1, len(loader))
    if not filled.all():  # the loader and the row count disagree: never write a chunk with holes
        raise CacheError(f"epoch {epoch}: {int((~filled).sum())} of {rows} rows were not produced by the loader.")
    columns["sample_check"] = sample_check(layout.epoch(epoch)[0][:rows])
    path = out / chunk_name(epoch)
    sha = write_chunk(path, columns, chunk_metadata(fid, epoch))
    write_json(path.with_suffix(".json"), {"epoch": epoch, "file": path.name, "sha256": sha, "rows": rows,
                                            "bytes": path.stat().st_size, "fingerprint_sha256": fid})
    _logger.info("cache epoch %d written: %s (%d rows)", epoch, path.name, rows)


def _read_sidecar(out: Path, epoch: int) -> dict[str, Any] | None:
    """Epoch's chunk sidecar, or None when there is none or it cannot be used (then the chunk is judged by its own
    header, and the sidecar written again, or the epoch recomputed)."""
    sidecar = (out / chunk_name(epoch)).with_suffix(".json")
    if not sidecar.exists():
        return None
    try:
        info = json.loads(sidecar.read_text())
    except (OSError, ValueError) as e:
        _logger.warning("cache sidecar %s cannot be read (%s): ignoring it.", sidecar, type(e).__name__)
        return None
    problem = chunk_record_problem(info, epoch)
    if problem is not None:
        _logger.warning("cache sidecar %s is not this chunk's record (it%s): ignoring it.", sidecar, problem)
        return None
    return info


def _chunk_done(out: Path, epoch: int, fid: str) -> bool:
    """Whether epoch's chunk is complete; adopts a chunk renamed into place before its sidecar was written."""
    path = out / chunk_name(epoch)
    try:
        return _chunk_on_disk_done(out, epoch, fid, path)
    except OSError as e:  # unreadable (permissions) or a disk error: say which file, before computing anything
        raise CacheError(f"cache chunk {path} cannot be read ({e.strerror or type(e).__name__}); fix: give this user "
                         "read permission on it (chmod u+r), or run as its owner.") from None


def _chunk_on_disk_done(out: Path, epoch: int, fid: str, path: Path) -> bool:
    sidecar = path.with_suffix(".json")
    if not path.exists():
        return False
    info = _read_sidecar(out, epoch)
    if info is not None:
        if info.get("fingerprint_sha256") != fid or info.get("bytes") != path.stat().st_size:
            return False
        # Hashing a chunk costs a small fraction of computing it: a chunk altered on disk since it was written
        # is recomputed, not reported as part of a complete cache.
        if sha256_file(path) != info.get("sha256"):
            _logger.warning("cache epoch %d: %s does not match the sha256 recorded when it was written (changed on "
                            "disk since): recomputing it.", epoch, path.name)
            return False
        return True
    try:  # killed between the chunk's rename and its sidecar's: the chunk itself is whole
        meta, rows = read_chunk_info(path)
    except CacheError:
        return False
    if meta.get("fingerprint_sha256") != fid or meta.get("epoch") != epoch:
        return False
    write_json(sidecar, {"epoch": epoch, "file": path.name, "sha256": sha256_file(path), "rows": rows,
                          "bytes": path.stat().st_size, "fingerprint_sha256": fid})
    return True


def _finalise_manifest(out: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    chunks = []
    for epoch in range(manifest["epochs"]):
        info = _read_sidecar(out, epoch)
        if info is not None and info.get("fingerprint_sha256") == manifest["fingerprint_sha256"]:
            chunks.append({k: info[k] for k in ("epoch", "file", "sha256", "rows", "bytes")})
    manifest = {**manifest, "chunks": chunks, "complete": len(chunks) == manifest["epochs"]}
    write_json(out / MANIFEST, manifest)
    return manifest
