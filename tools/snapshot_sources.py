"""Record what every ``--dataset`` source gives the trainer, to prove a refactor of the data sources changed nothing.

    python tools/snapshot_sources.py WORK SNAPSHOT.json     # write the sources into WORK, record, write the record
    python tools/snapshot_sources.py diff BEFORE.json AFTER.json

``tools/snapshot_outputs.py`` runs the commands on image folders only; this covers every source kind
(tests/source_fixtures.py writes each from the same digits): per source, the sha256 of two epochs of training
batches (inputs, targets, view ids) in timm's default views and, for map-style sources, in deterministic views
with Mixup/CutMix; the validation loader's batches; the training and validation fingerprints; the class names,
sizes, the first samples' names and the first image. Run it on the commit before and after a change with the
same WORK path (fingerprints record absolute paths) on the same machine, then ``diff``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

DATA_CONFIG = dict(input_size=(1, 8, 8), mean=(0.5,), std=(0.5,), interpolation="bilinear", crop_pct=1.0,
                   crop_mode="center")
COMMON = ["-b", "16", "--workers", "0", "--in-chans", "1", "--input-img-mode", "L", "--seed", "3"]
# --dataset, --data-dir and whether the source is map-style, per source kind (hfids/ is sized by its card)
SOURCES = {
    "folder": ("", "folder", True),
    "tar": ("", "tar", True),
    "tar_by_class": ("", "tar_by_class", True),
    "hfds_parquet": ("hfds/{hf_parquet}", None, True),
    "hfds_disk": ("hfds/{hf_disk}", None, True),
    "torch_mnist": ("torch/mnist", "mnist", True),
    "wds": ("wds/digits", "wds", False),
    "hfids": ("hfids/{hf_parquet}", None, False),
}


def _sha(*tensors: torch.Tensor) -> str:
    digest = hashlib.sha256()
    for t in tensors:
        digest.update(str(tuple(t.shape)).encode() + str(t.dtype).encode())
        digest.update(t.contiguous().numpy().tobytes())
    return digest.hexdigest()


def _epochs(loader: Any, epochs: int = 2) -> list[str]:
    out = []
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        out.append(_sha(*(t for batch in loader for t in batch)))
    return out


def _record(kind: str, paths: dict[str, Path]) -> dict[str, Any]:
    from timm_deit_distill.commands.args import parse_args, settings_from_args
    from timm_deit_distill.data import (
        LoaderSettings,
        ViewSettings,
        build_eval_loader,
        build_train_loader,
        dataset_fingerprint,
        label_names,
        load_image,
        open_source,
        sample_name,
        source_size,
    )

    spec, data_dir, indexed = SOURCES[kind]
    spec = spec.format(**{k: str(v) for k, v in paths.items()})
    argv = ["--dataset", spec, *(["--data-dir", str(paths[data_dir])] if data_dir else []), *COMMON]
    out: dict[str, Any] = {}
    modes = {"default": []}
    if indexed:
        modes["deterministic_mix"] = ["--deterministic-aug", "--mixup", "0.8", "--cutmix", "1.0"]
    for mode, extra in modes.items():
        settings = settings_from_args(parse_args([*argv, *extra]))
        train, val = open_source(settings.data, num_classes=None, batch_size=16, seed=3)
        view = ViewSettings.resolve(settings.augment, DATA_CONFIG, 10)
        out[f"train_{mode}"] = _epochs(build_train_loader(train, view, settings.loader))
    loader = LoaderSettings(batch_size=16, validation_batch_size=None, workers=0, pin_mem=False)
    out["val"] = _sha(*(t for batch in build_eval_loader(val, DATA_CONFIG, loader) for t in batch))
    out["fingerprint"] = [dataset_fingerprint(train), dataset_fingerprint(val)]
    out["classes"] = [label_names(train), label_names(val)]
    out["size"] = [source_size(train), source_size(val)]
    if indexed:
        out["names"] = [sample_name(train, i) for i in (0, 1, len(train) - 1)]
        img, target = load_image(train, 0)
        out["first"] = [img.mode, img.size, hashlib.sha256(np.asarray(img).tobytes()).hexdigest(), target]
    return out


def run(work: Path, snapshot: Path) -> None:
    from source_fixtures import records, write_sources, write_tar_by_class

    from timm_deit_distill.data.digits import write_digits_imagefolder

    logging.basicConfig(level=logging.ERROR)
    torch.set_num_threads(1)
    if work.exists():
        shutil.rmtree(work)
    folder = write_digits_imagefolder(work / "digits")
    paths = write_sources(work / "sources", folder, per_class=16, wds_shards=4)
    paths["tar_by_class"] = write_tar_by_class(work / "sources" / "tar_by_class", records(folder, 16))
    record = {kind: _record(kind, paths) for kind in SOURCES}
    snapshot.write_text(json.dumps(record, indent=1, sort_keys=True))
    print(f"recorded {len(record)} sources into {snapshot}")


def diff(before: Path, after: Path) -> int:
    a, b = json.loads(before.read_text()), json.loads(after.read_text())
    differences = [f"{kind}.{key}" for kind in sorted(set(a) | set(b)) for key in
                   sorted(set(a.get(kind, {})) | set(b.get(kind, {})))
                   if a.get(kind, {}).get(key) != b.get(kind, {}).get(key)]
    print("identical" if not differences else "differ: " + ", ".join(differences))
    return 1 if differences else 0


if __name__ == "__main__":
    if sys.argv[1] == "diff":
        sys.exit(diff(Path(sys.argv[2]), Path(sys.argv[3])))
    run(Path(sys.argv[1]), Path(sys.argv[2]))
