"""The interface every data source implements and the one lookup from ``--dataset`` to its source.

In the manner of timm's ``data/readers/``: one :class:`Source` subclass per kind of source, one module each
(``source_*.py``), one instance of each registered (:func:`register`, called by the package) and found by the
``--dataset`` prefix (:func:`source_for`) or, for an opened dataset, by what it carries (:func:`source_of`).
Nothing outside the source modules asks which kind a source is: it asks the source.

Also here, because checking them needs the registry: :class:`DataSettings` (``--dataset`` and timm train.py's
flags for it, each checked against the source when made), the image mode and the views a source can give.
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from ...errors import DataError

__all__ = ["Source", "StreamSource", "SourceInfo", "DataSettings", "TFDS_REFUSAL", "SPLIT_SYNONYMS", "register",
           "registered", "source_for", "source_of", "split_dataset_name", "resolve_input_img_mode",
           "check_views_supported"]

# timm's split synonyms: a split asked by one name is found under any other of its group.
SPLIT_SYNONYMS = {
    "train": ("train", "training"),
    "validation": ("validation", "val", "valid", "eval", "evaluation"),
}
TFDS_REFUSAL = ("tfds/ (TensorFlow datasets) is not supported: it needs TensorFlow and tensorflow-datasets, far "
                "heavier than the other sources' extras, for data the Hugging Face Hub also serves as parquet "
                "(hfds/, hfids/) or WebDataset shards (wds/)")
# Prefixes timm reads that this package refuses, with why.
_REFUSED = {"tfds": TFDS_REFUSAL}
# Pillow modes a model can take, with their channel counts (what --in-chans must then be).
_IMAGE_MODES = {"RGB": 3, "L": 1, "RGBA": 4, "CMYK": 4, "YCbCr": 3, "LAB": 3, "HSV": 3}


@dataclass
class SourceInfo:
    """What the package knows about an opened dataset beyond timm's object (``dataset.source_info``)."""

    source: Source  # the kind of source it was opened as
    spec: str  # the --dataset value (or 'folder' / 'tar')
    split: str  # the split asked for
    location: str  # the split folder or tar, the dataset name, the shard root
    input_img_mode: str
    classes: list[str] | None  # class names in index order; None when the source has none
    num_classes: int | None
    identity: dict[str, Any] = field(default_factory=dict)  # what the fingerprint records beyond the samples
    reopen: Callable[..., Any] | None = None  # streams: a fresh dataset of the same split (overrides as kwargs)
    skip_bad_images: bool = False
    # streams: the samples the split was found to hold before reading it (local shards' tar headers, local parquet
    # metadata); None where that is not known (remote data), so an epoch says what it saw instead
    counted: int | None = None

    @property
    def kind(self) -> str:
        """folder, tar, hfds, torch, wds or hfids."""
        return self.source.kind

    @property
    def streamed(self) -> bool:
        return self.source.streamed


