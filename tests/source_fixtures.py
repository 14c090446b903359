"""Every timm dataset source, written locally from the same digits image folder (no network).

Moved here from the issue-14 research scripts (``make_sources.py``). Each source holds byte-identical PNGs
(8x8, mode L) of the folder it is made from, in timm's ImageFolder order, so a sample can be compared across
sources. Writers (each returns the path it wrote):

    records(folder, per_class=None)       {split: [(name, label, png bytes)]}, at most per_class per class
    write_image_tar(out, recs)            out/train.tar, out/validation.tar (members <cls>/<name>.png)
    write_hf_disk(out, recs)              datasets.DatasetDict.save_to_disk(out)   (image=Image(), label=ClassLabel)
    write_hf_parquet(out, recs, shards)   out/data/{split}-0000i-of-0000n.parquet  (HF features in the schema)
    write_hf_card(out, recs)              out/README.md: a Hub dataset card whose YAML gives split sizes
    write_hf_with_classes(out, recs, ...) an HF dataset whose splits each declare their own ClassLabel names
    write_wds(out, recs, shards)          out/digits-{split}-{0000..}.tar + out/_info.json (timm's format)
    write_mnist_raw(out, recs)            out/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte
    corrupt_wds_sample(dir, shard, i)     truncates one sample's .png inside a shard; returns its key

and ``open_folder(data_dir, **flags)``: an image folder's training and validation splits, opened by the package's
one road (``open_source``) with ``DataSettings(data_dir=..., **flags)``.
"""

from __future__ import annotations

import io
import json
import os
import struct
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

SPLITS = ("train", "validation")
CLASS_NAMES = [str(i) for i in range(10)]


def _png_records(folder: Path, split: str, per_class: int | None) -> list[tuple[str, int, bytes]]:
    """(name, label, png bytes) in timm's ImageFolder order (natural sort of the relative path)."""
    from timm.data import create_dataset

    ds = create_dataset("", root=str(folder / split), split="", search_split=False)
    out, seen = [], {}
    for path, target in ds.reader.samples:
        seen[target] = seen.get(target, 0) + 1
        if per_class is None or seen[target] <= per_class:
            out.append((Path(path).stem, int(target), Path(path).read_bytes()))
    return out


def records(folder: str | os.PathLike, per_class: int | None = None) -> dict[str, list[tuple[str, int, bytes]]]:
    """The images of ``folder``'s train/ and validation/ splits, at most ``per_class`` of each class."""
    return {s: _png_records(Path(folder), s, per_class) for s in SPLITS}


def open_folder(data_dir, **flags):
    """``(train, val)`` of the image folder (or tars) under ``data_dir``, as the package opens any source."""
    from timm_deit_distill.data import DataSettings, open_source

    return open_source(DataSettings(data_dir=str(data_dir), **flags), batch_size=16, seed=0)


