"""A checkpoint whose bytes changed after it was written is refused, naming what changed; torch.load is not.

torch.load checks no CRC32 of a torch zip's records, so every case here is first shown to load silently with plain
torch.load (the claim the checks rest on), then refused by the package's reader. Files this package writes carry a
sha256 of their tensors per entry (the message names the entry); the rest of the file, and the tensors of files
without a digest (timm's, older ones), are checked against the zip's CRC32s. Files without either still load.
"""

from __future__ import annotations

import argparse
import copy
import logging
import re

import pytest
import timm
import torch
from timm.utils import CheckpointSaver as TimmSaver
from train_fixtures import load

from timm_deit_distill import checkpoint as ckpt
from timm_deit_distill.checkpoint import DIGEST_KEY, CheckpointError, read_checkpoint
from timm_deit_distill.checkpoint import reader as ckpt_reader


def _saved(folder, *, saver_class=ckpt.CheckpointSaver, **extra):
    """A small timm ResNet after one SGD step, its EMA a different copy, saved by ``saver_class``: last.pth.tar."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=3)
    ema = copy.deepcopy(model)
    with torch.no_grad():
        for p in ema.parameters():
            p.add_(0.01)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3, 32, 32)).square().mean().backward()
    optimizer.step()
    saver = saver_class(model=model, optimizer=optimizer, model_ema=ema, args=argparse.Namespace(model="test_resnet"),
                        checkpoint_dir=str(folder), recovery_dir=str(folder), **extra)
    saver.save_checkpoint(0, metric=1.0)
    return folder / "last.pth.tar"


def _flip(path, tensor, out, *, bit=0x10):
    """A copy of ``path`` with one bit flipped inside ``tensor``'s bytes (found once in the file)."""
    data = path.read_bytes()
    needle = tensor.contiguous().numpy().tobytes()
    at = data.find(needle)
    assert at > 0 and data.find(needle, at + 1) == -1, "the tensor's bytes must occur once"
    flipped = bytearray(data)
    flipped[at + 1] ^= bit
    out.write_bytes(bytes(flipped))
    return out


ENTRIES = {
    "state_dict": (lambda c: c["state_dict"]["fc.weight"], "'state_dict' (the raw weights)"),
    "state_dict_ema": (lambda c: c["state_dict_ema"]["fc.weight"], "'state_dict_ema' (the EMA weights)"),
    "optimizer": (lambda c: c["optimizer"]["state"][0]["momentum_buffer"], "'optimizer' (the optimizer state)"),
    "rng": (lambda c: c["rng"][0]["torch"], "'rng' (the RNG states)"),
}


@pytest.mark.parametrize("entry", list(ENTRIES))
def test_a_flipped_bit_in_any_entry_is_refused_naming_the_entry_the_file_and_the_fix(tmp_path, entry):
    path = _saved(tmp_path / "run", extra_state=lambda: {"rng": [ckpt.rng_state()],
                                                          "deit_distill": {"model": "test_resnet"}})
    pick, named = ENTRIES[entry]
    intact = load(path)
    bad = _flip(path, pick(intact), tmp_path / "bad.pth.tar")
    assert not torch.equal(pick(load(bad)), pick(intact))  # torch.load: silently another value
    with pytest.raises(CheckpointError) as refusal:
        read_checkpoint(bad, what="--resume")
    message = str(refusal.value)
    assert message.startswith(f"--resume {bad} is damaged: the tensors of its {named} do not match the sha256 "
                              "recorded when deit-distill wrote it"), message
    assert "checkpoint-N.pth.tar or model_best.pth.tar" in message and "copy the file again" in message
    assert "\n" not in message
    assert read_checkpoint(path).keys() == intact.keys()  # the intact file reads as it is