class Source:
    """One kind of ``--dataset`` source: how its name and flags are checked, how a split is opened and checked,
    and what the package asks of a dataset it opened (classes, size, fingerprint, a sample, a sample's name).

    A subclass sets the class attributes and overrides what its kind does otherwise; one instance of each is
    registered (:func:`register`). The defaults are those of a map-style source read through a timm reader
    (``dataset.reader[i]`` gives a file object and a target).
    """

    kind: ClassVar[str]  # what an opened dataset is: folder, tar, hfds, torch, wds, hfids
    prefix: ClassVar[str]  # the --dataset prefix that names it ('' for image folders and tars)
    streamed: ClassVar[bool] = False  # read in order with no stable index (no deterministic views, no cache)
    extra: ClassVar[tuple[str, str] | None] = None  # (module it needs, the package extra that installs it)
    what: ClassVar[str]  # how a message names it: "an image folder", "hfds/ (map-style)"
    example: ClassVar[str] = "imagenet-1k"  # a name to show after the prefix
    bare_names: ClassVar[tuple[str, ...]] = ()  # --dataset spellings without a '/' that mean this source
    timm_reader: ClassVar[str | None] = None  # the class name of timm's reader in a dataset timm opened itself
    help: ClassVar[str] = ""  # its words in --dataset's help
    docs_row: ClassVar[str] = ""  # its first column in docs/data.md's table of sources
    docs_resume: ClassVar[str] = "exact"  # how a resume continues on it (docs/data.md)
    no_download: ClassVar[str] = "there is nothing timm could download"  # why --dataset-download does nothing
    download_use: ClassVar[str] = ""  # what --dataset-download does for it, where it does something
    opens: ClassVar[tuple[Source, ...]] = ()  # other kinds it opens in its own place (an image folder's tars)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(prefix={self.prefix!r})"

    def owns(self, dataset: Any) -> bool:
        """Whether ``dataset``, opened by timm itself (it carries no ``source_info``), is of this kind."""
        reader = getattr(dataset, "reader", None)
        return self.timm_reader is not None and type(reader).__name__ == self.timm_reader

    # --- the name and the flags, before anything is read -------------------------------------------------

    def knows(self, name: str) -> bool:
        """Whether a bare ``--dataset NAME`` (no prefix) is one of this source's names (a hint for the fix)."""
        return False

    def check_name(self, dataset: str, name: str) -> str:
        """The name after the prefix as timm reads it; :class:`DataError` for one this source cannot read."""
        return name

    def require_extra(self) -> None:
        """Refuse naming the package extra when the module this source needs is not installed."""
        if self.extra is None:
            return
        module, extra = self.extra
        if importlib.util.find_spec(module) is None:
            raise DataError(f"--dataset {self.prefix}/... needs the {module} package; fix: pip install "
                            f"'timm-deit-distill[{extra}]'.")

    def subject(self, data: DataSettings) -> str:
        """How a message about a flag names the source ``data`` reads."""
        return self.what

    def downloads(self, data: DataSettings) -> bool:
        """Whether ``--dataset-download`` does something for ``data``."""
        return False

    def check_class_map(self, data: DataSettings) -> None:
        """Refuse ``--class-map`` where it cannot work (timm ignores it there)."""

    def check_input_key(self, data: DataSettings) -> None:
        """Refuse an ``--input-key`` this source takes in another form, or not at all."""

    def check_target_key(self, data: DataSettings) -> None:
        """Refuse a ``--target-key`` this source does not take, or one that makes a multi-label target."""
        if "," in data.target_key:
            raise DataError(f"--target-key {data.target_key}: several fields make a multi-label target, which "
                            "DeiT's single-label loss cannot train. fix: name one field.")

    def check_skip_bad_images(self, data: DataSettings) -> None:
        """Refuse ``--skip-bad-images`` where nothing can be skipped."""

    def check_views(self, dataset: str, *, deterministic_aug: bool, distill_cache: bool, aug_repeats: int,
                    what: str | None = None) -> None:
        """Refuse the views this source cannot give (see :func:`~.settings.check_views_supported`)."""

    def card_dataset(self, name: str) -> tuple[str, str]:
        """(type, name) of a run's evaluation set in a model card's model-index, for ``--dataset PREFIX/name``."""
        return name, name

    # --- opening ---------------------------------------------------------------------------------------------

    def check_split(self, data: DataSettings, split: str, *, training: bool) -> None:
        """Refuse a split that cannot be there, where that is known without reading the data (both splits are
        checked so before either is opened: a misnamed validation split is said before the training images are)."""

    def open_split(self, data: DataSettings, split: str, *, training: bool, num_classes: int | None,
                   batch_size: int, seed: int) -> Any:
        """One split of ``data``, every check done; the dataset carries a :class:`SourceInfo` as ``source_info``."""
        raise NotImplementedError

    # --- an opened dataset -------------------------------------------------------------------------------------

    def class_names(self, ds: Any) -> list[str] | None:
        """The class names in index order, or None when the source has none (wds/, a non-ClassLabel column)."""
        info = getattr(ds, "source_info", None)
        if info is not None:
            return info.classes
        mapping = getattr(ds.reader, "class_to_idx", None) or {}
        return [str(n) for n, _ in sorted(mapping.items(), key=lambda kv: kv[1])] or None

    def check_num_classes(self, ds: Any, wanted: int | None) -> int:
        """The class count; :class:`DataError` when ``wanted`` (``--num-classes``) is another. A source with no
        class list has the count it was opened with (``--num-classes``)."""
        info = ds.source_info
        names = self.class_names(ds)
        found = len(names) if names is not None else info.num_classes
        if found is None:
            raise DataError(f"--dataset {info.spec} carries no class list; fix: pass --num-classes N.")
        if wanted is not None and int(wanted) != found:
            what = "class names" if names is not None else "classes"
            raise DataError(f"--num-classes {wanted} but --dataset {info.spec} split {info.split} has {found} "
                            f"{what}; fix: drop --num-classes or set it to {found}.")
        return found

    def size(self, ds: Any) -> int:
        """Samples in the split: every image of a map-style source."""
        return len(ds)

    def fingerprint(self, ds: Any) -> dict[str, Any]:
        """The identity of the split: the source (its --dataset spec, split, what it is read from: data files and
        sizes, a Hub revision, shards) and its samples: every target in order (map-style) and the class names."""
        info = ds.source_info
        classes = info.classes or [str(i) for i in range(info.num_classes or 0)]
        out: dict[str, Any] = {
            "source": info.spec,
            "split": info.split,
            "num_samples": self.size(ds),
            "num_classes": len(classes),
            "classes_sha256": hashlib.sha256("\n".join(classes).encode()).hexdigest(),
            **info.identity,
        }
        if not self.streamed:
            digest = hashlib.sha256()
            digest.update(np.ascontiguousarray(self.targets(ds), dtype=np.int64).tobytes())
            out["targets_sha256"] = digest.hexdigest()
        return out

    def targets(self, ds: Any) -> np.ndarray:
        """Every sample's target, in index order."""
        targets = getattr(ds, "targets", None)
        if targets is None and hasattr(ds, "index"):  # INaturalist: (category, file) per sample
            targets = [c for c, _ in ds.index]
        return np.asarray(targets)

    def input_img_mode(self, ds: Any) -> str:
        info = getattr(ds, "source_info", None)
        return info.input_img_mode if info is not None else (getattr(ds, "input_img_mode", None) or "RGB")

    def load(self, ds: Any, index: int) -> tuple[Image.Image, int]:
        """Decode sample ``index`` in the source's image mode, :class:`DataError` naming it (timm would silently
        substitute the next one)."""
        try:
            out, target = self.decode(ds, index)
        except (OSError, ValueError, SyntaxError) as e:
            raise DataError(f"cannot decode image {self.sample_name(ds, index)}: {e}; fix: replace it, or pass "
                            "--skip-bad-images (bad images are then found and skipped before training).") from e
        return out, (-1 if target is None else int(target))

    def decode(self, ds: Any, index: int) -> tuple[Image.Image, Any]:
        """Sample ``index`` as an image in the source's mode and its target (None for an unlabelled one)."""
        f, target = ds.reader[index]
        with Image.open(f) as img:
            return img.convert(self.input_img_mode(ds)), target

    def sample_name(self, ds: Any, index: int) -> str:
        """What to call sample ``index`` in a message: its file, its tar member, or its row of the split."""
        samples = getattr(ds, "samples", None) or getattr(ds, "imgs", None)
        if samples is not None:
            return str(samples[index][0])
        info = ds.source_info
        return f"{info.spec} split {info.split} item {index}"

    def drop(self, ds: Any, keep: np.ndarray) -> None:
        """Keep only the samples ``keep`` (indices, in order): unreadable ones skipped by ``--skip-bad-images``."""
        for attr in ("samples", "imgs", "targets"):
            if isinstance(getattr(ds, attr, None), list):
                values = getattr(ds, attr)
                setattr(ds, attr, [values[i] for i in keep])


