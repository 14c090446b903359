"""WebDataset shards (``--dataset wds/NAME``): the ``.tar`` shards under ``--data-dir`` (a folder or a URL prefix)
with timm's ``_info.json``, or a split given as a shard pattern with its size, read by timm's ``ReaderWds``.

Checked before any work: the _info.json and the split, safe shard names, every local shard (present, its samples
counted from the tar headers against the count claimed), the image and target keys (one sample peeked), the class
count; and when the loader is built, enough shards for processes x workers, with what an epoch drops or repeats.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import random
import re
import tarfile
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

from ...errors import DataError
from .base import DataSettings, SourceInfo, StreamSource
from .checks import short_value

__all__ = ["WdsSource", "epoch_coverage"]

_logger = logging.getLogger(__name__)

_INFO_NAMES = ("_info.json", "info.json")
_REMOTE = ("http://", "https://", "hf://", "s3://", "gs://")
_WDS_META = re.compile(r"__[^/]*__($|/)")  # tar members webdataset skips (its tar_file_iterator's skip_meta)


class WdsSource(StreamSource):
    """``wds/NAME``: WebDataset shards, streamed."""

    kind: ClassVar[str] = "wds"
    prefix: ClassVar[str] = "wds"
    extra: ClassVar[tuple[str, str] | None] = ("webdataset", "wds")
    what: ClassVar[str] = "wds/"
    timm_reader: ClassVar[str | None] = "ReaderWds"
    help: ClassVar[str] = "wds/NAME WebDataset shards with timm's _info.json under --data-dir"
    docs_row: ClassVar[str] = "`wds/` (WebDataset shards)"

    def card_dataset(self, name: str) -> tuple[str, str]:
        return "webdataset", name

    def check_class_map(self, data: DataSettings) -> None:
        raise DataError(f"--class-map {data.class_map} does not work for {self.what}: wds/ targets are integers with "
                        "no class names for a name map to match. fix: drop it.")

    def check_input_key(self, data: DataSettings) -> None:
        key = data.input_key
        if "jpg" not in key.split(";"):
            # timm's wds decoder always stores the image under 'jpg' and then renames input_key: without it, no
            # sample is found (a timm bug); the alternatives are tried in order.
            raise DataError(f"--input-key {key}: timm's wds/ reader finds the image only when the alternatives "
                            f"include jpg (it renames its decoded 'jpg' by this key). fix: --input-key {key};jpg")

    def check_split(self, data: DataSettings, split: str, *, training: bool) -> None:
        _root_and_info(data, split, training=training)

    def open_split(self, data: DataSettings, split: str, *, training: bool, num_classes: int | None,
                   batch_size: int, seed: int) -> Any:
        """timm's ReaderWds over the shards under ``--data-dir``, checked (see the module docstring)."""
        from timm.data import create_dataset

        root, remote, info = _root_and_info(data, split, training=training)
        num_samples = data.train_num_samples if training else data.val_num_samples
        kwargs = dict(root=root, split=split, is_training=training, batch_size=batch_size, seed=seed, repeats=0,
                      class_map=None, input_img_mode=data.input_img_mode, input_key=data.input_key,
                      target_key=data.target_key, num_samples=num_samples)
        try:
            ds = create_dataset(data.dataset, **kwargs)
        except (RuntimeError, KeyError, ValueError, TypeError) as e:
            raise DataError(f"--dataset {data.dataset} split {split}: {type(e).__name__}: "
                            f"{' '.join(str(e).split())[:300]}; fix: check _info.json and the split name.") from None
        reader = ds.reader
        names, lengths, sizes = _shards(data, split, root, reader, remote=remote)
        classes = None
        if info is not None and isinstance(info.get("classes"), list):  # this package's convention, not timm's
            classes = [str(c) for c in info["classes"]]
        count = len(classes) if classes else (info or {}).get("num_classes") or num_classes
        if count is None:
            raise DataError(f"--dataset {data.dataset} carries no class list (timm's _info.json has none); fix: pass "
                            "--num-classes N (or add \"num_classes\" or a \"classes\" list to _info.json).")
        counted = None
        if not remote:
            _peek_wds(data, os.path.join(root, names[0]))
            counted = _check_wds_count(self, data, split, root, names, lengths, int(reader.num_samples),
                                       training=training)
        ds.source_info = SourceInfo(
            source=self, spec=data.dataset, split=split, location=root, input_img_mode=data.input_img_mode,
            classes=classes, num_classes=int(count), skip_bad_images=data.skip_bad_images, counted=counted,
            identity={"num_samples": int(reader.num_samples),
                      "shards": [[n, int(lengths[i]) if i < len(lengths) else None, sizes[i]]
                                 for i, n in enumerate(names)]},
            reopen=functools.partial(create_dataset, data.dataset, **kwargs))
        return ds

    def count_claim(self, root: str, flag: str) -> tuple[str, str]:
        return (f"{root}/_info.json gives", f"correct num_samples and shard_lengths in {root}/_info.json, or pass "
                f"{flag} {{found}}")

    # --- loading -------------------------------------------------------------------------------------------

    def eval_workers(self, workers: int, world_size: int) -> int:
        return min(2, workers) if world_size > 1 else workers  # timm train.py's rule for wds evaluation

    def count_passes(self, reader: Any, count: Callable[[Any], Any]) -> None:
        if count not in reader.ds.pipeline:
            reader.ds.append(count)  # one more webdataset stage, run anew each pass

    def check_topology(self, ds: Any, *, workers: int, world_size: int, training: bool) -> None:
        """Refuse fewer shards than processes x workers (a hang); say what an epoch drops or repeats when the
        shards do not divide evenly."""
        info: SourceInfo = ds.source_info
        gw = world_size * max(1, workers)
        shard_list = info.identity["shards"]
        if len(shard_list) < gw:
            raise DataError(f"--dataset {info.spec} split {info.split} has {len(shard_list)} shard(s) for "
                            f"{world_size} process(es) x {max(1, workers)} loader worker(s) = {gw}: a worker without "
                            "a shard would leave its process with fewer steps than the others (a hang). fix: "
                            f"--workers {max(0, len(shard_list) // world_size)} or fewer, fewer processes, or more "
                            "shards.")
        lengths = [s[1] for s in shard_list]
        if None in lengths or not (training or world_size > 1):
            return  # a shard pattern without lengths: nothing to compute; one evaluating process reads every shard
        reader = ds.reader
        per_worker = _samples_per_worker(reader.num_samples, gw, world_size, reader.batch_size, training)
        repeated, dropped = epoch_coverage(lengths, seed=reader.common_seed, epoch=0, world_size=world_size,
                                           workers=workers, per_worker=per_worker, training=training)
        padding = per_worker * gw - sum(lengths)
        if not dropped and repeated == padding:
            if repeated:
                _logger.info("%s split %s: each %s repeats %d sample(s) to give every one of the %d loader "
                             "worker(s) whole batches (timm's sizing).", info.spec, info.split,
                             "epoch" if training else "evaluation", repeated, gw)
            return
        _logger.warning(
            "%s split %s: %d shard(s) dealt to %d process(es) x %d worker(s), %d samples each: each %s %s %d "
            "sample(s) twice and leaves out %d (epoch 0; timm wraps or cuts each worker's shards, which have unequal "
            "lengths or do not divide by processes x workers).%s", info.spec, info.split, len(lengths), world_size,
            max(1, workers), per_worker, "training epoch" if training else "evaluation",
            "shows" if training else "counts", repeated, dropped, " The evaluation is approximate: evaluate on one "
            "process (deit-distill eval) for exact figures." if not training else "")


