"""Training checkpoints in timm's CheckpointSaver format, written atomically, resumable exactly.

Each file holds timm's keys (``epoch``, ``arch``, ``state_dict``, ``optimizer``, ``version``, ``args``,
``metric``, ``state_dict_ema``, ``amp_scaler``, ``saver``), so timm's ``load_checkpoint`` and
``resume_checkpoint`` read it, plus:

* ``deit_distill``: plain-JSON metadata to rebuild and describe the student (model, model_kwargs,
  pretrained_cfg, label_names, distill settings, recipe, ema) and to check a resume against the run
  (seed, data: the training set's fingerprint, world_size, resumed: the settings each resume changed);
* ``scheduler``, ``num_updates``, ``rng`` (every rank's Python/NumPy/torch/CUDA generator states) and
  ``summary`` (the per-epoch rows so far): what ``--resume`` needs to continue bit for bit;
* ``deit_distill_digest``: the sha256 of the tensors of each entry that holds any (``state_dict``,
  ``state_dict_ema``, ``optimizer``, ``rng``, ...), checked by :func:`read_checkpoint` on every read: torch.load
  does not check the zip's CRC32 of a tensor's record, so a flipped bit would load as a slightly different weight.

The student only: the teacher is never saved.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import pickle
import random
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from timm.models import clean_state_dict
from timm.utils import CheckpointSaver as TimmCheckpointSaver
from timm.utils.model import get_state_dict, unwrap_model

from .atomic import atomic_link_or_copy, atomic_path, disk_full
from .errors import CheckpointError, DiskFullError

__all__ = [
    "CheckpointSaver", "load_training_checkpoint", "rng_state", "set_rng_state", "ResumeState", "resume",
    "checkpoint_epoch", "compare_resume", "ResumeComparison", "create_model_from_checkpoint",
    "model_from_checkpoint", "CheckpointError", "read_checkpoint", "check_checkpoint_file", "select_weights",
    "RAW_KEYS", "EMA_KEYS", "scheduler_state", "load_scheduler_state", "DIGEST_KEY", "tensor_digests",
]

_logger = logging.getLogger(__name__)


# --- reading any checkpoint file -----------------------------------------------------------------------------
# One reader for every file a user hands this package (trainer checkpoints, teachers, --initial-checkpoint,
# --pretrained-path, eval, push): the file is looked at first, so a damaged one is described by what it is
# (truncated, empty, text, ...) instead of by whatever the unpickler happened to trip over.

_ZIP_MAGIC = b"PK\x03\x04"
_LEGACY_START = pickle.dumps(torch.serialization.MAGIC_NUMBER, protocol=2)  # torch.save's default protocol
_CHECKPOINT_SUFFIXES = (".pth.tar", ".pth", ".pt", ".bin", ".ckpt", ".safetensors")
_AGAIN = "copy or download it again, or pass another checkpoint"
_RESAVE = ("load it in code you trust and re-save the weights as a plain state dict "
           "(torch.save(model.state_dict(), PATH)) or as .safetensors")
# Bytes per element of the storage types a legacy (non-zip) torch file names in its pickle.
_ELEMENT_SIZES = {
    "DoubleStorage": 8, "FloatStorage": 4, "HalfStorage": 2, "BFloat16Storage": 2, "LongStorage": 8,
    "IntStorage": 4, "ShortStorage": 2, "CharStorage": 1, "ByteStorage": 1, "BoolStorage": 1,
    "ComplexDoubleStorage": 16, "ComplexFloatStorage": 8, "QUInt8Storage": 1, "QInt8Storage": 1,
    "QInt32Storage": 4, "QUInt4x2Storage": 1, "QUInt2x4Storage": 1,
}


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n:,} bytes ({n / scale:.1f} {unit})"
    return f"{n:,} bytes"


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200]}" if text else type(error).__name__


def _checkpoints_in(folder: Path) -> str:
    """'a.pth.tar, b.pth' (the checkpoint files in a folder), to point at the file that was probably meant."""
    import itertools

    try:  # a bounded look: the folder may be a dataset's, with a million files
        with os.scandir(folder) as entries:
            names = sorted(e.name for e in itertools.islice(entries, 10_000)
                           if e.name.endswith(_CHECKPOINT_SUFFIXES) and e.is_file())
    except OSError:
        return ""
    if not names:
        return "no .pth.tar, .pth or .safetensors file"
    return f"{', '.join(names[:4])}{', ...' if len(names) > 4 else ''}"


def _as_text(head: bytes) -> str | None:
    """The start of the file as text, when it is text (printable UTF-8, no NUL bytes)."""
    if b"\x00" in head:
        return None
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 3:  # not just a character cut in two by the end of `head`
            return None
        text = head[:e.start].decode("utf-8")
    return text if all(c.isprintable() or c in "\t\r\n" for c in text) else None


def _what_it_is(head: bytes) -> str:
    """What a file that is not a checkpoint looks like, from its first bytes."""
    text = _as_text(head)
    if text is not None:
        start = text.lstrip().lower()
        if start.startswith(("<!doctype html", "<html")):
            return "it is an HTML page (a download that returned a web page instead of the file)"
        if start.startswith("version https://git-lfs"):
            return "it is a Git LFS pointer, not the file it points to (fetch it with `git lfs pull`)"
        first = text.strip().splitlines()[0][:40] if text.strip() else text[:40]
        return f"it is a text file starting with {first!r}"
    if head.startswith(b"\x1f\x8b"):
        return "it is gzip-compressed (decompress it first)"
    if head[257:262] == b"ustar":
        return "it is a tar archive (extract the checkpoint from it first)"
    return f"it starts with the bytes {head[:8].hex(' ')}, which no torch or safetensors file does"


class _Anything:
    """Stands in for every object a legacy file's pickle would build: nothing is imported or run."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> _Anything:
        return _Anything()

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def append(self, value: Any) -> None:
        pass

    def extend(self, values: Any) -> None:
        pass


