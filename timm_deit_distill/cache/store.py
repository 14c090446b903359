"""A teacher target cache on disk: what a row stores (:class:`CacheStore`), the manifest, the per-epoch
safetensors chunks and their sidecars, and the per-row sample check."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from ..atomic import atomic_path, sha256_file
from ..errors import CacheError

__all__ = ["CacheStore", "STORE_KINDS", "TOPK_FILL", "FORMAT", "FORMAT_VERSION", "MANIFEST", "canonical_json", "write_json",
           "chunk_name", "write_chunk", "chunk_metadata", "read_chunk_info", "memmap_chunk", "load_manifest",
           "sample_check"]

FORMAT = "timm-deit-distill/teacher-target-cache"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
# Logit given to classes a top-k row does not store: finite (no inf - inf = nan in a softmax or a KL
# term) and low enough that exp() of it is exactly 0 beside any real logit at any sane temperature.
TOPK_FILL = -1.0e4

# safetensors' dtype names -> numpy's (the stores' arrays only)
_DTYPES = {"U8": np.uint8, "I16": np.int16, "I32": np.int32, "I64": np.int64, "F16": np.float16,
           "F32": np.float32}
_METADATA_KEY = "timm_deit_distill_cache"


# --------------------------------------------------------------------------------------------------
# What is stored


#: The kinds of store ``--store`` names (``hard``, ``topk:K``, ``full[:fp16]``): the teacher's argmax, its K largest
#: logits, every logit.
STORE_KINDS = ("hard", "topk", "full")


@dataclass(frozen=True)
class CacheStore:
    """Parsed ``--store`` value: ``hard``, ``topk:K``, ``full`` or ``full:fp16``."""

    kind: str
    k: int = 0
    dtype: str = "float32"

    @classmethod
    def parse(cls, spec: str) -> CacheStore:
        spec = str(spec).strip().lower()
        if spec == "hard":
            return cls("hard")
        if spec in ("full", "full:fp32"):
            return cls("full", dtype="float32")
        if spec == "full:fp16":
            return cls("full", dtype="float16")
        if spec.startswith("topk:"):
            try:
                k = int(spec[5:])
            except ValueError:
                k = 0
            if k >= 1:
                return cls("topk", k=k, dtype="float16")
        raise CacheError(f"--store {spec!r} is not a store; use hard, topk:K (e.g. topk:5), full or full:fp16.")

    @property
    def holds_logits(self) -> bool:
        """Whether the store keeps logits (what soft distillation needs), not only the teacher's argmax."""
        return self.kind != "hard"

    @property
    def spec(self) -> str:
        if self.kind == "topk":
            return f"topk:{self.k}"
        return "full:fp16" if self.kind == "full" and self.dtype == "float16" else self.kind

    def bytes_per_view(self, num_classes: int) -> int:
        """Bytes one view takes on disk (targets plus the one-byte sample-index check)."""
        cls_bytes = 2 if num_classes <= np.iinfo(np.int16).max else 4
        if self.kind == "hard":
            target = cls_bytes
        elif self.kind == "topk":
            target = self.k * (2 + cls_bytes)
        else:
            target = num_classes * (2 if self.dtype == "float16" else 4)
        return target + 1

    def encode(self, logits: torch.Tensor) -> dict[str, np.ndarray]:
        """Arrays to store for teacher logits ``(B, C)`` float."""
        num_classes = logits.shape[1]
        index_dtype = np.int16 if num_classes <= np.iinfo(np.int16).max else np.int32
        if self.kind == "hard":
            return {"hard": logits.argmax(dim=1).numpy().astype(index_dtype)}
        if self.kind == "topk":
            k = min(self.k, num_classes)
            values, indices = logits.float().topk(k, dim=1)
            return {"topk_values": values.numpy().astype(np.float16),
                    "topk_indices": indices.numpy().astype(index_dtype)}
        return {"logits": logits.float().numpy().astype(self.dtype)}

    def decode(self, arrays: dict[str, np.ndarray], num_classes: int) -> torch.Tensor:
        """Targets from stored rows: int64 ``(B,)`` for hard, float32 logits ``(B, C)`` otherwise."""
        if self.kind == "hard":
            return torch.from_numpy(arrays["hard"].astype(np.int64))
        if self.kind == "topk":
            values = torch.from_numpy(arrays["topk_values"].astype(np.float32))
            indices = torch.from_numpy(arrays["topk_indices"].astype(np.int64))
            out = torch.full((len(values), num_classes), TOPK_FILL, dtype=torch.float32)
            return out.scatter_(1, indices, values)
        return torch.from_numpy(arrays["logits"].astype(np.float32))