def test_the_digest_covers_every_entry_that_holds_tensors_and_is_plain_data(tmp_path):
    path = _saved(tmp_path / "run", extra_state=lambda: {"rng": [ckpt.rng_state()], "summary": [{"epoch": 0}]})
    saved = load(path)
    holding = {k for k, v in saved.items() if k != DIGEST_KEY and any(True for _ in ckpt_reader._tensors_in(v))}
    assert holding == {"state_dict", "state_dict_ema", "optimizer", "rng"}
    recorded = saved[DIGEST_KEY]["sha256"]
    assert recorded.keys() == holding and all(re.fullmatch(r"[0-9a-f]{64}", d) for d in recorded.values())
    assert recorded == ckpt.tensor_digests(saved)  # what was saved is what is read back
    with pytest.raises(CheckpointError, match="'optimizer' \\(the optimizer state\\)"):  # an entry gone is refused
        ckpt_reader._verify_digests({k: v for k, v in saved.items() if k != "optimizer"}, "x")


def test_a_timm_checkpoint_has_no_digest_but_its_zip_checksums_catch_a_flipped_weight(tmp_path, caplog):
    path = _saved(tmp_path / "timm", saver_class=TimmSaver)
    intact = load(path)
    assert DIGEST_KEY not in intact
    with caplog.at_level(logging.DEBUG, logger="timm_deit_distill.checkpoint"):
        read_checkpoint(path)  # still loads
    assert "records no tensor digest" in caplog.text and "CRC32" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    bad = _flip(path, intact["state_dict"]["fc.weight"], tmp_path / "bad.pth.tar")
    assert not torch.equal(load(bad)["state_dict"]["fc.weight"], intact["state_dict"]["fc.weight"])
    with pytest.raises(CheckpointError, match=r"teacher checkpoint .*bad\.pth\.tar is damaged: its record "
                                              r"[^ ]+/data/\d+ fails its CRC32 checksum .*copy or download it again"):
        read_checkpoint(bad, what="teacher checkpoint")


def test_a_changed_setting_in_the_pickle_is_caught_by_its_crc_before_it_is_unpickled(tmp_path):
    path = _saved(tmp_path / "run", extra_state=lambda: {"deit_distill": {"model": "test_resnet", "note": "abcdef"}})
    data = path.read_bytes()
    assert data.count(b"abcdef") == 1
    bad = tmp_path / "bad.pth.tar"
    bad.write_bytes(data.replace(b"abcdef", b"abcdeg"))
    assert load(bad)["deit_distill"]["note"] == "abcdeg"  # torch.load: silently another setting
    with pytest.raises(CheckpointError, match=r"is damaged: its record [^ ]+/data\.pkl fails its CRC32 checksum"):
        read_checkpoint(bad)


def test_files_without_checksums_still_load_unverified_and_say_so_at_debug(tmp_path, caplog):
    import safetensors.torch

    path = _saved(tmp_path / "timm", saver_class=TimmSaver)
    legacy = tmp_path / "legacy.pth"
    torch.save(load(path), legacy, _use_new_zipfile_serialization=False)
    weights = tmp_path / "w.safetensors"
    safetensors.torch.save_file(load(path)["state_dict"], weights)
    with caplog.at_level(logging.DEBUG, logger="timm_deit_distill.checkpoint"):
        assert "state_dict" in read_checkpoint(legacy)
        assert "fc.weight" in read_checkpoint(weights)
    assert "torch-legacy file has no checksums: its tensors are not verified" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_file_changed_on_purpose_loads_once_its_digest_entry_is_deleted(tmp_path):
    path = _saved(tmp_path / "run")
    edited = load(path)
    edited["state_dict"]["fc.bias"].zero_()  # e.g. a head reset by hand, then re-saved with torch.save
    torch.save(edited, tmp_path / "edited.pth.tar")
    with pytest.raises(CheckpointError, match="delete its 'deit_distill_digest' entry"):
        read_checkpoint(tmp_path / "edited.pth.tar")
    del edited[DIGEST_KEY]
    torch.save(edited, tmp_path / "edited.pth.tar")
    assert torch.equal(read_checkpoint(tmp_path / "edited.pth.tar")["state_dict"]["fc.bias"], torch.zeros(3))