class _StorageType:
    def __init__(self, name: str) -> None:
        self.name = name


class _LegacyScan(pickle.Unpickler):
    """Reads the pickles of a legacy torch file to learn its layout, without importing or running anything."""

    def __init__(self, file: Any) -> None:
        super().__init__(file)
        self.storages: dict[str, tuple[int | None, int]] = {}  # key -> (bytes per element, elements)

    def find_class(self, module: str, name: str) -> Any:
        return _StorageType(name) if module == "torch" and name.endswith("Storage") else _Anything

    def persistent_load(self, pid: Any) -> Any:
        # torch's legacy format: ('storage', storage type, key, location, number of elements, view)
        if isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage":
            kind = getattr(pid[1], "name", None)
            self.storages[str(pid[2])] = (_ELEMENT_SIZES.get(kind), int(pid[4]))
        return _Anything()


def _is_legacy_torch(head: bytes) -> bool:
    """A legacy (pre-1.6, non-zip) torch file starts with a pickle of torch's magic number."""
    import io

    if len(head) < len(_LEGACY_START) and _LEGACY_START.startswith(head):
        return True  # cut short within the magic number itself
    try:
        return _LegacyScan(io.BytesIO(head)).load() == torch.serialization.MAGIC_NUMBER
    except Exception:  # noqa: BLE001 - any other pickle: not torch's
        return False


def _check_zip(path: Path, where: str, size: int) -> None:
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except zipfile.BadZipFile:
        # A torch file is a zip archive whose directory is written last: without it the file was cut short.
        raise CheckpointError(
            f"{where} is truncated: it starts as a torch checkpoint (a zip archive) but its end, the zip "
            f"directory, is missing after {_size(size)}, as an interrupted save, copy or download leaves it; "
            f"{_AGAIN}.") from None
    if any(n.endswith("/data.pkl") and n.count("/") == 1 for n in names):
        unsafe = _unsafe_globals_in_zip(path)
        if unsafe:
            raise _unsafe(where, unsafe)
        return
    if any(n.endswith("/constants.pkl") for n in names):
        raise CheckpointError(f"{where} is a TorchScript archive (torch.jit.save), not a checkpoint; save the "
                              "weights with torch.save(model.state_dict(), PATH) and pass that file.")
    inner = [n for n in names if n.endswith(_CHECKPOINT_SUFFIXES)]
    if inner:
        raise CheckpointError(f"{where} is a zip archive holding {inner[0]}; unzip it and pass that file.")
    if names and all(n.endswith(".npy") for n in names):
        raise CheckpointError(f"{where} is a NumPy .npz archive, not a torch checkpoint; pass a file written by "
                              "torch.save or safetensors.")
    listing = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "") if names else "nothing"
    raise CheckpointError(f"{where} is a zip archive but not a torch checkpoint (it holds {listing}); pass the "
                          "file torch.save or safetensors wrote.")


def _unsafe_globals_in_zip(path: Path) -> list[str]:
    """The globals outside torch's weights_only allowlist (and the Namespace timm saves), read from data.pkl."""
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:  # noqa: BLE001 - the load itself will report what is wrong
        return []
    return [name for name in found if name != "argparse.Namespace"]


def _unsafe(where: str, names: list[str]) -> CheckpointError:
    shown = ", ".join(f"GLOBAL {n}" for n in names[:3]) + (", ..." if len(names) > 3 else "")
    return CheckpointError(f"{where} holds Python objects that are unsafe to unpickle ({shown}); checkpoints are "
                           f"read with torch.load(weights_only=True) only: {_RESAVE}.")


def _safetensors_header_size(head: bytes) -> int | None:
    """The header length a safetensors file starts with, when ``head`` is the start of one."""
    if len(head) < 9 or head[8:9] != b"{":
        return None
    n = int.from_bytes(head[:8], "little")
    return n if 2 <= n <= 100_000_000 else None  # safetensors' own header limit is 100 MB


def _check_safetensors(path: Path, where: str, size: int, header_size: int) -> None:
    import json

    if 8 + header_size > size:
        raise CheckpointError(f"{where} is truncated: a safetensors file of {_size(size)} whose header alone "
                              f"needs {8 + header_size:,} bytes, as an interrupted save, copy or download leaves "
                              f"it; {_AGAIN}.")
    with open(path, "rb") as f:
        f.seek(8)
        header = f.read(header_size)
    try:
        entries = json.loads(header)
        end = max((int(v["data_offsets"][1]) for k, v in entries.items() if k != "__metadata__"), default=0)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        raise CheckpointError(f"{where} is a damaged safetensors file: its header is not valid; {_AGAIN}.") from None
    expected = 8 + header_size + end
    if size < expected:
        raise CheckpointError(f"{where} is truncated: a safetensors file of {_size(size)} whose header announces "
                              f"{_size(expected)}, as an interrupted save, copy or download leaves it; {_AGAIN}.")


def _check_legacy(path: Path, where: str, size: int) -> None:
    """A legacy torch file: five pickles (magic, version, system info, the object, storage keys), then each
    storage's element count and bytes. Checks that the pickles are complete and the data they announce is there."""
    with open(path, "rb") as f:
        scan = _LegacyScan(f)
        try:
            for _ in range(4):
                scan.load()
            keys = scan.load()
            data_start = f.tell()
        except Exception as e:  # noqa: BLE001 - a damaged pickle: any error the pickle machine raises
            # The pickle machine says EOFError, or UnpicklingError 'pickle data was truncated', at the end.
            if isinstance(e, EOFError) or "truncated" in str(e):
                raise _legacy_truncated(where, size, "that ends inside its pickled header") from None
            raise CheckpointError(f"{where} is damaged: a legacy-format (non-zip) torch file of {_size(size)} "
                                  f"whose pickled header cannot be read; {_AGAIN}.") from None
    if not isinstance(keys, list):
        return  # not the layout described above; torch.load will judge
    sizes = [scan.storages.get(str(k), (None, 0)) for k in keys]
    if any(element is None for element, _ in sizes):
        return  # a storage type this check does not know; torch.load will judge
    expected = data_start + sum(8 + element * count for element, count in sizes)  # type: ignore[operator]
    if size < expected:
        raise _legacy_truncated(where, size, f"whose tensor data needs {_size(expected)}")