# --------------------------------------------------------------------------------------------------
# Files


def canonical_json(obj: Any) -> str:
    """``obj`` as JSON with sorted keys and no spaces: one text per value (what fingerprints hash)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write a manifest or sidecar atomically."""
    text = json.dumps(data, indent=1, sort_keys=True) + "\n"
    with atomic_path(path, size=len(text.encode("utf-8"))) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)


def chunk_name(epoch: int) -> str:
    return f"epoch-{epoch:04d}.safetensors"


def write_chunk(path: Path, arrays: dict[str, np.ndarray], metadata: dict[str, str]) -> str:
    """Write one epoch's arrays atomically; returns the file's sha256."""
    from safetensors.numpy import save_file

    size = sum(v.nbytes for v in arrays.values())  # about the file's size: the header is small
    with atomic_path(path, size=size) as tmp:
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, tmp, metadata=metadata)
    return sha256_file(path)


def chunk_metadata(fid: str, epoch: int) -> dict[str, str]:
    """The safetensors metadata of a chunk: which cache (fingerprint id) and which epoch it holds."""
    # One key: safetensors writes metadata from a hash map, so several keys come out in varying order and
    # equal chunks would get different bytes (and sha256s).
    return {_METADATA_KEY: canonical_json({"format": FORMAT, "fingerprint_sha256": fid, "epoch": epoch})}


def read_chunk_info(path: Path) -> tuple[dict[str, Any], int]:
    """A chunk's cache metadata (:func:`chunk_metadata`'s, parsed; ``{}`` if it has none) and its row count,
    read by safetensors, which also checks the file is whole; :class:`CacheError` when it is not readable."""
    try:
        with safe_open(str(path), framework="np") as f:
            metadata, names = f.metadata() or {}, f.keys()
            rows = int(f.get_slice("sample_check").get_shape()[0]) if "sample_check" in names else 0
    except (SafetensorError, OSError) as e:
        raise CacheError(f"{path} is not a readable safetensors file ({e}); fix: rebuild that epoch.") from None
    try:
        info = json.loads(metadata.get(_METADATA_KEY, "{}"))
    except json.JSONDecodeError:
        info = {}
    return (info if isinstance(info, dict) else {}), rows


def memmap_chunk(path: Path) -> dict[str, np.ndarray]:
    """A chunk's arrays as read-only memory maps: the rows a batch asks for are read on demand, in any order.

    safetensors has no public zero-copy way to gather scattered rows: ``safe_open(...).get_slice(name)[a:b]``
    copies the whole span from a batch's first row to its last, and one rank's rows of a batch span
    world-size times the batch. Measured (a full:fp16 store of 1000 classes, batches of 128): 0.03-0.12 ms
    per batch through the map at 1, 8 and 64 processes, against 0.05, 0.7 and 10 ms through get_slice. So
    the data offsets are read from the header (an 8-byte little-endian length, then JSON: the format's
    specification), the one place the package reads a safetensors header itself.
    """
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    header.pop("__metadata__", None)
    arrays = {}
    for name, info in header.items():
        dtype = np.dtype(_DTYPES[info["dtype"]]).newbyteorder("<")
        begin, end = info["data_offsets"]
        count = (end - begin) // dtype.itemsize
        arr = np.memmap(path, dtype=dtype, mode="r", offset=8 + length + begin, shape=(count,)) if count else \
            np.zeros(0, dtype)
        arrays[name] = arr.reshape(info["shape"])
    return arrays