def _root_and_info(data: DataSettings, split: str, *, training: bool) -> tuple[str, bool, dict[str, Any] | None]:
    """``(root, remote, _info.json)`` of ``data``, checked: the root exists, the _info.json names the split (or the
    split is a shard pattern, with its sample count where it sizes training)."""
    root = data.data_dir
    if not root:
        raise DataError(f"--dataset {data.dataset} needs --data-dir: the folder (or URL prefix) holding the shards "
                        "and timm's _info.json.")
    remote = _is_remote(root)
    if not remote and not os.path.isdir(root):
        raise DataError(f"--data-dir {root} does not exist; fix: point it at the folder holding the shards and "
                        "_info.json.")
    brace = "tar" in split or ".." in split  # timm's test for a brace-expanded shard pattern
    info = None if remote else _read_info(root)
    if not remote and info is None and not brace:
        yaml_only = any(os.path.isfile(os.path.join(root, n)) for n in ("_info.yaml", "info.yaml"))
        why = " (timm 1.0 reads only _info.json / info.json, not _info.yaml)" if yaml_only else ""
        raise DataError(f"{root} has no _info.json{why}; fix: write timm's _info.json (splits.<name>: num_samples, "
                        "filenames, shard_lengths), or give the split as a shard pattern with its sample count, "
                        "e.g. --train-split 'name-train-{0000..0099}.tar|128000'.")
    if info is not None and not brace and split not in (info.get("splits") or {}):
        raise DataError(f"--dataset {data.dataset} has no split {split!r} in {root}/_info.json (splits: "
                        f"{', '.join(info.get('splits') or {}) or 'none'}); fix: name one with "
                        f"{data.split_flags}.")
    if brace and training and "|" not in split and data.train_num_samples is None:
        raise DataError(f"--train-split {split}: a shard pattern needs its sample count to size training epochs "
                        f"(timm's '{split}|N' form); fix: append |N or pass --train-num-samples N.")
    return root, remote, info