class StreamSource(Source):
    """A source read in order with no stable index (wds/, hfids/): loaded by :mod:`..streams`, sized by a sample
    count, refused what needs a stable sample index."""

    streamed: ClassVar[bool] = True
    docs_resume: ClassVar[str] = "at the epoch boundary, same shard order"

    def check_views(self, dataset: str, *, deterministic_aug: bool, distill_cache: bool, aug_repeats: int,
                    what: str | None = None) -> None:
        if deterministic_aug or distill_cache:
            flag = what or ("--distill-cache" if distill_cache else "--deterministic-aug")
            raise DataError(
                f"{flag} needs every view to be a function of a stable sample index, which {self.prefix}/ streams do "
                "not have: timm's stream readers yield (image, target) without the sample's key and shuffle inside "
                f"each loader worker. fix: {'drop it, or ' if what is None else ''}read the data map-style (hfds/, an "
                "image folder or tar, torch/), which supports deterministic views and the teacher target cache.")
        if aug_repeats > 1:
            raise DataError(f"--aug-repeats {aug_repeats}: repeated augmentation deals copies of each indexed image "
                            f"to the processes, and {self.prefix}/ streams have no index (timm refuses it on streams "
                            "too). fix: drop it, or read the data map-style (hfds/, an image folder or tar, torch/).")

    def size(self, ds: Any) -> int:
        """The split's sample count (what an epoch is sized by)."""
        return int(ds.source_info.identity["num_samples"])

    # --- loading (called by :mod:`..streams`) ------------------------------------------------------------------

    def eval_workers(self, workers: int, world_size: int) -> int:
        """The loader workers of a (distributed) evaluation over this stream."""
        return workers

    def check_topology(self, ds: Any, *, workers: int, world_size: int, training: bool) -> None:
        """Refuse a dealing of shards that would give processes different step counts (a hang)."""

    def count_passes(self, reader: Any, count: Callable[[Any], Any]) -> None:
        """Pass every pass of ``reader``'s samples (its pipeline already built) through ``count``."""
        raise NotImplementedError

    def check_stream_target(self, info: SourceInfo, target: Any, position: int, worker: int) -> None:
        """Refuse, in flight, a target the stream yields that is not a class index."""

    # --- sample counts ---------------------------------------------------------------------------------------

    def count_claim(self, root: str, flag: str) -> tuple[str, str]:
        """Who claims the split's sample count when no flag does, and how to correct it (``{found}`` in the fix)."""
        raise NotImplementedError

    def refuse_overstated(self, data: DataSettings, split: str, root: str, claimed: int, found: int, what: str, *,
                          training: bool) -> None:
        """Refuse a sample count above the ``found`` samples the data holds (timm would repeat samples to make up
        the count); fewer is timm's sub-sampling."""
        if claimed <= found:
            return
        flag = "--train-num-samples" if training else "--val-num-samples"
        if (data.train_num_samples if training else data.val_num_samples) is not None:
            claim = f"{flag} asks for"
            fix = f"{flag} {{found}} or fewer (a smaller count samples part of the split each epoch)"
        elif "|" in split:
            claim, fix = "the shard pattern's |N gives", "write |{found} (or less) after the shard pattern"
        else:
            claim, fix = self.count_claim(root, flag)
        raise DataError(f"--dataset {data.dataset} split {split}: {claim} {claimed} samples but {what} hold {found}; "
                        f"each epoch would repeat {claimed - found} of them to make up the count. fix: "
                        f"{fix.format(found=found)}.")