def _legacy_truncated(where: str, size: int, how: str) -> CheckpointError:
    return CheckpointError(f"{where} is truncated: a legacy-format (non-zip) torch file of {_size(size)} {how}, "
                           f"as an interrupted save, copy or download leaves it; {_AGAIN}.")


def check_checkpoint_file(path: str | os.PathLike[str], *, what: str = "checkpoint") -> str:
    """Look at a checkpoint file without loading its tensors; return its format or raise :class:`CheckpointError`.

    Returns ``'torch'`` (torch.save's zip format), ``'torch-legacy'`` (the pre-1.6 format) or ``'safetensors'``
    (recognised by its content, whatever the file's suffix). Refuses, naming the file (prefixed by ``what``,
    e.g. ``'--resume'``), what is wrong and the fix: a missing path or a folder; an empty file; a torch file cut
    short (a zip without its directory, a legacy file whose data ends early), a truncated safetensors file;
    a zip or pickle that is not a torch file; text, HTML and anything else that is no checkpoint; a torch
    file that names globals ``torch.load(weights_only=True)`` refuses. Cheap: it reads headers only.
    """
    path = Path(path)
    where = f"{what} {path}"
    if not path.exists():
        if path.is_symlink():
            detail = " (a broken symbolic link)"
        else:
            holds = _checkpoints_in(path.parent) if path.parent.is_dir() else ""
            detail = f" (its folder holds {holds})" if holds else ""
        raise CheckpointError(f"{where} does not exist{detail}; pass the path of a checkpoint file.")
    if path.is_dir():
        raise CheckpointError(f"{where} is a folder, not a checkpoint file (it holds {_checkpoints_in(path)}); "
                              "pass a file in it.")
    if not path.is_file():
        raise CheckpointError(f"{where} is not a regular file; pass the path of a checkpoint file.")
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError as e:
        raise CheckpointError(f"{where} cannot be read ({e.strerror}); fix its permissions or pass another "
                              "file.") from None
    if size == 0:
        raise CheckpointError(f"{where} is empty (0 bytes), as an interrupted save, copy or download leaves it; "
                              f"{_AGAIN}.")
    if head.startswith(_ZIP_MAGIC):
        _check_zip(path, where, size)
        return "torch"
    header_size = _safetensors_header_size(head)
    if header_size is not None:
        _check_safetensors(path, where, size, header_size)
        return "safetensors"
    if head.startswith(b"\x80"):  # a pickle's PROTO opcode
        if _is_legacy_torch(head):
            _check_legacy(path, where, size)
            return "torch-legacy"
        raise CheckpointError(f"{where} is a Python pickle, not a file written by torch.save or safetensors; "
                              f"{_RESAVE}.")
    raise CheckpointError(f"{where} is not a checkpoint: {_what_it_is(head)}; pass the .pth.tar, .pth or "
                          ".safetensors file itself.")


