"""torchvision's datasets (``--dataset torch/NAME``), opened through timm's ``create_dataset`` as timm train.py opens
them. Refused: the names timm does not know, and CIFAR-10/100, whose batch files torchvision unpickles (this package
never unpickles). Checked before any work: the split, every label, every image file of a folder-backed dataset.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from ...errors import DataError
from .base import SPLIT_SYNONYMS, DataSettings, Source, SourceInfo
from .checks import scan

__all__ = ["TorchSource"]

_logger = logging.getLogger(__name__)

# torchvision datasets timm's create_dataset knows; cifar10/100 unpickle their batch files, which this package
# never does (weights_only everywhere).
_TORCH_SAFE = ("mnist", "kmnist", "fashion_mnist", "qmnist", "places365", "inaturalist", "inat", "imagenet",
               "image_folder", "folder")
_TORCH_PICKLED = ("cifar10", "cifar100")
_TORCH_DOWNLOADS = ("mnist", "kmnist", "fashion_mnist", "qmnist", "places365", "inaturalist", "inat")
# the names said in messages (the aliases inat and folder left out)
_TORCH_SHOWN = ", ".join(n for n in _TORCH_SAFE if n not in ("inat", "folder"))


class TorchSource(Source):
    """``torch/NAME``: a torchvision dataset."""

    kind: ClassVar[str] = "torch"
    prefix: ClassVar[str] = "torch"
    what: ClassVar[str] = "torch/"
    example: ClassVar[str] = "mnist"
    help: ClassVar[str] = f"torch/NAME a torchvision dataset ({_TORCH_SHOWN}; not cifar10/100, which unpickle)"
    docs_row: ClassVar[str] = "`torch/` (torchvision)"
    download_use: ClassVar[str] = "torch/ datasets torchvision downloads"

    def owns(self, dataset: Any) -> bool:
        return getattr(dataset, "reader", None) is None  # torchvision's datasets have no timm reader

    def knows(self, name: str) -> bool:
        return name in (*_TORCH_SAFE, *_TORCH_PICKLED)

    def check_name(self, dataset: str, name: str) -> str:
        name = name.lower()  # timm lower-cases torch/ names only
        if name in _TORCH_PICKLED:
            raise DataError(f"--dataset {dataset}: torchvision's {name.upper()} unpickles its batch files, which "
                            "can run code; this package never unpickles. fix: convert it to an image folder, or read "
                            "it from the Hub (e.g. --dataset hfds/uoft-cs/cifar10).")
        if name not in _TORCH_SAFE:
            raise DataError(f"--dataset {dataset}: timm knows no torchvision dataset {name!r}; it reads "
                            f"{_TORCH_SHOWN}; fix: use one of those, or hfds/ for data on the Hub.")
        return name

    def subject(self, data: DataSettings) -> str:
        return f"{self.what} {data.name}"

    def downloads(self, data: DataSettings) -> bool:
        return data.name in _TORCH_DOWNLOADS

    def check_class_map(self, data: DataSettings) -> None:
        raise DataError(f"--class-map {data.class_map} does not work for {self.what}: torchvision fixes the classes. "
                        "fix: drop it.")

    def check_input_key(self, data: DataSettings) -> None:
        raise DataError(f"--input-key {data.input_key}: torchvision datasets take no keys. fix: drop it.")

    def check_target_key(self, data: DataSettings) -> None:
        raise DataError(f"--target-key {data.target_key}: {self.what} takes no keys; it names a column of hfds/ / "
                        "hfids/ data or a json field of wds/ shards. fix: drop it.")

    def check_split(self, data: DataSettings, split: str, *, training: bool) -> None:
        # timm picks the train set for train/training and the test set for every other string, typos included
        named = ("imagenet", "image_folder", "folder", "places365", "inaturalist", "inat")  # splits by name
        if data.name not in named and split not in (*SPLIT_SYNONYMS["train"], *SPLIT_SYNONYMS["validation"], "test"):
            raise DataError(f"--dataset {data.dataset} has the splits train and test; {split!r} is neither (timm "
                            "would silently read the test set). fix: --train-split train --val-split test (or "
                            "validation, which reads the test set).")
        if not data.data_dir:
            raise DataError(f"--dataset {data.dataset} needs --data-dir (torchvision's root folder).")

    def open_split(self, data: DataSettings, split: str, *, training: bool, num_classes: int | None,
                   batch_size: int, seed: int) -> Any:
        """torchvision's dataset through timm's create_dataset, its transforms removed (the package applies its own to
        the PIL image), checked: the split (timm reads the test set for any unknown name), every label, every image
        file of a folder-backed dataset."""
        from timm.data import create_dataset

        name = data.name
        self.check_split(data, split, training=training)
        try:
            ds = create_dataset(data.dataset, root=data.data_dir, split=split, download=data.download)
        except RuntimeError as e:  # torchvision: "Dataset not found. You can use download=True to download it"
            hint = " or pass --dataset-download" if name in _TORCH_DOWNLOADS and not data.download else ""
            raise DataError(f"--dataset {data.dataset}: {' '.join(str(e).split())[:200]} (under {data.data_dir}); fix: "
                            f"point --data-dir at torchvision's root for it{hint}.") from None
        except (OSError, ValueError, AssertionError) as e:
            raise DataError(f"--dataset {data.dataset} split {split}: {type(e).__name__}: {e}".rstrip(": ")) from None
        ds.transform = None  # the package applies its own transforms to the PIL image
        ds.target_transform = None
        classes = [str(c) for c in getattr(ds, "classes", [])] or None
        if classes is None and hasattr(ds, "all_categories"):
            classes = [str(c) for c in ds.all_categories]
        train_set = getattr(ds, "train", None)
        ds.source_info = SourceInfo(
            source=self, spec=data.dataset, split=split, location=data.data_dir, input_img_mode=data.input_img_mode,
            classes=classes, num_classes=len(classes) if classes else None, skip_bad_images=data.skip_bad_images,
            identity={"torchvision_split": ("train" if train_set else "test") if train_set is not None else split})
        if train_set is False and split in SPLIT_SYNONYMS["validation"]:
            _logger.info("--dataset %s: split %s reads torchvision's test set (it has no other).", data.dataset, split)
        if classes:
            _check_torch_targets(self, data, split, ds, len(classes))
        samples = getattr(ds, "samples", None) or getattr(ds, "imgs", None)
        if samples:
            scan(ds, lambda i: samples[i][0], threads=True)
        else:
            ds.skipped_files = []
        return ds

    def class_names(self, ds: Any) -> list[str] | None:
        info = getattr(ds, "source_info", None)
        return info.classes if info is not None else [str(c) for c in ds.classes]

    def decode(self, ds: Any, index: int) -> tuple[Image.Image, Any]:
        img, target = ds[index]  # its transform was removed when opened: a PIL image
        return img.convert(self.input_img_mode(ds)), int(target)


def _check_torch_targets(source: Source, data: DataSettings, split: str, ds: Any, count: int) -> None:
    """Every target torchvision read (from its label files: MNIST's idx, ...) is a class index below ``count``;
    refused naming the first sample that is not, which training would meet as an index error."""
    targets = source.targets(ds)
    bad = np.flatnonzero((targets < 0) | (targets >= count)) if targets.size else []
    if len(bad):
        raise DataError(f"--dataset {data.dataset} split {split}: sample {int(bad[0])} has label "
                        f"{int(targets[bad[0]])}, outside its {count} classes; fix: repair the label file under "
                        f"--data-dir {data.data_dir}.")
