"""Image tars: a split that is ``DIR/<split>.tar`` (members ``<class>/<image>``) or a folder of one tar per class
(ImageNet's train/ download), read by timm's ``ReaderImageInTar``. Opened by :class:`~.source_folder.FolderSource`
in place of a split folder; every image is checked before training.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from typing import Any, ClassVar

import numpy as np

from ...errors import DataError
from .base import DataSettings, Source, SourceInfo
from .checks import scan

__all__ = ["TarSource", "tars_in"]


def tars_in(path: str) -> list[str]:
    """The tars in the folder ``path``, sorted."""
    return sorted(f for f in os.listdir(path) if f.endswith(".tar"))


class TarSource(Source):
    """Image tars, opened where an image folder's split is a tar (no ``--dataset`` prefix of their own)."""

    kind: ClassVar[str] = "tar"
    prefix: ClassVar[str] = ""
    what: ClassVar[str] = "an image tar"
    timm_reader: ClassVar[str | None] = "ReaderImageInTar"

    def open_path(self, data: DataSettings, path: str, split: str) -> Any:
        """The split ``split`` read from ``path`` (a tar, or a folder of tars), every image checked."""
        from timm.data import ImageDataset
        from timm.data.readers.reader_image_in_tar import ReaderImageInTar

        if data.input_key is not None:
            raise DataError(f"--input-key {data.input_key}: timm's tar reader takes no keys ({path}). fix: drop it.")
        class_map = (os.path.abspath(data.class_map) if data.class_map and os.path.exists(data.class_map)
                     else data.class_map)
        try:
            # cache_tarinfo=False: timm would otherwise write and unpickle a tar index beside tars over 10 GB.
            reader = ReaderImageInTar(path, class_map=class_map, cache_tarinfo=False)
        except (OSError, tarfile.TarError) as e:
            raise DataError(f"cannot read the tar {path}: {type(e).__name__}: {e}; fix: replace the file.") from e
        except (ValueError, AssertionError) as e:  # zip(*[]) of an empty tar; a class map it cannot find
            raise DataError(f"{path} holds no images timm can read ({e or type(e).__name__}); fix: put class "
                            "folders of images in the tar (<class>/<image>.jpg).") from e
        ds = ImageDataset(path, reader=reader, input_img_mode=data.input_img_mode)
        names = [n for n, _ in sorted(reader.class_name_to_idx.items(), key=lambda kv: kv[1])]
        files = [path] if os.path.isfile(path) else [os.path.join(path, f) for f in tars_in(path)]
        ds.source_info = SourceInfo(
            source=self, spec="tar", split=split, location=path, input_img_mode=data.input_img_mode, classes=names,
            num_classes=len(names), skip_bad_images=data.skip_bad_images,
            identity={"files": [[os.path.basename(f), os.path.getsize(f)] for f in files],
                      "members_sha256": hashlib.sha256("\n".join(
                          f"{reader.filename(i)}\t{reader.samples[i][0].size}" for i in range(len(reader))).encode()
                      ).hexdigest()})
        scan(ds, lambda i: reader[i][0], threads=False)
        _close_tars(reader)
        return ds

    def class_names(self, ds: Any) -> list[str] | None:
        info = getattr(ds, "source_info", None)
        if info is not None:
            return info.classes
        mapping = ds.reader.class_name_to_idx
        return [str(n) for n, _ in sorted(mapping.items(), key=lambda kv: kv[1])] or None

    def targets(self, ds: Any) -> np.ndarray:
        return np.asarray(ds.reader.targets)

    def sample_name(self, ds: Any, index: int) -> str:
        return f"{ds.reader.root}:{ds.reader.filename(index)}"

    def drop(self, ds: Any, keep: np.ndarray) -> None:
        ds.reader.samples, ds.reader.targets = ds.reader.samples[keep], ds.reader.targets[keep]


def _close_tars(reader: Any) -> None:
    """Drop the tar handles a scan opened: a handle inherited by forked loader workers shares its file offset."""
    states = [reader.tar_state] if reader.root_is_tar else list(reader.tar_state.values())
    for state in states:
        if state.tf is not None:
            state.tf.close()
            state.tf = None
        for child in state.children.values():
            child.tf = None