def load_manifest(path: Path) -> dict[str, Any]:
    """The manifest at ``path``, refused unless it is this format's and version's."""
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:  # ValueError: JSONDecodeError, and UnicodeDecodeError for binary bytes
        # Without its manifest a cache cannot be verified or resumed, and a build into the folder is refused by
        # this same check: say to clear the folder, not to "rebuild" (which would hit this line again).
        raise CacheError(f"cannot read the cache manifest {path} ({type(e).__name__}: {e}); a cache is unusable "
                         f"without it. fix: move or delete {path.parent} and build the cache again into it with "
                         "`deit-distill cache build ... --out`.") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CacheError(f"{path} is not a teacher target cache manifest; fix: point at a directory written by "
                         "`deit-distill cache build`.")
    if manifest.get("version") != FORMAT_VERSION:
        raise CacheError(f"{path} has cache format version {manifest.get('version')}, this package reads "
                         f"{FORMAT_VERSION}; fix: rebuild the cache with this version.")
    problem = _manifest_problem(manifest)
    if problem is not None:
        raise CacheError(f"the cache manifest {path} is damaged ({problem}); a cache is unusable without it. fix: move "
                         f"or delete {path.parent} and build the cache again into it with `deit-distill cache build "
                         "... --out`.")
    return manifest


# The fields every reader of a manifest relies on, and their JSON types (bool is no int here).
_MANIFEST_FIELDS = {"store": str, "num_classes": int, "rows_per_epoch": int, "bytes_per_view": int, "epochs": int,
                    "complete": bool, "fingerprint": dict, "fingerprint_sha256": str, "chunks": list}
_CHUNK_FIELDS = {"epoch": int, "file": str, "sha256": str, "rows": int, "bytes": int}


def _is(value: Any, kind: type) -> bool:
    return isinstance(value, kind) and not (kind is int and isinstance(value, bool))


def _manifest_problem(manifest: dict[str, Any]) -> str | None:
    """What makes a parsed manifest unusable (a field missing or of another type, a chunk that names a file
    other than its epoch's), or None."""
    for key, kind in _MANIFEST_FIELDS.items():
        if key not in manifest:
            return f"no {key!r}"
        if not _is(manifest[key], kind):
            return f"{key!r} is {type(manifest[key]).__name__}, not {kind.__name__}"
    for i, chunk in enumerate(manifest["chunks"]):
        problem = chunk_record_problem(chunk)
        if problem is not None:
            return f"chunks[{i}]{problem}"
    return None


def chunk_record_problem(chunk: Any, epoch: int | None = None) -> str | None:
    """What makes a chunk record (a manifest entry or a chunk's sidecar) unusable, as a suffix to its name
    (``" is str, not an object"``, ``".bytes is missing or not int"``), or None. ``epoch``: the one it must be."""
    if not isinstance(chunk, dict):
        return f" is {type(chunk).__name__}, not an object"
    for key, kind in _CHUNK_FIELDS.items():
        if not _is(chunk.get(key), kind):
            return f".{key} is missing or not {kind.__name__}"
    if epoch is not None and chunk["epoch"] != epoch:
        return f".epoch is {chunk['epoch']}, not {epoch}"
    # a chunk is its epoch's file in the cache folder, never a path elsewhere
    if chunk["file"] != chunk_name(chunk["epoch"]):
        return f".file is {chunk['file']!r}, not {chunk_name(chunk['epoch'])!r}"
    return None


def sample_check(sample_index: np.ndarray) -> np.ndarray:
    """One byte per row from each row's sample index (Knuth's multiplicative hash, top byte).

    A row computed for another image fails the check with probability 255/256, so a misordered batch
    of B rows slips through with probability 256**-B, for a sixth of the cost of storing the index.
    """
    h = (np.asarray(sample_index, dtype=np.uint64) * np.uint64(2654435761)) & np.uint64(0xFFFFFFFF)
    return (h >> np.uint64(24)).astype(np.uint8)