# --- the registry --------------------------------------------------------------------------------------------------

_SOURCES: dict[str, Source] = {}  # --dataset prefix -> its source, in the order messages and the docs list them
_KINDS: list[Source] = []  # every kind an opened dataset can be (one source may open another: a folder's tars)


def register(*sources: Source) -> None:
    """Register ``sources`` under their ``--dataset`` prefixes, in this order (with the kinds each opens)."""
    for source in sources:
        _SOURCES[source.prefix] = source
        _KINDS.extend(s for s in (source, *source.opens) if s not in _KINDS)


def registered() -> tuple[Source, ...]:
    """The sources ``--dataset`` names, in the registry's order."""
    return tuple(_SOURCES.values())


def _listed(words: list[str], last: str = "and") -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} {last} {words[-1]}"


def split_dataset_name(dataset: str) -> tuple[str, str]:
    """``--dataset`` as ``(prefix, name)``: ``''`` for image folders/tars, else a registered prefix.

    Refuses (:class:`DataError`) ``tfds/`` (see :data:`TFDS_REFUSAL`), an unknown prefix, a name the source cannot
    read, and a bare name other than the folder spellings (timm would silently read an image folder for it).
    """
    dataset = dataset or ""
    prefix, sep, name = dataset.partition("/")
    prefix = prefix.lower()
    typed = [p for p in _SOURCES if p]
    if not sep:
        bare = next((s for s in _SOURCES.values() if dataset.lower() in s.bare_names), None)
        if bare is not None:
            return bare.prefix, ""
        knows = next((s for s in _SOURCES.values() if s.knows(dataset.lower())), None)
        hint = f" Did you mean {knows.prefix}/{dataset.lower()}?" if knows is not None else ""
        raise DataError(f"--dataset {dataset!r} names no source: timm reads TYPE/NAME "
                        f"({', '.join(f'{p}/NAME' for p in typed)}) or '' for image folders.{hint} fix: add the "
                        "type, or leave --dataset empty for an image folder.")
    if prefix in _REFUSED:
        raise DataError(f"--dataset {dataset}: {_REFUSED[prefix]}. fix: use one of those.")
    if not prefix or prefix not in _SOURCES:
        raise DataError(f"--dataset {dataset}: unknown source type {prefix!r}; timm reads "
                        f"{_listed([f'{p}/' for p in typed])} ({_listed([f'{p}/' for p in _REFUSED])} is not "
                        "supported), or '' for image folders. fix: use one of those.")
    source = _SOURCES[prefix]
    if not name:
        raise DataError(f"--dataset {dataset}: the source needs a name after '{prefix}/' (e.g. {prefix}/"
                        f"{source.example}); fix: add the name.")
    return prefix, source.check_name(dataset, name)


