"""Replaying a teacher target cache: refuse a run that would see other views, then serve each batch's
targets, every row checked against the image training shows at its position."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import sha256_file
from ..data import ViewLayout, ViewSettings, dataset_fingerprint
from ..errors import CacheError, CacheMismatch
from ..losses import LOGIT_TYPES
from ..teacher import TeacherSettings
from .fingerprint import differences, library_versions, make_fingerprint
from .store import MANIFEST, CacheStore, load_manifest, memmap_chunk, read_chunk_info, sample_check

__all__ = ["TeacherTargetCache", "HASH_UP_FRONT_BYTES"]

_logger = logging.getLogger(__name__)

# check_training hashes every chunk a run needs when they add up to no more than this; beyond it, it checks
# their sizes and headers up front and each chunk's sha256 when its epoch is loaded.
HASH_UP_FRONT_BYTES = 4_000_000_000


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
        self._unlabeled: TeacherTargetCache | None = None  # its unlabelled passes, once check_unlabeled passed

    @classmethod
    def open(cls, directory: str | os.PathLike[str], *, verify: bool = True) -> TeacherTargetCache:
        """Open the cache in ``directory`` (each chunk's sha256 is checked on first use when ``verify``)."""
        directory = Path(directory)
        path = directory / MANIFEST
        build = "`deit-distill cache build <training flags> --epochs N --store hard --out DIR`"
        try:
            if not directory.exists():
                raise CacheError(f"no teacher target cache at {directory} (no such folder); fix: check the path, or "
                                 f"build one with {build}.")
            if not directory.is_dir():
                raise CacheError(f"{directory} is a file, not a cache folder; fix: give the folder that holds "
                                 f"{MANIFEST} (the --out of `deit-distill cache build`).")
            found = path.exists()
        except PermissionError as e:
            raise CacheError(f"cannot look into the cache folder {directory} ({e.strerror}); fix: give this user read "
                             "and search permission on it (chmod u+rx), or run as its owner.") from None
        if not found:
            raise CacheError(f"no teacher target cache in {directory} ({MANIFEST} missing); fix: build one with "
                             f"{build}.")
        return cls(directory, load_manifest(path), verify=verify)

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
        # the unlabelled images are held against the run by check_unlabeled (a run without them replays the
        # labelled rows alone: those do not depend on them)
        problems += differences({k: v for k, v in self.fingerprint.items() if k not in ("teacher", "unlabeled")},
                                 {k: v for k, v in current.items() if k != "teacher"})
        if teacher is not None:
            problems += self._teacher_problems(teacher)
        if distill_type in LOGIT_TYPES and not self.store.holds_logits:
            problems.append("store: cache 'hard' holds teacher labels only, soft distillation needs logits "
                            "(fix: rebuild with --store full or --store topk:K, or train with --distill-type hard)")
        if problems:
            # One fix per problem: the general one only for the problems that do not carry their own.
            general = ("" if all("fix:" in p for p in problems) else " fix: train with the cache's settings, or "
                       "build a cache for these (`deit-distill cache build` with the same flags).")
            raise CacheMismatch(f"the teacher target cache in {self.directory} was built for other settings: "
                                + "; ".join(problems) + "." + general)
        if teacher is not None:
            self.check_teacher_record(teacher)
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

    @property
    def unlabeled(self) -> dict[str, Any] | None:
        """What the cache records of its unlabelled images (source, images, passes, fraction), or None."""
        record = self.manifest.get("unlabeled")
        return dict(record) if isinstance(record, dict) else None

    def check_unlabeled(self, view: ViewSettings, unlabeled_ds: Any, passes: int, *, start_pass: int = 0,
                        distill_type: str, flag: str) -> None:
        """Refuse, before training, a run whose unlabelled images (``unlabeled_ds``, their views ``view``: the
        run's under the unlabelled seed) are not the cache's, or that consumes passes ``start_pass..passes-1`` of
        them when the cache holds fewer; then serve their rows (:meth:`unlabeled_targets`)."""
        from ..data.unlabeled import unlabeled_view
        from .build import UNLABELED_DIR

        build = f"`deit-distill cache build` with the run's flags and {flag}"
        if self.unlabeled is None or "unlabeled" not in self.fingerprint:
            raise CacheMismatch(f"the teacher target cache in {self.directory} holds no unlabelled views (it was built "
                                f"without unlabelled images) and this run draws on {flag}; fix: build a cache with "
                                f"{build}, or drop {flag}.")
        diffs = differences(self.fingerprint["unlabeled"], dataset_fingerprint(unlabeled_ds))
        if diffs:
            raise CacheMismatch(f"the teacher target cache in {self.directory} was built with other unlabelled images "
                                f"({self.unlabeled.get('source')}) than {flag}: " + "; ".join(diffs[:3]) +
                                f"; fix: build a cache with {build}, or train with the cache's unlabelled images.")
        nested = TeacherTargetCache.open(self.directory / UNLABELED_DIR, verify=self.verify)
        have = nested.epochs
        held = next((i for i, p in enumerate(have) if p != i), len(have))  # passes 0..held-1 are whole
        if held < passes:
            raise CacheMismatch(
                f"training consumes {passes} pass(es) over the {len(unlabeled_ds)} unlabelled images but the cache in "
                f"{self.directory} holds {held}; fix: extend it with `deit-distill cache build ... --unlabeled-passes "
                f"{passes} --out {self.directory}` (finished passes are kept).")
        nested.check_training(unlabeled_view(view), unlabeled_ds, passes, distill_type=distill_type,
                              start_epoch=start_pass)
        self._unlabeled = nested

    def unlabeled_targets(self, unlabeled_pass: int, view_index: torch.Tensor) -> torch.Tensor:
        """Teacher targets of the unlabelled views at positions ``view_index`` of pass ``unlabeled_pass`` (as
        :meth:`targets`)."""
        if self._unlabeled is None:
            raise CacheError("call check_unlabeled(view, unlabeled_ds, passes, ...) before reading unlabelled targets.")
        return self._unlabeled.targets(unlabeled_pass, view_index)

    @property
    def teacher_check(self) -> dict[str, Any] | None:
        """The teacher check measured when the cache was built (``TeacherCheck.as_dict()``); None when the build
        skipped it (``--no-teacher-check``) or predates the check."""
        record = self.manifest.get("teacher_check")
        return dict(record) if isinstance(record, dict) else None

    def check_teacher_record(self, teacher: TeacherSettings) -> dict[str, Any] | None:
        """Hold the teacher check recorded at build time against a run's teacher check settings; returns it.

        Replaying a cache runs no teacher, so the check the build measured stands for it: a cache whose teacher
        was never measured is refused unless the run also skips the check (``teacher.check`` False), and an
        explicit ``teacher.min_top1`` must not exceed the recorded top-1. :class:`CacheError` otherwise.
        """
        record = self.teacher_check
        if not teacher.check:
            _logger.warning("Teacher check skipped (--no-teacher-check): the targets of the cache in %s are replayed "
                            "%s.", self.directory, "from a teacher that was never measured" if record is None
                            else f"(its teacher scored top-1 {record['top1']:.2f}% when the cache was built)")
            return record
        if record is None:
            raise CacheError(
                f"the teacher of the cache in {self.directory} was never measured (it was built with "
                "--no-teacher-check), so its targets may be a near-random teacher's. fix: rebuild it without "
                "--no-teacher-check, or pass --no-teacher-check to accept it.")
        if teacher.min_top1 is not None and float(record["top1"]) < float(teacher.min_top1):
            raise CacheError(
                f"the teacher of the cache in {self.directory} scored top-1 {float(record['top1']):.2f}% on "
                f"{record.get('images')} validation images when it was built, below --teacher-min-top1 "
                f"{float(teacher.min_top1):g}. fix: build a cache with a better teacher, or lower --teacher-min-top1.")
        threshold = record.get("min_top1")
        _logger.info("Teacher check (recorded when the cache was built): top-1 %.2f%% on %s images (threshold %s)%s.",
                     float(record["top1"]), record.get("images"),
                     "none" if threshold is None else f"{float(threshold):.2f}%",
                     "" if teacher.min_top1 is None else f", at least --teacher-min-top1 {float(teacher.min_top1):g}")
        return record

    def _verify_chunks(self, epochs: range) -> None:
        """Refuse, before training starts, a chunk the run needs that is missing, truncated or altered.

        Every chunk is hashed when the needed ones add up to at most :data:`HASH_UP_FRONT_BYTES`;
        otherwise sizes and headers are checked here and each chunk's sha256 when its epoch is loaded.
        """
        chunks = [self._chunks[e] for e in epochs]
        hash_now = self.verify and sum(int(c.get("bytes", 0)) for c in chunks) <= HASH_UP_FRONT_BYTES
        for chunk in chunks:
            problem = self._chunk_problem(chunk, hash_now=hash_now)
            if problem is not None:
                raise CacheError(problem)

    def damaged_chunks(self) -> list[str]:
        """One line per built chunk that is missing, truncated or altered, every chunk hashed (``cache info
        --verify``), the unlabelled passes' included; empty when all match the sha256 recorded when they were
        written."""
        from .build import UNLABELED_DIR

        problems = [problem for chunk in self.manifest["chunks"]
                    if (problem := self._chunk_problem(chunk, hash_now=True)) is not None]
        if self.unlabeled is not None:
            try:
                problems += TeacherTargetCache.open(self.directory / UNLABELED_DIR).damaged_chunks()
            except CacheError as e:  # its manifest missing or damaged: no pass can be replayed
                problems.append(f"unlabelled passes: {e}")
        return problems

    def _chunk_problem(self, chunk: dict[str, Any], *, hash_now: bool) -> str | None:
        path = self.directory / chunk["file"]
        try:
            return self._chunk_file_problem(chunk, path, hash_now=hash_now)
        except OSError as e:  # unreadable (permissions), or an I/O error of the disk
            return (f"cache chunk {path} cannot be read ({e.strerror or type(e).__name__}); fix: give this user read "
                    "permission on it (chmod u+r), or run as its owner.")

    def _chunk_file_problem(self, chunk: dict[str, Any], path: Path, *, hash_now: bool) -> str | None:
        if path.is_dir():
            return (f"cache chunk {path} is a folder, not a file; fix: remove that folder and rerun `deit-distill "
                    f"cache build` on {self.directory} (only missing epochs are recomputed).")
        if not path.is_file():
            return (f"cache chunk {path} is missing; fix: rerun `deit-distill cache build` on "
                    f"{self.directory} (only missing epochs are recomputed).")
        size = path.stat().st_size
        if "bytes" in chunk and size != int(chunk["bytes"]):
            return (f"cache chunk {path} has {size} bytes but {MANIFEST} records {chunk['bytes']} "
                    "(truncated or replaced); " + _REBUILD_CHUNK)
        if hash_now and sha256_file(path) != chunk["sha256"]:
            return (f"cache chunk {path} does not match its sha256 in {MANIFEST} (corrupted or "
                    "replaced); " + _REBUILD_CHUNK)
        # the header too (a few bytes): a chunk whose manifest entry moved with it still says which epoch it holds
        try:
            meta, _ = read_chunk_info(path)
        except CacheError:
            return f"cache chunk {path} has no readable safetensors header (corrupted); " + _REBUILD_CHUNK
        if meta.get("fingerprint_sha256") != self.manifest["fingerprint_sha256"]:
            return f"cache chunk {path} belongs to another cache; " + _REBUILD_CHUNK
        if meta.get("epoch") != chunk["epoch"]:
            return f"cache chunk {path} holds epoch {meta.get('epoch')}, not {chunk['epoch']}; " + _REBUILD_CHUNK
        return None

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
        for flag, wanted, cached in (("--teacher-mean", teacher.mean, desc.get("mean")),
                                     ("--teacher-std", teacher.std, desc.get("std"))):
            if wanted is not None and cached and not _same_channels(wanted, cached):
                problems.append(f"teacher normalisation: cache {flag[10:]} {' '.join(f'{v:g}' for v in cached)}, now "
                                f"{flag} {' '.join(f'{v:g}' for v in wanted)} (fix: drop {flag} when training "
                                "from a cache, or build a cache with it)")
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
        problem = self._chunk_problem(chunk, hash_now=self.verify)  # its header's cache and epoch included
        if problem is not None:
            raise CacheError(problem)
        arrays = memmap_chunk(self.directory / chunk["file"])
        assert self._layout is not None
        self._arrays = arrays
        self._expected_check = sample_check(self._layout.epoch(epoch)[0][: self.rows_per_epoch])
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


def _same_channels(given: Sequence[float], recorded: Sequence[float]) -> bool:
    """A flag's 1 or 3 numbers against the ones a teacher records (one number stands for every channel)."""
    n = max(len(given), len(recorded))
    given = list(given) * n if len(given) == 1 else list(given)
    recorded = list(recorded) * n if len(recorded) == 1 else list(recorded)
    return len(given) == len(recorded) and all(math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-9)
                                               for a, b in zip(given, recorded, strict=True))