def _zip_damage(path: Path) -> str:
    """The first entry of a complete torch zip whose bytes fail their checksum, described."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except Exception as e:  # noqa: BLE001
        return f"its zip archive cannot be read ({_first_line(e)})"
    return f"its entry {bad} fails its checksum" if bad else "torch cannot read its contents"


# --- verifying what was read ---------------------------------------------------------------------------------
# torch.load checks no CRC32 of a torch zip's records: a bit flipped in a tensor's bytes loads as another weight
# (0.03426 read as 0.03420), silently. The package's own checkpoints carry a sha256 of their tensors (DIGEST_KEY),
# checked on every read and naming the entry that changed; the zip's CRC32s cover the rest of the file (the
# pickle with the epoch, settings and metadata: a few kB, checked before loading) and, in files without a digest
# (timm's, DeiT's, earlier ones of this package), the tensors too. Measured costs: docs/training.md.

#: The top-level key under which a checkpoint written by this package records the sha256 of its tensors.
DIGEST_KEY = "deit_distill_digest"
_TENSOR_RECORD = re.compile(r"^[^/]*/data/[^/]+$")  # a torch zip's tensor records: ARCHIVE/data/KEY
_ENTRY_NAMES = {"state_dict": "the raw weights", "state_dict_ema": "the EMA weights", "model": "the raw weights",
                "model_ema": "the EMA weights", "optimizer": "the optimizer state", "rng": "the RNG states"}


def _tensors_in(value: Any, where: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor in ``value`` (nested dicts, lists, tuples) with its place, in the order they are stored."""
    if isinstance(value, torch.Tensor):
        yield where, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _tensors_in(item, f"{where}/{key}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _tensors_in(item, f"{where}/{i}")


def _tensor_line(where: str, tensor: torch.Tensor) -> bytes:
    """One tensor's place, dtype, shape and the sha256 of its bytes (whatever the dtype: bf16 has no numpy)."""
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    digest = hashlib.sha256(memoryview(flat.view(torch.uint8).numpy())).hexdigest()
    return f"{where}|{tensor.dtype}|{tuple(tensor.shape)}|{digest}\n".encode()


def _digests(entries: Mapping[str, Any]) -> dict[str, str]:
    """The sha256 of each entry's tensor lines, in the order they are stored; entries without tensors left out.
    The tensors are hashed in threads: hashlib releases the GIL, so idle cores share the work (sha256 runs at
    about 1 GB/s per core, close to what torch.load reads)."""
    from concurrent.futures import ThreadPoolExecutor

    jobs = [(str(key), where, tensor) for key, value in entries.items() for where, tensor in _tensors_in(value)]
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        lines = list(pool.map(lambda job: _tensor_line(job[1], job[2]), jobs))
    hashes: dict[str, Any] = {}
    for (key, _, _), line in zip(jobs, lines, strict=True):
        hashes.setdefault(key, hashlib.sha256()).update(line)
    return {key: h.hexdigest() for key, h in hashes.items()}


def tensor_digests(state: Mapping[str, Any]) -> dict[str, str]:
    """The sha256 of the tensors of each entry of ``state`` that holds any (:data:`DIGEST_KEY` left out): what
    the checkpoint saver records and :func:`read_checkpoint` checks."""
    return _digests({key: value for key, value in state.items() if key != DIGEST_KEY})


def _zip_crc_failure(path: Path, *, tensors: bool) -> str | None:
    """The first record of a torch zip whose bytes fail their CRC32 (``tensors``: the tensor records, else the
    others: the pickle and the format's small records), or None."""
    import zipfile
    import zlib

    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if bool(_TENSOR_RECORD.match(info.filename)) != tensors:
                continue
            try:
                with archive.open(info) as f:
                    while f.read(1 << 22):  # zipfile checks the CRC32 when the record's last byte is read
                        pass
            except (zipfile.BadZipFile, EOFError, zlib.error):  # a bad CRC32, or a record's header damaged
                return info.filename
    return None


def _crc_refusal(where: str, record: str) -> CheckpointError:
    return CheckpointError(f"{where} is damaged: its record {record} fails its CRC32 checksum (bytes changed on disk "
                           f"or in a copy); {_AGAIN}.")


def _verify_digests(checkpoint: Mapping[str, Any], where: str) -> bool:
    """Check the tensors of every entry ``checkpoint`` records a digest for; False when it records none."""
    recorded = checkpoint.get(DIGEST_KEY)
    if recorded is None:
        return False
    sha256 = recorded.get("sha256") if isinstance(recorded, Mapping) else None
    if not isinstance(sha256, Mapping):
        raise CheckpointError(f"{where} is damaged: its '{DIGEST_KEY}' entry is not the record this package writes; "
                              f"{_AGAIN}.")
    found = _digests({key: checkpoint.get(key) for key in sha256})
    for key, expected in sha256.items():
        if found.get(key) == expected:
            continue
        what = f"'{key}' ({_ENTRY_NAMES[key]})" if key in _ENTRY_NAMES else f"'{key}'"
        raise CheckpointError(
            f"{where} is damaged: the tensors of its {what} do not match the sha256 recorded when deit-distill wrote "
            "it (bytes changed on disk or in a copy); fix: use an earlier checkpoint of the run (checkpoint-N.pth.tar "
            "or model_best.pth.tar) or copy the file again (a file changed on purpose: delete its "
            f"'{DIGEST_KEY}' entry).")
    return True


def _verify(checkpoint: dict[str, Any], path: Path, where: str, kind: str) -> None:
    """Check a loaded checkpoint's tensors: against its digest, else (a torch zip) against the zip's CRC32s."""
    if _verify_digests(checkpoint, where):
        return
    if kind == "torch":
        record = _zip_crc_failure(path, tensors=True)
        if record is not None:
            raise _crc_refusal(where, record)
        _logger.debug("%s records no tensor digest (not written by deit-distill): its tensors were checked "
                      "against the zip's CRC32s only.", where)
    else:
        _logger.debug("%s records no tensor digest (not written by deit-distill) and a %s file has no checksums: "
                      "its tensors are not verified.", where, kind)


def read_checkpoint(path: str | os.PathLike[str], *, what: str = "checkpoint") -> dict[str, Any]:
    """Read a checkpoint file: the one reader behind every file this package loads.

    Torch files are read with ``torch.load(weights_only=True)``, allowing only the ``argparse.Namespace``
    that timm's and DeiT's training scripts store; safetensors files (recognised by content) with safetensors,
    giving a plain state dict. Anything else raises :class:`CheckpointError` with one line saying what is
    wrong with the file (see :func:`check_checkpoint_file`) and the fix; ``what`` names the file's role
    in it (``'teacher checkpoint'``, ``'--resume'``, ...). What was read is verified: the tensors of a file this
    package wrote against the sha256 it recorded (:data:`DIGEST_KEY`), the rest of a torch zip (and the tensors of
    one without a digest) against the zip's CRC32s; a mismatch is a :class:`CheckpointError` naming the entry.
    """
    kind = check_checkpoint_file(path, what=what)
    where = f"{what} {Path(path)}"
    if kind == "safetensors":
        import safetensors.torch

        try:
            return safetensors.torch.load_file(str(path), device="cpu")
        except Exception as e:  # noqa: BLE001 - safetensors raises its own SafetensorError
            raise CheckpointError(f"{where} is a damaged safetensors file ({_first_line(e)}); {_AGAIN}.") from None
    if kind == "torch":
        record = _zip_crc_failure(Path(path), tensors=False)  # the pickle, before the unpickler reads it
        if record is not None:
            raise _crc_refusal(where, record)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # Only here, where the unpickler really met a global it refuses, is the file called unsafe.
        found = re.findall(r"GLOBAL ([\w.]+)", str(e))
        if found:
            raise _unsafe(where, list(dict.fromkeys(found))) from None
        raise CheckpointError(f"{where} cannot be unpickled with torch.load(weights_only=True) ({_first_line(e)}): "
                              f"it is damaged or holds more than tensors and plain values; {_RESAVE}.") from None
    except Exception as e:  # noqa: BLE001 - the file passed the checks above: its contents are damaged
        damage = _zip_damage(Path(path)) if kind == "torch" else f"torch cannot read it ({_first_line(e)})"
        raise CheckpointError(f"{where} is damaged: {damage}; {_AGAIN}.") from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{where} holds a {type(checkpoint).__name__}, not a checkpoint or a state dict; "
                              "save a dict, e.g. torch.save(model.state_dict(), PATH).")
    _verify(checkpoint, Path(path), where, kind)
    return checkpoint


