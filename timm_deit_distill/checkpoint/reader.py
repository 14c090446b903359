"""Reading any checkpoint file: the one reader behind every file this package loads, with its damage checks.

The file is looked at first (:func:`check_checkpoint_file`), so a damaged one is described by what it is
(truncated, empty, text, ...) instead of by whatever the unpickler happened to trip over; what was read is then
verified (:func:`read_checkpoint`): the tensors of a file this package wrote against the sha256 it records
(:data:`DIGEST_KEY`), the rest of a torch zip against the zip's CRC32s.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import pickle
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError

__all__ = ["read_checkpoint", "check_checkpoint_file", "load_training_checkpoint", "DIGEST_KEY", "tensor_digests"]

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