def _shards(data: DataSettings, split: str, root: str, reader: Any, *,
            remote: bool) -> tuple[list[str], list[int], list[int | None]]:
    """``(names, lengths, sizes)`` of the split's shards as timm's reader lists them, checked: safe names, at least
    one, every local shard present (sizes None for remote ones)."""
    names = list(reader.split_info.filenames)
    unsafe = [n for n in names if not _safe_shard(n)]
    if unsafe:
        raise DataError(f"{root}: shard name {unsafe[0]!r} is not a file under --data-dir (absolute, '..', or a "
                        "pipe:/URL scheme webdataset would open); fix: list shard files relative to the _info.json.")
    if not names:
        raise DataError(f"--dataset {data.dataset} split {split} lists no shards; fix: check _info.json.")
    lengths = list(reader.split_info.shard_lengths)
    sizes: list[int | None] = [None] * len(names)
    if not remote:
        missing = [n for n in names if not os.path.isfile(os.path.join(root, n))]
        if missing:
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            raise DataError(f"shard {os.path.join(root, missing[0])}{more} of split {split} is missing (timm would "
                            "skip it and repeat other samples in its place); fix: restore the shard(s) or correct "
                            "_info.json.")
        sizes = [os.path.getsize(os.path.join(root, n)) for n in names]
    return names, lengths, sizes


def _samples_per_worker(num_samples: int, global_workers: int, world_size: int, batch_size: int,
                        training: bool) -> int:
    """timm's ReaderWds sizing of one worker's epoch (its ``_num_samples_per_worker``)."""
    n = num_samples / max(global_workers, world_size)
    if training or world_size > 1:
        n = math.ceil(n)
    if training:
        n = math.ceil(n / batch_size) * batch_size
    return int(n)


def epoch_coverage(shard_lengths: list[int], *, seed: int, epoch: int, world_size: int, workers: int,
                   per_worker: int, training: bool) -> tuple[int, int]:
    """``(repeated, dropped)`` samples of one wds epoch: what timm's dealing of shards to ``world_size x workers``
    global workers, each yielding ``per_worker`` samples (wrapping round or cutting its shards), shows twice or
    leaves out. Computed with webdataset's own shuffle, seeded as timm seeds it (``seed + epoch``)."""
    from webdataset.filters import _shuffle

    order = list(range(len(shard_lengths)))
    if training:
        order = list(_shuffle(iter(order), 500, 100, random.Random(seed + epoch)))
    gw = world_size * max(1, workers)
    repeated = dropped = 0
    for w in range(gw):
        total = sum(shard_lengths[i] for i in order[w::gw])
        repeated += max(0, per_worker - total)
        dropped += max(0, total - per_worker)
    return repeated, dropped


def _is_remote(root: str) -> bool:
    return root.startswith(_REMOTE)


def _safe_shard(name: str) -> bool:
    """A shard name from _info.json or a brace pattern: no shell pipe, no absolute path, no escape from the root
    (webdataset runs ``pipe:`` names through a shell)."""
    return not (name.startswith(("pipe:", "/")) or ":" in name.split("/")[0] or ".." in name.split("/"))


def _read_info(root: str) -> dict[str, Any] | None:
    for name in _INFO_NAMES:
        path = os.path.join(root, name)
        if os.path.isfile(path):
            try:
                with open(path) as f:
                    return json.load(f)
            except (OSError, json.JSONDecodeError) as e:
                raise DataError(f"{path} is not valid JSON ({e}); fix: repair the file.") from None
    return None