def load_training_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """:func:`read_checkpoint` for the trainer's own files (kept for callers of the earlier name)."""
    return read_checkpoint(path)


# --- choosing raw or EMA weights: one policy for every reader --------------------------------------------------

RAW_KEYS = ("state_dict", "model")  # timm's CheckpointSaver, facebookresearch/deit
EMA_KEYS = ("state_dict_ema", "model_ema")


def _holds_weights(value: Any) -> bool:
    return isinstance(value, Mapping) and any(isinstance(v, torch.Tensor) for v in value.values())


def select_weights(
    checkpoint: Mapping[str, Any],
    *,
    use_ema: bool | None,
    name: str = "the checkpoint",
    flags: tuple[str, str] | None = None,
) -> tuple[dict[str, torch.Tensor], str]:
    """The state dict to use from ``checkpoint`` and which it is: ``'raw'``, ``'ema'`` or ``'plain'``.

    Reads timm checkpoints (``state_dict`` / ``state_dict_ema``), facebookresearch/deit ones (``model`` /
    ``model_ema``) and plain state dicts. The one policy: a file holding raw AND EMA weights needs an explicit
    choice (``use_ema=True`` / ``False``), otherwise :class:`CheckpointError` names both keys and the flags
    (``flags``: the command line's pair, e.g. ``('--use-ema', '--no-ema')``) - never a silent pick, as timm's
    loaders make (EMA). A file with one set uses it; asking for a set the file lacks is refused. The state
    dict comes back with DDP / torch.compile prefixes removed (timm's ``clean_state_dict``).
    """
    choose = (f"{flags[0]} or {flags[1]} (use_ema=True / use_ema=False)" if flags
              else "use_ema=True or use_ema=False")
    raw_key = next((k for k in RAW_KEYS if _holds_weights(checkpoint.get(k))), None)
    ema_key = next((k for k in EMA_KEYS if _holds_weights(checkpoint.get(k))), None)
    if raw_key is None and ema_key is None:
        if not checkpoint or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
            raise CheckpointError(
                f"{name} holds no weights: neither a state dict nor one under {', '.join(RAW_KEYS + EMA_KEYS)} "
                f"(its keys: {sorted(map(str, checkpoint))[:10]}); pass a training checkpoint or a state dict.")
        if use_ema:
            raise CheckpointError(f"{name} is a plain state dict, one set of weights with no EMA copy; "
                                  f"drop {flags[0] if flags else 'use_ema=True'}.")
        _logger.info("%s: using its weights (a plain state dict).", name)
        return clean_state_dict(dict(checkpoint)), "plain"
    if raw_key and ema_key and use_ema is None:
        raise CheckpointError(
            f"{name} holds both raw weights ('{raw_key}') and EMA weights ('{ema_key}'); choose with {choose}. "
            "Nothing picks one silently (timm's loaders would take the EMA weights).")
    if use_ema and ema_key is None:
        raise CheckpointError(f"{name} holds no EMA weights (no '{EMA_KEYS[0]}' or '{EMA_KEYS[1]}'), only raw "
                              f"weights ('{raw_key}'); drop {flags[0] if flags else 'use_ema=True'}.")
    if use_ema is False and raw_key is None:
        raise CheckpointError(f"{name} holds only EMA weights ('{ema_key}'); use them with "
                              f"{flags[0] if flags else 'use_ema=True'}.")
    key = ema_key if (use_ema or raw_key is None) else raw_key
    weights = "ema" if key == ema_key else "raw"
    _logger.info("%s: using its %s weights ('%s').", name, "EMA" if weights == "ema" else "raw", key)
    return clean_state_dict(dict(checkpoint[key])), weights


# --- RNG state -----------------------------------------------------------------------------------------------

def rng_state() -> dict[str, Any]:
    """This process's generator states as weights_only-loadable values (tensors, ints, tuples)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- saving --------------------------------------------------------------------------------------------------

class CheckpointSaver(TimmCheckpointSaver):
    """timm's CheckpointSaver (same files, history and ranking) with atomic replacement and extra state.

    timm's saver unlinks ``last``/``model_best`` before relinking them, so a kill at that moment loses
    the file; here every name is replaced atomically. ``extra_state()`` adds the trainer's keys to
    every file (see the module docstring).
    """

    def __init__(self, *args: Any, extra_state: Callable[[], dict[str, Any]] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.extra_state = extra_state
        self.last_epoch: int | None = None  # the epoch last.pth.tar holds, once this saver has written it
        self._epoch: int | None = None

    def save_checkpoint(self, epoch: int, metric: float | None = None) -> tuple[Any, Any]:
        """timm's ``save_checkpoint``; a full disk raises :class:`~timm_deit_distill.errors.DiskFullError` naming
        the epoch, the checkpoint's size and the space free (the files written before are intact)."""
        self._epoch = epoch
        try:
            return super().save_checkpoint(epoch, metric)
        except DiskFullError as e:
            raise disk_full(self.checkpoint_dir, f"the checkpoint of epoch {epoch}", e.needed, e.errno) from e

    def _replace(self, src: str, dst: str) -> None:
        os.replace(src, dst)
        if os.path.basename(dst) == f"last{self.extension}":
            self.last_epoch = self._epoch

    def _duplicate(self, src: str, dst: str) -> None:
        atomic_link_or_copy(src, dst)

    def state_for(self, epoch: int, metric: float | None = None) -> dict[str, Any]:
        """Everything a checkpoint file of ``epoch`` holds."""
        state: dict[str, Any] = {
            "epoch": epoch,
            "arch": self.args.model if self.args is not None else type(self.model).__name__.lower(),
            "state_dict": get_state_dict(self.model, self.unwrap_fn),
            "optimizer": self.optimizer.state_dict(),
            "version": 2,  # timm: the epoch stored is the one completed
        }
        if self.args is not None:
            state["args"] = self.args
        if self.amp_scaler is not None:
            state[self.amp_scaler.state_dict_key] = self.amp_scaler.state_dict()
        if self.model_ema is not None:
            state["state_dict_ema"] = get_state_dict(self.model_ema, self.unwrap_fn)
        if metric is not None:
            state["metric"] = metric
        state["saver"] = self.state_dict(epoch, metric)
        if self.extra_state is not None:
            state.update(self.extra_state())
        state[DIGEST_KEY] = {"sha256": tensor_digests(state)}  # checked on every read (read_checkpoint)
        return state

    def _save(self, save_path: str, epoch: int, metric: float | None = None) -> None:
        state = self.state_for(epoch, metric)
        # timm writes tmp.pth.tar then replaces `last` with it; the temp file itself is also written
        # atomically so a kill mid-write never leaves a half file under any name.
        # torch.save given a path names the zip's records after the file (here a random temporary name),
        # so two saves of the same state differed in bytes and sha256 -- and a cache refused a re-trained,
        # identical teacher. Given an open file it names them "archive": same state, same bytes.
        with atomic_path(save_path, size=self._size_estimate(state)) as tmp, open(tmp, "wb") as f:
            torch.save(state, f)

    def _size_estimate(self, state: dict[str, Any]) -> int:
        """About the bytes a checkpoint file of ``state`` takes: the previous one's size (the same tensors), else
        the bytes of its tensors (the zip's headers and the pickle add a little)."""
        tensors = sum(t.nelement() * t.element_size() for _, t in _tensors_in(state))
        try:
            return max(tensors, os.path.getsize(os.path.join(self.checkpoint_dir, f"last{self.extension}")))
        except OSError:
            return tensors