def source_for(dataset: str) -> Source:
    """The source ``--dataset`` names (checked as :func:`split_dataset_name` checks it)."""
    return _SOURCES[split_dataset_name(dataset)[0]]


def source_of(dataset: Any) -> Source:
    """The source an opened dataset came from: the one it carries (``dataset.source_info``), else, for a dataset
    timm opened itself, the kind its reader is (a timm ImageDataset with another reader is an image folder)."""
    info = getattr(dataset, "source_info", None)
    if info is not None:
        return info.source
    return next((s for s in _KINDS if s.owns(dataset)), _SOURCES[""])


# --- the settings ----------------------------------------------------------------------------------------------


def resolve_input_img_mode(flag: str | None, in_chans: int) -> str:
    """The mode images are converted to: ``--input-img-mode``, else timm's rule (RGB for 3 channels, L for 1).

    Refused when the mode's channel count is not the model's (timm fails in the first batch instead).
    """
    if flag is None:
        if in_chans not in (1, 3):
            raise DataError(f"--in-chans {in_chans}: timm reads images as RGB (3 channels) or L (1); fix: pass "
                            "--input-img-mode with a mode of that many channels (e.g. RGBA or CMYK for 4).")
        return "RGB" if in_chans == 3 else "L"
    if flag not in _IMAGE_MODES:
        raise DataError(f"--input-img-mode {flag!r} is not a Pillow mode a model can take; use one of "
                        f"{', '.join(_IMAGE_MODES)}; fix: use one of those.")
    if _IMAGE_MODES[flag] != in_chans:
        raise DataError(f"--input-img-mode {flag} gives {_IMAGE_MODES[flag]} channel(s) but the model takes "
                        f"{in_chans}; fix: set --in-chans {_IMAGE_MODES[flag]} or use a {in_chans}-channel mode "
                        f"({', '.join(m for m, c in _IMAGE_MODES.items() if c == in_chans) or 'none'}).")
    return flag