def _shard_samples(path: str) -> int:
    """The samples webdataset reads from the local shard ``path``: its members grouped by key as webdataset groups
    them, read from the tar headers alone (tarfile seeks past each member's data)."""
    from webdataset.tariterators import group_by_keys

    def members() -> Iterator[dict[str, Any]]:
        with tarfile.open(path) as tar:
            for info in tar:
                if info.isreg() and not _WDS_META.match(info.name):
                    yield {"fname": info.name, "data": b"", "__url__": path}
        yield {}  # the end of a shard, as webdataset marks it

    try:
        return sum(1 for _ in group_by_keys(members()))
    except (OSError, tarfile.TarError) as e:
        raise DataError(f"shard {path} cannot be read: {type(e).__name__}: {e}; fix: replace it.") from None
    except ValueError as e:  # a member name twice in one sample
        raise DataError(f"shard {path}: {' '.join(str(e).split())[:200]}; fix: give each sample's files one name "
                        "each.") from None


def _check_wds_count(source: StreamSource, data: DataSettings, split: str, root: str, names: list[str],
                     lengths: list[int], claimed: int, *, training: bool) -> int:
    """The samples the split's local shards hold, counted (threads: header reads wait on the disk); a sample count
    or shard length claimed above what they hold is refused."""
    from concurrent.futures import ThreadPoolExecutor

    paths = [os.path.join(root, n) for n in names]
    with ThreadPoolExecutor(max_workers=min(16, len(paths))) as pool:
        found = list(pool.map(_shard_samples, paths))
    source.refuse_overstated(data, split, root, claimed, sum(found), f"its {len(paths)} shard(s) under {root} "
                             "(counted from the tar headers)", training=training)
    for path, length, count in zip(paths, lengths, found, strict=False):
        if length > count:
            raise DataError(f"--dataset {data.dataset} split {split}: {root}/_info.json gives shard {path} {length} "
                            f"samples but it holds {count} (counted from its tar headers); fix: correct its "
                            "shard_lengths entry.")
    return sum(found)


def _peek_wds(data: DataSettings, shard: str) -> None:
    """Read the first sample of the first shard: the image and target keys must be there (timm drops every
    sample without the image key, one warning each, and trains on nothing)."""
    import webdataset as wds

    try:
        sample = next(iter(wds.DataPipeline(wds.SimpleShardList([shard]), wds.tarfile_to_samples())))
    except StopIteration:
        raise DataError(f"shard {shard} holds no samples; fix: replace it.") from None
    except Exception as e:  # a broken tar
        raise DataError(f"shard {shard} cannot be read: {type(e).__name__}: {e}; fix: replace it.") from None
    members = sorted(k for k in sample if not k.startswith("__"))
    image_keys = (data.input_key or "jpg;png;webp").split(";")
    if not any(k in sample for k in image_keys):
        raise DataError(f"shard {shard}: sample {sample.get('__key__')} has no image under {';'.join(image_keys)} "
                        f"(its members: {', '.join(members)}); fix: --input-key naming the image's extension, e.g. "
                        f"{next((m for m in members if m in ('png', 'jpeg', 'webp', 'jpg')), 'png')};jpg")
    if data.target_key is None and "cls" not in sample:
        raise DataError(f"shard {shard}: sample {sample.get('__key__')} has no .cls target (members: "
                        f"{', '.join(members)}); fix: --target-key naming the class field of its .json.")
    if data.target_key is not None:
        meta = json.loads(sample["json"]) if "json" in sample else None
        if meta is None or data.target_key not in meta:
            have = ", ".join(sorted(meta)) if meta else "no .json sidecar"
            raise DataError(f"shard {shard}: sample {sample.get('__key__')} has no target field {data.target_key!r} "
                            f"({have}); fix: --target-key naming one of its fields.")
        value = meta[data.target_key]
        if not isinstance(value, list) and not _is_integer(value):
            raise DataError(f"shard {shard}: sample {sample.get('__key__')}'s target field {data.target_key!r} is "
                            f"not a class index ({short_value(value)}); fix: --target-key naming the field that "
                            "holds the class index.")


def _is_integer(value: Any) -> bool:
    """Whether timm's wds decoder reads ``value`` as a class index (it calls ``int()`` on it)."""
    try:
        int(value)
    except (TypeError, ValueError, OverflowError):
        return False
    return not isinstance(value, float) or value.is_integer()