# --- resuming ------------------------------------------------------------------------------------------------

def checkpoint_epoch(checkpoint: dict[str, Any]) -> int:
    """The last epoch a training checkpoint completed (timm's ``version`` rule; -1 when it records none)."""
    epoch = int(checkpoint.get("epoch", -1))
    if checkpoint.get("version", 1) < 2:
        epoch -= 1  # timm: version-1 files stored the next epoch
    return epoch


# timm's PlateauLRScheduler.state_dict keeps only 'best' and 'last_epoch' of the torch ReduceLROnPlateau it wraps:
# the patience and cooldown counters (and the learning rates held back under noise) are lost, so a resumed run
# would cut its learning rate at other epochs than the run left alone. The checkpoint carries them under this key.
_PLATEAU_KEY = "deit_distill_plateau"
# What moves as the run trains, as opposed to the settings a resume compares.
_MOVING = {"metric", "best", "last_epoch"}
_PLATEAU_MOVING = {"best", "last_epoch", "_last_lr", "num_bad_epochs", "cooldown_counter"}


def scheduler_state(lr_scheduler: Any) -> dict[str, Any]:
    """The schedule's state for a checkpoint: timm's ``state_dict``, and for timm's plateau schedule the whole
    state of the ReduceLROnPlateau inside it, which timm's leaves out."""
    state = dict(lr_scheduler.state_dict())
    plateau = getattr(lr_scheduler, "lr_scheduler", None)
    if isinstance(plateau, torch.optim.lr_scheduler.ReduceLROnPlateau):
        state[_PLATEAU_KEY] = {"reduce_lr_on_plateau": plateau.state_dict(),
                               "restore_lr": getattr(lr_scheduler, "restore_lr", None)}
    return state


def _schedule_settings(state: dict[str, Any]) -> dict[str, Any]:
    settings = {k: v for k, v in state.items() if k not in _MOVING and k != _PLATEAU_KEY}
    if _PLATEAU_KEY in state:
        inner = state[_PLATEAU_KEY]["reduce_lr_on_plateau"]
        settings[_PLATEAU_KEY] = {k: v for k, v in inner.items() if k not in _PLATEAU_MOVING}
    return settings


def load_scheduler_state(lr_scheduler: Any, saved: dict[str, Any], *, source: str = "the checkpoint") -> bool:
    """Restore a :func:`scheduler_state` into ``lr_scheduler`` when its settings are the saved ones; False (and
    nothing changed) when they differ. A plateau schedule saved without its counters (a checkpoint of another
    trainer, or of an earlier version) gets timm's part back and a warning that its counters restart."""
    fresh = scheduler_state(lr_scheduler)
    plateau_saved = _PLATEAU_KEY in saved
    counters_lost = _PLATEAU_KEY in fresh and not plateau_saved
    if counters_lost:
        fresh.pop(_PLATEAU_KEY)
    if _schedule_settings(fresh) != _schedule_settings(saved):
        return False
    lr_scheduler.load_state_dict({k: v for k, v in saved.items() if k != _PLATEAU_KEY})
    if plateau_saved:
        lr_scheduler.lr_scheduler.load_state_dict(saved[_PLATEAU_KEY]["reduce_lr_on_plateau"])
        lr_scheduler.restore_lr = saved[_PLATEAU_KEY]["restore_lr"]
    elif counters_lost:
        _logger.warning("%s holds timm's plateau schedule without its patience and cooldown counters: they restart "
                        "at 0, so the learning rate may drop at other epochs than in the run left alone.", source)
    return True


@dataclass
class ResumeState:
    """What the loop needs after :func:`resume` restored the modules."""

    start_epoch: int
    num_updates: int = 0
    summary: list[dict[str, Any]] = field(default_factory=list)
    saver_state: dict[str, Any] | None = None
    scheduler_restored: bool = False
    rng_restored: bool = False
    rng: list[dict[str, Any]] | None = None  # every rank's generator states, as saved
    ema_rng: Any = None
    rank: int = 0
    world_size: int = 1

    def restore_rng(self, model_ema: nn.Module | None = None) -> None:
        """Put this rank's saved generator states back: the very last step before the first epoch."""
        if not self.rng:
            return
        rngs, rank = self.rng, self.rank
        set_rng_state(rngs[rank] if rank < len(rngs) and len(rngs) == self.world_size else rngs[0])
        if model_ema is not None and self.ema_rng is not None and hasattr(model_ema, "_sr_generator"):
            model_ema._sr_generator.set_state(self.ema_rng)
        self.rng_restored = True