def _add_bytes(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    ti.mtime = 0  # reproducible archives
    ti.mode = 0o644
    tf.addfile(ti, io.BytesIO(data))


def write_image_tar(out, recs) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for split, rs in recs.items():
        with tarfile.open(out / f"{split}.tar", "w", format=tarfile.USTAR_FORMAT) as tf:
            for name, label, data in rs:
                _add_bytes(tf, f"{CLASS_NAMES[label]}/{name}.png", data)
    return out


def write_tar_by_class(out, recs) -> Path:
    out = Path(out)
    for split, rs in recs.items():
        (out / split).mkdir(parents=True, exist_ok=True)
        for c, cname in enumerate(CLASS_NAMES):
            with tarfile.open(out / split / f"{cname}.tar", "w") as tf:
                for name, label, data in rs:
                    if label == c:
                        _add_bytes(tf, f"{name}.png", data)
    return out


def _hf_dataset(rs):
    import datasets

    features = datasets.Features({
        "image": datasets.Image(),
        "label": datasets.ClassLabel(names=CLASS_NAMES),
        "file_name": datasets.Value("string"),
        "idx": datasets.Value("int64"),  # position in the split: --target-key idx exposes order in probes
    })
    return datasets.Dataset.from_dict(
        {"image": [{"bytes": d, "path": None} for _, _, d in rs],
         "label": [lab for _, lab, _ in rs],
         "file_name": [f"{n}.png" for n, _, _ in rs],
         "idx": list(range(len(rs)))},
        features=features)


def write_hf_with_classes(out, recs, classes: dict[str, list[str]], *, form: str = "parquet") -> Path:
    """``recs`` as a Hugging Face dataset whose splits each declare their own ClassLabel names (``classes``: split ->
    names in index order). Every image keeps its class *name* (CLASS_NAMES[label]); its label is that name's index
    in its split's list, and images of a class the list lacks are left out. ``form``: "parquet"
    (``data/{split}-00000-of-00001.parquet``) or "disk" (``save_to_disk``)."""
    import datasets

    splits = {}
    for split, rs in recs.items():
        names = classes[split]
        features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
        kept = [(d, names.index(CLASS_NAMES[lab])) for _, lab, d in rs if CLASS_NAMES[lab] in names]
        splits[split] = datasets.Dataset.from_dict(
            {"image": [{"bytes": d, "path": None} for d, _ in kept], "label": [lab for _, lab in kept]},
            features=features)
    out = Path(out)
    if form == "disk":
        datasets.DatasetDict(splits).save_to_disk(str(out))
        return out
    (out / "data").mkdir(parents=True, exist_ok=True)
    for split, ds in splits.items():
        ds.to_parquet(str(out / "data" / f"{split}-00000-of-00001.parquet"))
    return out


def write_hf_disk(out, recs) -> Path:
    import datasets

    dd = datasets.DatasetDict({s: _hf_dataset(rs) for s, rs in recs.items()})
    dd.save_to_disk(str(out))
    return Path(out)


def write_hf_parquet(out, recs, shards: int = 4) -> Path:
    """Parquet shards named like a Hub repo (``data/train-00000-of-00004.parquet``)."""
    out = Path(out)
    (out / "data").mkdir(parents=True, exist_ok=True)
    for split, rs in recs.items():
        ds = _hf_dataset(rs)
        for i in range(shards):
            ds.shard(shards, i, contiguous=True).to_parquet(
                str(out / "data" / f"{split}-{i:05d}-of-{shards:05d}.parquet"))
    return out


def write_hf_card(out, recs) -> Path:
    """A Hub-style README.md dataset card whose YAML gives split sizes (what hfids needs without num_samples).

    datasets only keeps the card's ``splits`` when each entry has name, num_bytes and num_examples.
    """
    import yaml

    out = Path(out)
    card = {
        "dataset_info": {
            "features": [
                {"name": "image", "dtype": "image"},
                {"name": "label", "dtype": {"class_label": {"names": {str(i): n for i, n in enumerate(CLASS_NAMES)}}}},
                {"name": "file_name", "dtype": "string"},
                {"name": "idx", "dtype": "int64"},
            ],
            "splits": [{"name": s, "num_bytes": sum(len(d) for _, _, d in rs), "num_examples": len(rs)}
                       for s, rs in recs.items()],
        },
        "configs": [{"config_name": "default",
                     "data_files": [{"split": s, "path": f"data/{s}-*"} for s in recs]}],
    }
    (out / "README.md").write_text("---\n" + yaml.safe_dump(card, sort_keys=False) + "---\n# digits\n")
    return out


def write_wds(out, recs, shards: int = 5, prefix: str = "digits", limit: int | None = None,
              shuffle_seed: int | None = 0) -> Path:
    """WebDataset shards: per sample ``KEY.png`` + ``KEY.cls`` (ascii int) + ``KEY.json``, and timm's _info.json.

    _info.json is what timm's ReaderWds._parse_split_info reads: splits.<name>.{name, num_samples,
    filenames, shard_lengths} (alt_label optional). Extra top-level keys are ignored by timm, so the
    class names ride along as ``classes`` for the package to read. The json sidecar's ``idx`` is the
    sample's position in its split (``--target-key idx`` makes timm yield it, for order probes).
    ``limit`` keeps only the first ``limit`` samples of each split (e.g. 1280 = 8 equal shards of 160).
    Samples are shuffled across shards first (``shuffle_seed``; None keeps the folder's class-sorted order), as
    real WebDataset releases are (timm's ImageNet shards are pre-shuffled); ``idx`` is the position after that
    shuffle, so with equal shard lengths L the shard of a sample is idx // L.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    info = {"name": "digits", "classes": CLASS_NAMES, "num_classes": len(CLASS_NAMES), "splits": {}}
    for split, rs in recs.items():
        if shuffle_seed is not None:
            rs = [rs[i] for i in np.random.default_rng(shuffle_seed).permutation(len(rs))]
        rs = rs[:limit] if limit else rs
        parts = np.array_split(np.arange(len(rs)), shards)
        filenames, lengths = [], []
        for i, idx in enumerate(parts):
            fn = f"{prefix}-{split}-{i:04d}.tar"
            with tarfile.open(out / fn, "w", format=tarfile.USTAR_FORMAT) as tf:
                for j in idx:
                    name, label, data = rs[j]
                    key = f"{split}_{name}"  # one key per sample: KEY.png, KEY.cls, KEY.json
                    _add_bytes(tf, f"{key}.png", data)
                    _add_bytes(tf, f"{key}.cls", str(label).encode())
                    _add_bytes(tf, f"{key}.json", json.dumps(
                        {"label": label, "class_name": CLASS_NAMES[label], "filename": f"{name}.png", "idx": int(j)}).encode())
            filenames.append(fn)
            lengths.append(int(len(idx)))
        info["splits"][split] = {"name": split, "num_samples": int(sum(lengths)),
                                 "filenames": filenames, "shard_lengths": lengths}
    (out / "_info.json").write_text(json.dumps(info, indent=1))
    return out


def corrupt_wds_sample(wds_dir, shard: str, member_index: int = 0) -> str:
    """Rewrite ``shard`` with the ``member_index``-th .png truncated to 20 bytes; returns its key."""
    p = Path(wds_dir) / shard
    with tarfile.open(p) as tf:
        members = [(ti, tf.extractfile(ti).read()) for ti in tf.getmembers()]
    pngs = [i for i, (ti, _) in enumerate(members) if ti.name.endswith(".png")]
    target = pngs[member_index]
    with tarfile.open(p, "w", format=tarfile.USTAR_FORMAT) as tf:
        for i, (ti, data) in enumerate(members):
            _add_bytes(tf, ti.name, data[:20] if i == target else data)
    return members[target][0].name.rsplit(".", 1)[0]


def _idx(dims: tuple[int, ...], arr: np.ndarray) -> bytes:
    # http://yann.lecun.com/exdb/mnist/ : magic = 0x00 0x00 dtype(0x08 = ubyte) ndim, then big-endian dims
    return bytes([0, 0, 0x08, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims) + arr.astype(
        np.uint8).tobytes()


def write_mnist_raw(out, recs, cls: str = "MNIST") -> Path:
    """torchvision MNIST raw layout: ``out/<cls>/raw/{train,t10k}-images-idx3-ubyte`` + labels (no .gz)."""
    raw = Path(out) / cls / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for split, prefix in (("train", "train"), ("validation", "t10k")):
        rs = recs[split]
        imgs = np.stack([np.asarray(Image.open(io.BytesIO(d))) for _, _, d in rs])
        labels = np.array([lab for _, lab, _ in rs])
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(_idx(imgs.shape, imgs))
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(_idx(labels.shape, labels))
    return Path(out)


def fake_hub_cache(cache_dir: str | os.PathLike, repo_id: str, parquet_dir: str | os.PathLike) -> Path:
    """What a first online ``load_dataset(repo_id, cache_dir=cache_dir)`` leaves in the datasets cache, made offline
    from local parquet files: ``cache_dir/<ns>___<name>/default/0.0.0/<hash>/`` with dataset_info.json and one
    arrow file per split (the layout datasets looks up when the Hub cannot be reached)."""
    import glob
    import shutil
    import tempfile

    import datasets

    tmp = tempfile.mkdtemp()
    try:
        files = {s: sorted(glob.glob(f"{parquet_dir}/data/{s}-*.parquet")) for s in SPLITS}
        datasets.load_dataset("parquet", data_files=files, cache_dir=tmp)
        (prepared,) = glob.glob(f"{tmp}/parquet/*/*/*/dataset_info.json")
        src_dir = os.path.dirname(prepared)
        ns, name = repo_id.split("/")
        dst = Path(cache_dir) / f"{ns}___{name}" / "default" / "0.0.0" / os.path.basename(src_dir)
        shutil.copytree(src_dir, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    info = json.loads((dst / "dataset_info.json").read_text())
    info.update(config_name="default", dataset_name=name)
    (dst / "dataset_info.json").write_text(json.dumps(info))
    for f in dst.glob("parquet-*.arrow"):  # arrow files are named <dataset_name>-<split>.arrow
        f.rename(dst / f.name.replace("parquet-", f"{name}-"))
    return dst


def write_sources(root: str | os.PathLike, folder: str | os.PathLike, per_class: int, *,
                  wds_shards: int = 8) -> dict[str, Path]:
    """Every source from ``folder``'s images, at most ``per_class`` per class and split, under ``root``:
    ``tar``, ``hf_parquet`` (4 shards per split, with a card), ``hf_disk``, ``wds`` (``wds_shards`` shards per
    split; equal when the split divides), ``mnist`` (torchvision's raw files), and the reference ``folder``
    (the same images as an image folder)."""
    root = Path(root)
    recs = records(folder, per_class)
    ref = root / "folder"
    for split, rs in recs.items():
        for name, label, data in rs:
            (ref / split / CLASS_NAMES[label]).mkdir(parents=True, exist_ok=True)
            (ref / split / CLASS_NAMES[label] / f"{name}.png").write_bytes(data)
    paths = {"folder": ref, "tar": write_image_tar(root / "tar", recs),
             "hf_parquet": write_hf_card(write_hf_parquet(root / "hf_parquet", recs), recs),
             "hf_disk": write_hf_disk(root / "hf_disk", recs),
             "wds": write_wds(root / "wds", recs, shards=wds_shards),
             "mnist": write_mnist_raw(root / "mnist", recs)}
    return paths
