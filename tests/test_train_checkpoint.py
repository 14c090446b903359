"""The trainer's checkpoint files: timm's layout, atomic replacement, RNG and schedule state for --resume."""

from __future__ import annotations

import argparse
import random

import numpy as np
import pytest
import timm
import torch
from timm.models import load_checkpoint, resume_checkpoint
from timm.scheduler import create_scheduler_v2
from timm.utils import CheckpointSaver as TimmSaver
from train_fixtures import load

from timm_deit_distill import checkpoint as ckpt


def _setup(tmp_path, lr=0.1):
    torch.manual_seed(0)
    model = timm.create_model("resnet10t", num_classes=3)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    scheduler, _ = create_scheduler_v2(optimizer, sched="cosine", num_epochs=10, warmup_epochs=2, warmup_lr=1e-4)
    saver = ckpt.CheckpointSaver(model=model, optimizer=optimizer, args=argparse.Namespace(model="resnet10t"),
                                 checkpoint_dir=str(tmp_path), recovery_dir=str(tmp_path), max_history=2,
                                 extra_state=lambda: {"scheduler": scheduler.state_dict(), "rng": [ckpt.rng_state()],
                                                      "deit_distill": {"model": "resnet10t"}})
    return model, optimizer, scheduler, saver


def _step(model, optimizer):
    model.train()
    loss = model(torch.randn(2, 3, 32, 32)).square().mean()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()


def test_same_files_and_ranking_as_timms_saver(tmp_path):
    ours, theirs = tmp_path / "ours", tmp_path / "timm"
    ours.mkdir()
    theirs.mkdir()
    model, optimizer, _, saver = _setup(ours)
    reference = TimmSaver(model=model, optimizer=optimizer, args=argparse.Namespace(model="resnet10t"),
                          checkpoint_dir=str(theirs), recovery_dir=str(theirs), max_history=2)
    for epoch, metric in enumerate([0.5, 0.7, 0.6, 0.9]):
        assert saver.save_checkpoint(epoch, metric) == reference.save_checkpoint(epoch, metric)
    assert sorted(p.name for p in ours.iterdir()) == sorted(p.name for p in theirs.iterdir())
    a, b = load(ours / "model_best.pth.tar"), load(theirs / "model_best.pth.tar")
    assert a.keys() - b.keys() == {"scheduler", "rng", "deit_distill", "deit_distill_digest"}
    assert all(torch.equal(a["state_dict"][k], v) for k, v in b["state_dict"].items())
    fresh = timm.create_model("resnet10t", num_classes=3)
    load_checkpoint(fresh, str(ours / "last.pth.tar"))
    assert resume_checkpoint(fresh, str(ours / "last.pth.tar")) == 4


def test_a_crash_while_saving_keeps_every_previous_file(tmp_path, monkeypatch):
    model, optimizer, _, saver = _setup(tmp_path)
    saver.save_checkpoint(0, 0.5)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    _step(model, optimizer)

    def torch_save_then_die(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")  # the saver hands torch.save an open file (identical bytes per state)
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(torch, "save", torch_save_then_die)
    with pytest.raises(KeyboardInterrupt):
        saver.save_checkpoint(1, 0.9)
    monkeypatch.undo()
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert after == before  # last, best and checkpoint-0 untouched; no temporary file left behind
    assert load(tmp_path / "last.pth.tar")["epoch"] == 0


def test_a_crash_while_linking_best_keeps_the_previous_best(tmp_path, monkeypatch):
    import os

    model, optimizer, _, saver = _setup(tmp_path)
    saver.save_checkpoint(0, 0.5)
    best_before = (tmp_path / "model_best.pth.tar").read_bytes()
    _step(model, optimizer)

    real_link, calls = os.link, []

    def link_then_die(src, dst, *args, **kwargs):  # the 1st link makes checkpoint-1, the 2nd model_best
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed while linking the new best")
        return real_link(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "link", link_then_die)
    with pytest.raises(KeyboardInterrupt):
        saver.save_checkpoint(1, 0.9)  # a new best: timm unlinks model_best before linking the new one
    monkeypatch.undo()
    assert len(calls) == 2
    assert (tmp_path / "model_best.pth.tar").read_bytes() == best_before
    assert load(tmp_path / "last.pth.tar")["epoch"] == 1  # complete: replaced in one step
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_rng_state_round_trip_through_a_weights_only_file(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.standard_normal()  # leaves a cached gaussian in numpy's state
    path = tmp_path / "rng.pt"
    torch.save(ckpt.rng_state(), path)
    expected = (random.random(), np.random.standard_normal(), np.random.rand(), torch.rand(3))
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    ckpt.set_rng_state(torch.load(path, weights_only=True))
    got = (random.random(), np.random.standard_normal(), np.random.rand(), torch.rand(3))
    assert got[:3] == expected[:3] and torch.equal(got[3], expected[3])


def test_resume_restores_the_schedule_only_when_its_settings_are_unchanged(tmp_path):
    model, optimizer, scheduler, saver = _setup(tmp_path)
    for epoch in range(3):
        _step(model, optimizer)
        scheduler.step(epoch + 1, metric=0.1 * epoch)
        saver.save_checkpoint(epoch, metric=0.1 * epoch)
    path = str(tmp_path / "last.pth.tar")

    model2, optimizer2, scheduler2, _ = _setup(tmp_path)
    state = ckpt.resume(path, model2, optimizer=optimizer2, lr_scheduler=scheduler2)
    assert state.start_epoch == 3 and state.scheduler_restored and state.rng_restored
    assert scheduler2.metric == pytest.approx(0.2)
    assert [g["lr"] for g in optimizer2.param_groups] == [g["lr"] for g in optimizer.param_groups]

    model3, optimizer3, scheduler3, _ = _setup(tmp_path, lr=0.3)
    state = ckpt.resume(path, model3, optimizer=optimizer3, lr_scheduler=scheduler3)
    assert not state.scheduler_restored  # --lr changed: the new schedule is kept (and positioned by the trainer)
    assert scheduler3.base_values == [0.3]


def test_unreadable_and_mismatched_checkpoints_are_refused(tmp_path):
    bad = tmp_path / "bad.pth.tar"
    bad.write_bytes(b"garbage")
    with pytest.raises(ckpt.CheckpointError, match="is not a checkpoint: it is a text file starting with 'garbage'"):
        ckpt.load_training_checkpoint(bad)
    model, optimizer, _, saver = _setup(tmp_path)
    saver.save_checkpoint(0)
    other = timm.create_model("resnet10t", num_classes=5)
    with pytest.raises(ckpt.CheckpointError, match="does not fit the student") as refusal:
        ckpt.resume(str(tmp_path / "last.pth.tar"), other)
    assert "\n" not in str(refusal.value)  # the trainer prints it as its one line


def test_the_same_state_saved_twice_is_the_same_bytes(tmp_path):
    """A checkpoint's sha256 identifies a teacher (cache fingerprints): it must not depend on a temporary name."""
    import hashlib

    digests = []
    for name in ("a", "b"):
        folder = tmp_path / name
        folder.mkdir()
        *_, saver = _setup(folder)
        saver.extra_state = lambda: {"deit_distill": {"model": "resnet10t"}}
        saver.save_checkpoint(0, metric=1.0)
        digests.append(hashlib.sha256((folder / "last.pth.tar").read_bytes()).hexdigest())
    assert digests[0] == digests[1]