@dataclass(frozen=True)
class DataSettings:
    """Where the data is and how timm reads it: ``--dataset`` and timm train.py's flags for it (with their
    defaults: ``DataSettings(data_dir=DIR)`` is an image folder ``DIR/train``, ``DIR/validation``).

    ``input_img_mode`` is the resolved mode (:func:`resolve_input_img_mode`). Made only with flags that mean
    something for the source, else :class:`DataError` naming the flag (timm ignores most of them silently).
    """

    data_dir: str | None = None
    train_split: str = "train"
    val_split: str = "validation"
    class_map: str = ""
    skip_bad_images: bool = False
    dataset: str = ""
    train_num_samples: int | None = None
    val_num_samples: int | None = None
    input_key: str | None = None
    target_key: str | None = None
    input_img_mode: str = "RGB"
    download: bool = False
    # how the command names its split flags, for messages (eval has one --split)
    split_flags: str = "--train-split / --val-split"

    def __post_init__(self) -> None:
        _check_source_flags(self)

    @property
    def source(self) -> Source:
        """The source ``dataset`` names."""
        return source_for(self.dataset)

    @property
    def prefix(self) -> str:
        """The source type: '' (folder/tar) or a registered prefix (hfds, hfids, wds, torch)."""
        return split_dataset_name(self.dataset)[0]

    @property
    def name(self) -> str:
        return split_dataset_name(self.dataset)[1]

    @property
    def streamed(self) -> bool:
        """Whether the source is a stream (wds/, hfids/): no stable sample index."""
        return self.source.streamed


def _check_source_flags(data: DataSettings) -> None:
    """Refuse a flag that does nothing for the source, in the order the flags are listed."""
    source = data.source
    for flag, value in (("--train-num-samples", data.train_num_samples), ("--val-num-samples", data.val_num_samples)):
        if value is not None and value < 1:
            raise DataError(f"{flag} {value} must be >= 1; fix: a positive sample count.")
        if value is not None and not source.streamed:
            streams = ", ".join(f"{s.prefix}/" for s in registered() if s.streamed)
            raise DataError(f"{flag} {value} does nothing for {source.what}: timm reads every sample of a map-style "
                            f"source; it sizes streamed sources ({streams}). fix: drop it.")
    if data.download and not source.downloads(data):
        uses = " and to ".join(s.download_use for s in registered() if s.download_use)
        raise DataError(f"--dataset-download does nothing for {source.subject(data)}: {source.no_download}. It "
                        f"applies to {uses}. fix: drop it.")
    if data.class_map:
        source.check_class_map(data)
    if data.input_key is not None:
        source.check_input_key(data)
    if data.target_key is not None:
        source.check_target_key(data)
    if data.skip_bad_images:
        source.check_skip_bad_images(data)


def check_views_supported(dataset: str, *, deterministic_aug: bool, distill_cache: bool, aug_repeats: int,
                          what: str | None = None) -> None:
    """Refuse on a stream (``--dataset`` wds/ or hfids/) what needs a stable sample index: ``--deterministic-aug``,
    ``--distill-cache`` (``what`` names another asker, e.g. ``cache build``), DeiT's repeated augmentation
    (``--aug-repeats``)."""
    source_for(dataset).check_views(dataset, deterministic_aug=deterministic_aug, distill_cache=distill_cache,
                                    aug_repeats=aug_repeats, what=what)