def resume(
    path: str,
    model: nn.Module,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    loss_scaler: Any = None,
    lr_scheduler: Any = None,
    model_ema: nn.Module | None = None,
    rank: int = 0,
    world_size: int = 1,
    checkpoint: dict[str, Any] | None = None,
    restore_rng: bool = True,
) -> ResumeState:
    """Restore model, optimizer, scaler, scheduler, EMA and this rank's RNG states from ``path``.

    The RNG states are restored last, so call this right before the first epoch starts; or pass
    ``restore_rng=False`` and call :meth:`ResumeState.restore_rng` then (the trainer does, so that
    nothing it does in between, such as claiming its run folder, can consume them).
    ``optimizer=None`` (``--no-resume-opt``) skips optimizer and scaler state, as timm does.
    ``checkpoint`` is the file's contents when the caller has read it already.
    """
    if checkpoint is None:
        checkpoint = load_training_checkpoint(path)
    if "state_dict" not in checkpoint:
        raise CheckpointError(f"{path!r} has no 'state_dict': it is not a training checkpoint; "
                              "use --initial-checkpoint for plain weights.")
    try:
        unwrap_model(model).load_state_dict(clean_state_dict(checkpoint["state_dict"]))
    except RuntimeError as e:
        # torch lists every mismatching tensor on its own line; the first few name the problem.
        detail = " ".join(" ".join(str(e).split("\n")[:4]).split())[:500]
        raise CheckpointError(f"{path!r} does not fit the student built from these flags: {detail} Resume with "
                              "the flags of the original run (its args.yaml: -c RUN/args.yaml).") from None
    if optimizer is not None and "optimizer" in checkpoint:
        optimizer.load_state_dict(checkpoint["optimizer"])
    if optimizer is not None and loss_scaler is not None and loss_scaler.state_dict_key in checkpoint:
        loss_scaler.load_state_dict(checkpoint[loss_scaler.state_dict_key])
    scheduler_restored = False
    if lr_scheduler is not None and "scheduler" in checkpoint:
        # Restore the schedule's state only when its settings are the ones of the checkpoint's run; a run
        # resumed with another --epochs/--lr/--sched keeps its new schedule, positioned at the start epoch
        # by the caller (timm's behaviour).
        scheduler_restored = load_scheduler_state(lr_scheduler, checkpoint["scheduler"], source=repr(path))
    if model_ema is not None:
        ema_state = checkpoint.get("state_dict_ema")
        if ema_state is None:
            raise CheckpointError(f"{path!r} holds no EMA weights but --model-ema is on; resume without "
                                  "--model-ema or from a run that had it.")
        unwrap_model(model_ema).load_state_dict(clean_state_dict(ema_state))
    state = ResumeState(start_epoch=checkpoint_epoch(checkpoint) + 1, num_updates=int(checkpoint.get("num_updates", 0)),
                        summary=list(checkpoint.get("summary", [])), saver_state=checkpoint.get("saver"),
                        scheduler_restored=scheduler_restored, rng=checkpoint.get("rng") or None,
                        ema_rng=checkpoint.get("ema_rng"), rank=rank, world_size=world_size)
    if restore_rng:
        state.restore_rng(model_ema)
    return state


# What exact resumption needs unchanged, compared by compare_resume. Settings that only say where the run
# is written, or which file it resumes from, are no change to the run at all.
_NOT_A_CHANGE = frozenset({"resume", "output", "experiment", "start_epoch"})
_IDENTITY_SETTINGS = frozenset({"seed", "model", "model_kwargs", "num_classes"})


@dataclass
class ResumeComparison:
    """How a resumed run differs from the run its checkpoint came from (see :func:`compare_resume`)."""

    refused: list[str] = field(default_factory=list)  # "seed 3 -> 4": exact resume is impossible
    refused_what: list[str] = field(default_factory=list)  # what each refusal is about: "seed", "model", ...
    changed: dict[str, list[Any]] = field(default_factory=dict)  # setting -> [old, new]: allowed, recorded
    notes: list[str] = field(default_factory=list)  # what could not be compared, and why


def _teacher_identity(description: dict[str, Any] | None) -> tuple[Any, Any] | None:
    return None if not description else (description.get("name"), description.get("sha256"))


def _describe_teacher(description: dict[str, Any] | None) -> str:
    if not description:
        return "none"
    return f"{description.get('name')} (weights sha256 {str(description.get('sha256'))[:12]})"


def _describe_data(fingerprint: dict[str, Any]) -> str:
    return (f"{fingerprint.get('num_samples')} images in {fingerprint.get('num_classes')} classes "
            f"(files sha256 {str(fingerprint.get('files_sha256'))[:12]})")


