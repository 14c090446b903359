"""Images per second of each ``--dataset`` source, relative to image folders on the same images, and the cost of
``--deterministic-aug`` relative to timm's own loader (``create_loader``) on the same settings.

All sources hold the same images (scikit-learn's bundled digits, written by ``tests/source_fixtures.py`` as an
image folder, image tars, a Hugging Face parquet folder (hfds/ and hfids/), a ``save_to_disk`` folder, WebDataset
shards with timm's ``_info.json``, and torchvision's MNIST files). Each pass is one training epoch of the package's
training loader as ``deit-distill train`` builds it (DeiT's augmentation without Mixup: RandAugment
rand-m9-mstd0.5-inc1, random erasing 0.25, random resized crop, flip); passes rotate over the loaders and each
figure is the median over passes of images/s, so slow drifts in machine load cancel. Prints, one per line::

    source_over_folder[tar]=X.XX  ...                          (images/s of the source / of the image folder)
    deterministic_over_timm[32px]=X.XX  default_over_timm[32px]=Y.YY    (images/s of ours / of timm's create_loader)
    deterministic_over_timm[224px]=X.XX  default_over_timm[224px]=Y.YY
    reseed_per_view[32px]=N.N us of M us (P.P %) per view of the --deterministic-aug loader  (--workers 0)

Sources are compared at ``--img-size`` (32: reading is then most of the work). The loaders are compared at each
of ``--view-sizes``: DeiT's 224 px, and 32 px, the worst case, where a view's whole work is ~0.3 ms and fixed
per-view costs weigh most. The goal for ``deterministic_over_timm`` is >= 1/1.05 = 0.95 (deterministic views
within 1.05x of timm's loader throughput). The last line is the one cost a reproducible view cannot shed: reseeding
python's, numpy's and torch's generators (timm's transforms draw on all three) from the view's identity, timed on
decoded images as the transform with and without it. Details go to stderr. Run:
``python benchmarks/loader_throughput.py`` (about two minutes on 2 CPU cores; ``--passes``, ``--img-size``,
``--view-sizes``, ``--workers``, ``--views-only``). Needs the [hf] and [wds] extras (``make bench``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # local files only: no Hub lookups, no download counts
os.environ.setdefault("HF_UPDATE_DOWNLOAD_COUNTS", "0")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

import torch  # noqa: E402
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_dataset, create_loader  # noqa: E402

from timm_deit_distill.commands.args import parse_args, settings_from_args  # noqa: E402
from timm_deit_distill.data import (  # noqa: E402
    ViewSettings,
    build_train_loader,
    build_train_transform,
    load_image,
    make_posterize_safe,
    open_source,
)
from timm_deit_distill.data.digits import write_digits_imagefolder  # noqa: E402
from timm_deit_distill.data.views import seed_all, view_seeds  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from source_fixtures import write_sources  # noqa: E402

AUG = ["--aa", "rand-m9-mstd0.5-inc1", "--reprob", "0.25", "--mixup", "0", "--cutmix", "0", "--seed", "0"]


def source_flags(paths: dict[str, Path]) -> dict[str, list[str]]:
    return {"folder": ["--data-dir", str(paths["folder"])],
            "tar": ["--data-dir", str(paths["tar"])],
            "hfds (parquet)": ["--dataset", f"hfds/{paths['hf_parquet']}"],
            "hfds (save_to_disk)": ["--dataset", f"hfds/{paths['hf_disk']}"],
            "hfids": ["--dataset", f"hfids/{paths['hf_parquet']}"],
            "wds": ["--dataset", "wds/digits", "--data-dir", str(paths["wds"])],
            "torch/mnist": ["--dataset", "torch/mnist", "--data-dir", str(paths["mnist"])]}


def data_config(size: int) -> dict:
    return dict(input_size=(3, size, size), mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
                interpolation="bicubic", crop_pct=0.875, crop_mode="center")


def ours(flags: list[str], size: int, batch: int, workers: int):
    """The package's training loader of a source, as `deit-distill train` builds it, and its epoch's size."""
    settings = settings_from_args(parse_args([*flags, *AUG, "-b", str(batch), "--workers", str(workers),
                                              "--img-size", str(size)]))
    train, _ = open_source(settings.data, num_classes=10, batch_size=batch, seed=settings.seed)
    view = ViewSettings.resolve(settings.augment, data_config(size), 10)
    return build_train_loader(train, view, settings.loader)


def timms(folder: Path, view: ViewSettings, batch: int, workers: int):
    """timm's create_loader over timm's create_dataset of the image folder, with the same augmentation."""
    a = view.augment
    ds = create_dataset("", root=str(folder / "train"), split="", search_split=False)
    loader = create_loader(ds, input_size=view.input_size, batch_size=batch, is_training=True, use_prefetcher=False,
                         no_aug=bool(a.no_aug), scale=a.scale, ratio=a.ratio, hflip=a.hflip, vflip=a.vflip,
                         color_jitter=a.color_jitter, auto_augment=a.aa, interpolation=view.train_interpolation,
                         mean=view.mean, std=view.std, re_prob=a.reprob, re_mode=a.remode, re_count=a.recount,
                         num_workers=workers, persistent_workers=workers > 0)
    make_posterize_safe(loader.dataset.transform)  # timm's posterize raises on 0 bits (the package's fix, in both)
    return loader


def images_per_second(loader, epoch: int) -> float:
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)
    start, n = time.perf_counter(), 0
    for batch in loader:
        n += len(batch[0])
    return n / (time.perf_counter() - start)


def median_rates(loaders: dict, passes: int) -> dict[str, float]:
    """Median images/s of each loader over ``passes`` epochs, the order rotating every pass."""
    rates: dict[str, list[float]] = {name: [] for name in loaders}
    names = list(loaders)
    for epoch in range(passes):
        for name in names[epoch % len(names):] + names[:epoch % len(names)]:
            rates[name].append(images_per_second(loaders[name], epoch))
    for name, r in rates.items():
        print(f"{name:32s} {statistics.median(r):8.0f} img/s  (passes {min(r):.0f}..{max(r):.0f})", file=sys.stderr)
    return {name: statistics.median(r) for name, r in rates.items()}


def reseed_cost(folder: Path, size: int, rounds: int = 5) -> float:
    """Microseconds per view spent reseeding the three generators before the training transform at ``size``.

    The transform runs over the decoded training images with and without reseeding before each one, interleaved;
    the difference includes the first draws after a reseed (each generator then regenerates its state).
    """
    settings = settings_from_args(parse_args(["--data-dir", str(folder), *AUG]))
    transform = build_train_transform(ViewSettings.resolve(settings.augment, data_config(size), 10))
    train, _ = open_source(settings.data, num_classes=10, batch_size=64, seed=0)
    images = [load_image(train, i)[0] for i in range(len(train))]
    seeds = view_seeds(0, 1, range(len(images)))
    plain, reseeded = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        for img in images:
            transform(img)
        plain.append(time.perf_counter() - start)
        start = time.perf_counter()
        for img, seed in zip(images, seeds, strict=True):
            seed_all(seed)
            transform(img)
        reseeded.append(time.perf_counter() - start)
    return (statistics.median(reseeded) - statistics.median(plain)) * 1e6 / len(images)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--passes", type=int, default=5)
    p.add_argument("--img-size", type=int, default=32, help="the size the sources are compared at")
    p.add_argument("--view-sizes", default="32,224", help="the sizes the loaders are compared at (comma-separated)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--views-only", action="store_true",
                   help="compare only the loaders (image folder, --deterministic-aug, timm's), not the sources")
    args = p.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("HF_DATASETS_CACHE", os.path.join(tmp, "datasets-cache"))
        folder = write_digits_imagefolder(Path(tmp) / "digits", val_fraction=0.2)
        paths = write_sources(Path(tmp) / "sources", folder, per_class=None, wds_shards=8)
        flags = source_flags(paths)
        if not args.views_only:
            median = median_rates({name: ours(f, args.img_size, args.batch_size, args.workers)
                                   for name, f in flags.items()}, args.passes)
            print("  ".join(f"source_over_folder[{name}]={median[name] / median['folder']:.2f}" for name in flags
                            if name != "folder"))
        sizes = [int(size) for size in args.view_sizes.split(",")]
        view_us: dict[int, float] = {}
        for size in sizes:
            view = ViewSettings.resolve(settings_from_args(parse_args([*flags["folder"], *AUG])).augment,
                                        data_config(size), 10)
            median = median_rates({
                "folder": ours(flags["folder"], size, args.batch_size, args.workers),
                "folder --deterministic-aug": ours([*flags["folder"], "--deterministic-aug"], size, args.batch_size,
                                                   args.workers),
                "timm create_loader (folder)": timms(paths["folder"], view, args.batch_size, args.workers)},
                args.passes)
            timm_rate = median["timm create_loader (folder)"]
            view_us[size] = 1e6 / median["folder --deterministic-aug"]
            print(f"deterministic_over_timm[{size}px]={median['folder --deterministic-aug'] / timm_rate:.2f}  "
                  f"default_over_timm[{size}px]={median['folder'] / timm_rate:.2f}")
        size = min(sizes)
        cost = reseed_cost(paths["folder"], size)
        # with workers a view's wall time is shared by several processes: only in-process is it the view's cost
        share = (f" of {view_us[size]:.0f} us ({100 * cost / view_us[size]:.1f} %) per view of the --deterministic-aug "
                 "loader" if args.workers == 0 else " per view (in each loader worker)")
        print(f"reseed_per_view[{size}px]={cost:.1f} us{share}")


if __name__ == "__main__":
    main()
