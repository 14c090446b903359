"""Image folders (``--dataset ''``): ``DIR/<split>/<class>/<image>`` as timm's ImageFolder reader reads it, checked
before any work: the split folder, the class map, empty class folders, every image file. A split that is a tar
(``DIR/<split>.tar``, or a folder of one tar per class) is opened as an image tar (:mod:`.source_tar`).

Its identity (:meth:`FolderSource.fingerprint`) is every file's path, size and class, the keys it always had, so
caches and checkpoints written before keep matching.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

import numpy as np
from PIL import Image
from timm.data import create_dataset

from ...errors import DataError
from .base import SPLIT_SYNONYMS, DataSettings, Source, SourceInfo
from .source_tar import TarSource, tars_in

__all__ = ["FolderSource", "read_class_map", "resolve_split"]

_logger = logging.getLogger(__name__)


def resolve_split(data_dir: str, split: str, split_flags: str) -> tuple[str, bool]:
    """``(path, is_tar)`` of a split under ``data_dir``: ``DIR/<split>/`` or ``DIR/<split>.tar`` (timm's split
    synonyms included). timm itself ignores the split of a tar and reads a missing split folder as the whole
    root; both are refused here."""
    names = next((names for names in SPLIT_SYNONYMS.values() if split in names), ())
    for name in (split, *[n for n in names if n != split]):
        path = os.path.join(data_dir, name)
        if os.path.isdir(path):
            return path, False
        if os.path.isfile(path + ".tar"):
            return path + ".tar", True
    present = sorted(d for d in os.listdir(data_dir) if os.path.isdir(os.path.join(data_dir, d))
                     or d.endswith(".tar"))
    raise DataError(
        f"no '{split}' split folder or tar under {data_dir} (found: {', '.join(present) or 'nothing'}); fix: use the "
        f"layout {data_dir}/{split}/<class>/<image> (or {data_dir}/{split}.tar), or name the split with {split_flags}.")


def _image_count_under(path: str, input_key: str | None = None) -> int:
    from timm.data.readers.img_extensions import get_img_extensions

    exts = set(input_key.split(";")) if input_key else get_img_extensions(as_set=True)
    return sum(1 for _, _, files in os.walk(path, followlinks=True) for f in files
               if os.path.splitext(f)[1].lower() in exts)


def _images_per_class(split_dir: str) -> dict[str, int]:
    """Image count per class name as timm's ImageFolder reader names classes: the leaf folder's name."""
    from timm.data.readers.img_extensions import get_img_extensions

    exts = get_img_extensions(as_set=True)
    counts: dict[str, int] = {}
    for root, _, files in os.walk(split_dir, followlinks=True):
        n = sum(1 for f in files if os.path.splitext(f)[1].lower() in exts)
        if n:
            label = os.path.basename(os.path.relpath(root, split_dir)) if root != split_dir else ""
            counts[label] = counts.get(label, 0) + n
    return counts


def read_class_map(path: str, *, search_dirs: Sequence[str] = ()) -> dict[str, int]:
    """A ``--class-map`` file as timm reads it (``.txt``: one class name per line, the line number its index;
    ``.pkl``: a ``{name: index}`` dict), checked: the file exists (as given, else in one of ``search_dirs``,
    where timm also looks), names are unique and not blank, indices are 0..N-1 without gaps.

    timm itself asserts on a missing file and keeps the last of duplicate names, leaving an index no class
    has (which fails inside the first epoch as an index out of bounds).
    """
    from timm.data.readers.class_map import load_class_map

    found = path if os.path.isfile(path) else next(
        (os.path.join(d, path) for d in search_dirs if os.path.isfile(os.path.join(d, path))), None)
    if found is None:
        what = "is a folder" if os.path.isdir(path) else "does not exist"
        raise DataError(f"--class-map {path} {what}; fix: pass a class map file (.txt: one class folder name per "
                        "line, in index order), or drop --class-map to use the class folders in sorted order.")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".txt":
        with open(found, encoding="utf-8") as f:
            names = [line.strip() for line in f]
        blank = [i + 1 for i, name in enumerate(names) if not name]
        if blank:
            raise DataError(f"--class-map {path}: line {blank[0]} is blank{' (and others)' if len(blank) > 1 else ''}; "
                            "fix: one class folder name per line, no blank lines.")
        seen: dict[str, int] = {}
        for i, name in enumerate(names):
            if name in seen:
                raise DataError(f"--class-map {path} names class {name!r} twice (lines {seen[name] + 1} and {i + 1}); "
                                "each class needs one index. fix: list every class once.")
            seen[name] = i
        return seen
    if ext != ".pkl":
        raise DataError(f"--class-map {path}: timm reads .txt (one class name per line) or .pkl class maps, not "
                        f"{ext or 'a file without extension'}; fix: write the class names into a .txt file.")
    try:
        class_to_idx = load_class_map(found)
    except Exception as e:  # a damaged or unsafe pickle: timm's restricted unpickler refuses it
        raise DataError(f"--class-map {path} cannot be read ({type(e).__name__}: {e}); fix: pass a .txt class map "
                        "(one class name per line).") from None
    indices = sorted(class_to_idx.values()) if all(isinstance(v, int) for v in class_to_idx.values()) else None
    if not class_to_idx or indices != list(range(len(class_to_idx))):
        raise DataError(f"--class-map {path} must map each class name to one of the indices 0..N-1, each used "
                        "once; fix: write the class names, in index order, into a .txt file.")
    return {str(k): int(v) for k, v in class_to_idx.items()}


def _check_class_map_coverage(split_dir: str, class_map: str, class_to_idx: dict[str, int]) -> None:
    """Refuse classes a map lists that have no images in ``split_dir``; warn about folders it leaves out.

    A map naming a subset of the folders is timm's way to train on some classes: kept, but the folders left
    out (and their images) are named in a warning instead of vanishing silently.
    """
    counts = _images_per_class(split_dir)
    empty = [name for name in class_to_idx if counts.get(name, 0) == 0]
    if empty:
        shown = ", ".join(f"{n!r} ({'no folder' if not os.path.isdir(os.path.join(split_dir, n)) else 'no images'})"
                          for n in empty[:5])
        raise DataError(
            f"--class-map {class_map} lists {len(empty)} class(es) with no images in {split_dir}: {shown}"
            f"{', ...' if len(empty) > 5 else ''}; a class without images cannot be learned or measured. fix: "
            "remove them from the class map, or add their images.")
    ignored = {name: n for name, n in counts.items() if name not in class_to_idx}
    if ignored:
        shown = ", ".join(f"{name} ({n} images)" for name, n in sorted(ignored.items())[:10])
        _logger.warning("--class-map %s lists %d classes; ignoring %d image(s) in %d folder(s) of %s it does not "
                        "name: %s%s.", class_map, len(class_to_idx), sum(ignored.values()), len(ignored), split_dir,
                        shown, ", ..." if len(ignored) > 10 else "")


def _open_folder(split_dir: str, class_map: str, input_key: str | None = None) -> Any:
    class_to_idx = read_class_map(class_map, search_dirs=(split_dir,)) if class_map else None
    try:
        ds = create_dataset("", root=split_dir, split="", search_split=False, class_map=class_to_idx or "",
                            input_key=input_key)
    except RuntimeError as e:  # timm's reader: "Found 0 images in subfolders of ..."
        exts = f" with the extensions {input_key} (--input-key)" if input_key else ""
        raise DataError(
            f"{split_dir} holds no images{exts}; fix: put images in class folders, "
            f"{split_dir}/<class>/<image>.jpg (timm's ImageFolder layout).") from e
    if class_to_idx:
        _check_class_map_coverage(split_dir, class_map, class_to_idx)
        return ds
    # An empty class folder silently drops a class and shifts every later class index.
    empty = [d for d in sorted(os.listdir(split_dir))
             if not d.startswith(".") and os.path.isdir(os.path.join(split_dir, d))
             and d not in ds.reader.class_to_idx and _image_count_under(os.path.join(split_dir, d), input_key) == 0]
    if empty:
        raise DataError(
            f"class folder(s) {', '.join(empty)} in {split_dir} hold no images; an empty class would "
            "shift every later class index. fix: add images or remove the empty folder(s).")
    return ds


def _check_image(path: str) -> str | None:
    try:
        with Image.open(path) as img:
            img.verify()  # reads the file and checks its structure without decoding pixels
        return None
    except Exception as e:  # PIL raises many types for broken files
        return f"{type(e).__name__}: {e}"


def _scan_images(ds: Any, split_dir: str, *, skip: bool) -> list[str]:
    """Check every file of ``ds`` opens as an image; drop bad ones when ``skip``, else raise."""
    paths = [p for p, _ in ds.reader.samples]
    workers = min(16, (os.cpu_count() or 1) * 4)  # header reads are I/O bound
    with ThreadPoolExecutor(max_workers=workers) as pool:
        problems = list(pool.map(_check_image, paths, chunksize=64))
    bad = [(p, msg) for p, msg in zip(paths, problems, strict=True) if msg is not None]
    if bad and not skip:
        path, msg = bad[0]
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise DataError(
            f"unreadable image {path}{more}: {msg}; fix: delete or replace the file, or pass "
            "--skip-bad-images to train without it.")
    if bad:
        bad_paths = {p for p, _ in bad}
        ds.reader.samples = [s for s in ds.reader.samples if s[0] not in bad_paths]
        if not ds.reader.samples:
            raise DataError(f"every image in {split_dir} is unreadable; fix: check the files.")
        _logger.warning("skipped %d unreadable image(s) in %s, e.g. %s", len(bad), split_dir, bad[0][0])
    return [p for p, _ in bad]


def _open_image_folder(split_dir: str, *, class_map: str = "", input_key: str | None = None,
                       skip_bad_images: bool = False) -> Any:
    """One split folder as a timm ImageDataset, every check done: the class map, empty class folders, every image
    file (its structure read, pixels not decoded; ``skip_bad_images`` drops unreadable ones, listed in the
    dataset's ``skipped_files``). ``input_key`` is timm's for folders: the file extensions to read, with the dot,
    ';'-separated."""
    ds = _open_folder(split_dir, class_map, input_key)
    ds.skipped_files = _scan_images(ds, split_dir, skip=skip_bad_images)
    return ds


def _has_images_or_folders(path: str) -> bool:
    return any(not f.endswith(".tar") and not f.startswith(".") for f in os.listdir(path))


class FolderSource(Source):
    """Image folders and, where a split is a tar, image tars: ``--dataset ''`` (or timm's folder spellings)."""

    kind: ClassVar[str] = "folder"
    prefix: ClassVar[str] = ""
    what: ClassVar[str] = "an image folder"
    bare_names: ClassVar[tuple[str, ...]] = ("", "folder", "imagefolder", "image_folder")
    timm_reader: ClassVar[str | None] = "ReaderImageFolder"
    help: ClassVar[str] = "'' (default) image folders DIR/<split>/<class>/<image> or image tars DIR/<split>.tar"
    docs_row: ClassVar[str] = "image folders / image tars"
    tars: ClassVar[TarSource] = TarSource()
    opens: ClassVar[tuple[Source, ...]] = (tars,)

    def card_dataset(self, name: str) -> tuple[str, str]:
        return "imagefolder", "image folders"  # local class folders, as transformers' Trainer records them

    def check_input_key(self, data: DataSettings) -> None:
        key = data.input_key
        bad = [e for e in key.split(";") if not e.startswith(".")]
        if bad:
            raise DataError(f"--input-key {key}: for an image folder timm reads it as file extensions with the "
                            f"dot, ';'-separated; {bad[0]!r} has none. fix: --input-key "
                            f"{';'.join(e if e.startswith('.') else '.' + e for e in key.split(';'))}")

    def check_target_key(self, data: DataSettings) -> None:
        raise DataError(f"--target-key {data.target_key}: {self.what} takes the class from the folder name; it names a "
                        "column of hfds/ / hfids/ data or a json field of wds/ shards. fix: drop it.")

    def check_split(self, data: DataSettings, split: str, *, training: bool) -> None:
        self._split_path(data, split)

    def open_split(self, data: DataSettings, split: str, *, training: bool, num_classes: int | None,
                   batch_size: int, seed: int) -> Any:
        path, is_tar = self._split_path(data, split)
        if is_tar or (not _has_images_or_folders(path) and tars_in(path)):  # a folder of tars: one per class
            return self.tars.open_path(data, path, split)
        ds = _open_image_folder(path, class_map=data.class_map, input_key=data.input_key,
                                skip_bad_images=data.skip_bad_images)
        ds.input_img_mode = data.input_img_mode
        names = self.class_names(ds)
        ds.source_info = SourceInfo(source=self, spec="folder", split=split, location=path,
                                    input_img_mode=data.input_img_mode, classes=names, num_classes=len(names),
                                    skip_bad_images=data.skip_bad_images)
        return ds

    def _split_path(self, data: DataSettings, split: str) -> tuple[str, bool]:
        """``(path, is_tar)`` of ``split`` under ``--data-dir``, the folder checked first."""
        data_dir = data.data_dir
        if not data_dir:
            raise DataError("no data directory given; fix: pass --data-dir DIR (image folders "
                            "DIR/train/<class>/<image>, DIR/validation/<class>/<image>, or DIR/train.tar and "
                            "DIR/validation.tar).")
        data_dir = os.fspath(data_dir)
        if os.path.isfile(data_dir) and data_dir.endswith(".tar"):
            raise DataError(f"--data-dir {data_dir} is one tar: timm would read it for every split (training and "
                            "validation on the same images). fix: pass the folder holding train.tar and "
                            "validation.tar.")
        if not os.path.isdir(data_dir):
            what = "is a file, not a folder" if os.path.exists(data_dir) else "does not exist"
            raise DataError(f"data directory {data_dir} {what}; fix: pass --data-dir pointing at a folder with "
                            "train/ and validation/ class folders (or train.tar and validation.tar).")
        return resolve_split(data_dir, split, data.split_flags)

    def class_names(self, ds: Any) -> list[str]:
        return [name for name, _ in sorted(ds.reader.class_to_idx.items(), key=lambda kv: kv[1])]

    def check_num_classes(self, ds: Any, wanted: int | None) -> int:
        found = len(ds.reader.class_to_idx)
        if wanted is not None and int(wanted) != found:
            root = getattr(ds.reader, "root", "")
            raise DataError(f"--num-classes {wanted} but the training set{' ' + str(root) if root else ''} has {found} "
                            f"class folders; fix: drop --num-classes or set it to {found}.")
        return found

    def fingerprint(self, ds: Any) -> dict[str, Any]:
        """Every file (path relative to the split folder, size, class)."""
        root = getattr(ds.reader, "root", "")
        digest = hashlib.sha256()
        for path, target in ds.reader.samples:
            rel = os.path.relpath(path, root) if root else path
            digest.update(f"{rel}\t{os.path.getsize(path)}\t{target}\n".encode())
        classes = self.class_names(ds)
        return {
            "num_samples": len(ds.reader.samples),
            "num_classes": len(classes),
            "classes_sha256": hashlib.sha256("\n".join(classes).encode()).hexdigest(),
            "files_sha256": digest.hexdigest(),
        }

    def targets(self, ds: Any) -> np.ndarray:
        return np.asarray([t for _, t in ds.reader.samples])

    def load(self, ds: Any, index: int) -> tuple[Image.Image, int]:
        """Decode sample ``index``, :class:`DataError` naming the file (timm's own ``__getitem__`` silently
        substitutes the next sample for an unreadable one)."""
        path, target = ds.reader.samples[index]
        try:
            with open(path, "rb") as f:
                img = Image.open(f)
                img = img.convert(ds.input_img_mode or "RGB")
        except (OSError, ValueError) as e:
            raise DataError(f"cannot decode image {path}: {e}; fix: delete or replace the file "
                            "(--skip-bad-images skips files whose structure is broken).") from e
        return img, (-1 if target is None else int(target))

    def sample_name(self, ds: Any, index: int) -> str:
        return str(ds.reader.samples[index][0])