def compare_resume(checkpoint: dict[str, Any], *, settings: dict[str, Any], metadata: dict[str, Any]) -> ResumeComparison:
    """Compare a checkpoint's run with the run about to resume from it.

    ``settings`` are the resumed run's resolved settings (the ``args`` it saves), ``metadata`` its
    ``deit_distill`` metadata. Refused (an exact resume needs them unchanged): the student (model,
    architecture kwargs, classes), the training data (its fingerprint), the seed and the teacher
    (name and weights sha256; none -> some and some -> none included); for a streamed source (metadata
    ``stream``) also what fixes its shard order: world size, loader workers, batch size, sample count and shard
    list. Every other setting that differs is listed in ``changed``.
    """
    out = ResumeComparison()
    old_meta = checkpoint.get("deit_distill") or {}
    old_args = checkpoint.get("args")
    old_settings = dict(vars(old_args)) if isinstance(old_args, argparse.Namespace) else dict(old_args or {})

    def refuse(what: str, old: Any, new: Any) -> None:
        out.refused.append(f"{what} {old} -> {new}")
        out.refused_what.append(what)

    if not old_meta:
        out.notes.append("the checkpoint has no deit_distill metadata (not written by deit-distill train): its "
                         "student, training data and teacher could not be compared")
    for key, what in (("model", "model"), ("model_kwargs", "architecture")):
        if key in old_meta and old_meta[key] != metadata.get(key):
            refuse(what, old_meta[key], metadata.get(key))
    if not old_meta and old_settings.get("model") not in (None, settings.get("model")):
        refuse("model", old_settings["model"], settings.get("model"))
    if old_meta.get("label_names") is not None and old_meta["label_names"] != metadata.get("label_names"):
        from .data.sources import class_difference

        out.refused.append("classes: " + str(class_difference(old_meta["label_names"], metadata.get("label_names") or [],
                                                              "the checkpoint", "this run's data")))
        out.refused_what.append("classes")
    old_seed = old_meta.get("seed", old_settings.get("seed"))
    if old_seed is not None and old_seed != settings.get("seed"):
        refuse("seed", old_seed, settings.get("seed"))
    if "data" in old_meta:
        if old_meta["data"] != metadata.get("data"):
            refuse("training data", _describe_data(old_meta["data"]), _describe_data(metadata.get("data") or {}))
    elif old_meta:
        out.notes.append("the checkpoint records no fingerprint of its training data (written before "
                         "deit-distill recorded one): the training data could not be compared")
    _compare_stream(old_meta.get("stream"), metadata.get("stream"), refuse)
    if old_meta:
        old_teacher = (old_meta.get("distill") or {}).get("teacher_description")
        new_teacher = (metadata.get("distill") or {}).get("teacher_description")
        if _teacher_identity(old_teacher) != _teacher_identity(new_teacher):
            refuse("teacher", _describe_teacher(old_teacher), _describe_teacher(new_teacher))

    for key, new in settings.items():
        if key in _NOT_A_CHANGE or key in _IDENTITY_SETTINGS or key not in old_settings:
            continue
        old = old_settings[key]
        if (list(old) if isinstance(old, tuple) else old) != new:
            out.changed[key] = [old, new]
    if "world_size" in old_meta and old_meta["world_size"] != metadata.get("world_size"):
        out.changed["world_size"] = [old_meta["world_size"], metadata.get("world_size")]
    return out


_STREAM_KEYS = ("seed", "world_size", "workers", "batch_size", "num_samples", "shards")


def _compare_stream(old: dict[str, Any] | None, new: dict[str, Any] | None, refuse: Callable[[str, Any, Any], None]) -> None:
    """A streamed source's epoch is dealt by timm from (seed, epoch) to world x workers, each worker's share sized
    by the batch and the sample count: a resume that changes any of them cannot reproduce the shard order."""
    if old is None and new is None:
        return
    if old is None or new is None:
        refuse("streamed source", "none" if old is None else "recorded", "none" if new is None else "a stream")
        return
    for key in _STREAM_KEYS:
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if key == "shards" and isinstance(a, list) and isinstance(b, list):
            first = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
            a = f"{len(a)} shards ({a[first] if first < len(a) else '-'} at {first})"
            b = f"{len(b)} shards ({b[first] if first < len(b) else '-'} at {first})"
        refuse(f"{key} of the streamed source (with the epoch it fixes the shard order)", a, b)


# --- reading a student back ----------------------------------------------------------------------------------

def model_from_checkpoint(checkpoint: Mapping[str, Any], state_dict: dict[str, torch.Tensor], *,
                          name: str = "the checkpoint") -> nn.Module:
    """Rebuild the student ``checkpoint`` describes (its ``deit_distill`` metadata, else timm's ``args``/``arch``)
    and load ``state_dict`` strictly (one of its weight sets, from :func:`select_weights`). In eval mode."""
    import timm

    meta = checkpoint.get("deit_distill")
    if meta is None:
        args = checkpoint.get("args")
        arch = getattr(args, "model", None) or checkpoint.get("arch")
        if not arch:
            raise CheckpointError(f"{name} has neither 'deit_distill' metadata nor timm's 'args'; cannot tell "
                                  "which model it holds. Pass a checkpoint written by deit-distill train (or "
                                  "timm's train.py).")
        meta = {"model": arch, "model_kwargs": {"num_classes": getattr(args, "num_classes", None)}}
    kwargs = {k: v for k, v in meta.get("model_kwargs", {}).items() if v is not None}
    try:
        model = timm.create_model(meta["model"], **kwargs)
    except RuntimeError as e:  # an architecture timm does not know in this process
        raise CheckpointError(f"{name} holds a {meta['model']!r}, which cannot be built here ({_first_line(e)}); "
                              "import the module that registers it.") from None
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as e:
        raise CheckpointError(f"{name}: its weights do not fit the {meta['model']} its metadata describes "
                              f"({' '.join(str(e).split())[:300]}); the file is inconsistent.") from None
    if meta.get("pretrained_cfg"):
        cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["pretrained_cfg"].items()}
        model.pretrained_cfg = {**model.pretrained_cfg, **cfg}
    return model.eval()


def create_model_from_checkpoint(
    path: str | os.PathLike[str], *, use_ema: bool | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the student a checkpoint was trained as and load its raw or EMA weights.

    ``use_ema`` follows the one policy of :func:`select_weights`: required when the file holds both raw and
    EMA weights (``None`` then raises :class:`CheckpointError`), optional when it holds one set.
    Returns ``(model in eval mode, checkpoint dict)``.
    """
    checkpoint = read_checkpoint(path)
    name = f"checkpoint {Path(path)}"
    state_dict, _ = select_weights(checkpoint, use_ema=use_ema, name=name)
    return model_from_checkpoint(checkpoint, state_dict, name=name), checkpoint
