"""Teacher target cache: build, resume, refuse, replay; replay equals online teaching."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from aug_fixtures import DATA_CONFIG, make_args
from safetensors.numpy import load_file
from source_fixtures import open_folder

from timm_deit_distill.atomic import sha256_file
from timm_deit_distill.cache import (
    TOPK_FILL,
    CacheError,
    CacheMismatch,
    CacheStore,
    TeacherTargetCache,
    build_cache,
)
from timm_deit_distill.data import ViewLayout, build_train_loader
from timm_deit_distill.data.digits import write_digits_imagefolder
from timm_deit_distill.losses import DistillationLoss

TEACHER = {"name": "resnet18", "tag": None, "sha256": "0" * 64, "precision": "float32"}
# What a build records of the teacher check it measured (TeacherCheck.as_dict()); replay is refused without one
CHECKED = {"top1": 90.0, "images": 40, "num_classes": 10, "chance": 10.0, "min_top1": 32.5, "seconds": 0.1,
           "passed": True, "diagnosis": None}


class CountingTeacher(torch.nn.Module):
    """A random-init timm convnet that records how many images it saw."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = timm.create_model("resnet18", num_classes=10).eval()
        self.images = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.images += len(x)
        return self.net(x)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    root = write_digits_imagefolder(tmp_path_factory.mktemp("digits") / "d", train_per_class=4)
    return open_folder(root)


@pytest.fixture(scope="module")
def teacher():
    return CountingTeacher()


def build(out, train_ds, teacher, *, epochs=2, store="hard", args=None, **kw):
    args = args or make_args()
    kw.setdefault("teacher_check", CHECKED)
    return build_cache(train_ds, args.view, args.loader, teacher, out, epochs=epochs, store=store,
                       teacher_description=TEACHER, **kw)


def check(cache, args, train_ds, epochs):
    cache.check_training(args.view, train_ds, epochs, distill_type=args.distill_type, teacher=args.teacher)


def opened(out, args, train_ds, epochs):
    cache = TeacherTargetCache.open(out)
    check(cache, args, train_ds, epochs)
    return cache


# ---------------------------------------------------------------------------------------------
# replay equals online teaching


def _student(seed=0):
    torch.manual_seed(seed)
    model = timm.create_model("deit_tiny_distilled_patch4_32", num_classes=10, depth=2)
    model.set_distilled_training(True)
    return model.train()


def _train(args, train_ds, targets_for, *, epochs, kind):
    """A few real optimizer steps; returns the per-step losses and the teacher targets used."""
    from timm.loss import SoftTargetCrossEntropy

    student = _student()
    opt = torch.optim.SGD(student.parameters(), lr=0.05)
    loss_fn = DistillationLoss(SoftTargetCrossEntropy(), None, kind, 0.5, 1.0)
    loader = build_train_loader(train_ds, args.view, args.loader)
    losses, used = [], []
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for inputs, labels, views in loader:
            teacher_out = targets_for(epoch, inputs, views)
            used.append(teacher_out)
            loss = loss_fn.from_teacher_output(student(inputs), labels, teacher_out)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append((loss.item(), loss_fn.last_base_loss.item(), loss_fn.last_distill_loss.item()))
    return np.array(losses), used


@pytest.mark.parametrize(("store", "kind"), [("hard", "hard"), ("full", "soft")])
def test_cached_teaching_equals_online_teaching(tmp_path, digits, teacher, store, kind):
    train_ds, _ = digits
    args = make_args(distill_type=kind)
    build(tmp_path / "c", train_ds, teacher, epochs=2, store=store, args=args)
    cache = opened(tmp_path / "c", args, train_ds, 2)

    def online(epoch, inputs, views):
        with torch.inference_mode():
            return teacher(inputs).clone()

    def cached(epoch, inputs, views):
        return cache.targets(epoch, views)

    # the cache was built with batches of 8; train with 6 (6 batches, the last 4 views dropped as timm does)
    args = dataclasses.replace(args, loader=dataclasses.replace(args.loader, batch_size=6))
    online_losses, online_targets = _train(args, train_ds, online, epochs=2, kind=kind)
    cached_losses, cached_targets = _train(args, train_ds, cached, epochs=2, kind=kind)
    if kind == "hard":
        hard_online = torch.cat([t.argmax(1) for t in online_targets])
        assert torch.equal(hard_online, torch.cat(cached_targets))
        assert len(hard_online.unique()) >= 3  # the teacher is not constant, so the check means something
    else:
        torch.testing.assert_close(torch.cat(cached_targets), torch.cat(online_targets), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(cached_losses, online_losses, rtol=1e-5, atol=1e-6)


def test_the_task_api_replays_a_cache_as_it_teaches_online(tmp_path, digits, teacher):
    """DeiTDistillationTask with a target source: the cache's rows for the batch's views of the task's epoch give
    the losses the online teacher gives (the Task does not know which it has)."""
    from timm.loss import SoftTargetCrossEntropy

    from timm_deit_distill.targets import CachedTargets, OnlineTargets
    from timm_deit_distill.task import DeiTDistillationTask

    train_ds, _ = digits
    args = make_args(distill_type="soft")
    build(tmp_path / "c", train_ds, teacher, epochs=2, store="full", args=args)
    cache = opened(tmp_path / "c", args, train_ds, 2)
    loader = build_train_loader(train_ds, args.view, args.loader)
    losses = {}
    for name, source in (("online", OnlineTargets(teacher)), ("cached", CachedTargets(cache))):
        task = DeiTDistillationTask(_student(), source, SoftTargetCrossEntropy(), distillation_type="soft",
                                    verbose=False).train()
        opt = torch.optim.SGD(task.trainable_module.parameters(), lr=0.05)
        losses[name] = []
        for epoch in range(2):
            loader.set_epoch(epoch)
            task.set_epoch(epoch)
            for inputs, labels, views in loader:
                out = task(inputs, labels, views=views)
                opt.zero_grad()
                out["loss"].backward()
                opt.step()
                losses[name].append([out["loss"].item(), out["task_loss"].item(), out["distill_loss"].item()])
    assert len(losses["cached"]) == len(losses["online"]) > 2
    np.testing.assert_allclose(losses["cached"], losses["online"], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="views"):
        DeiTDistillationTask(_student(), CachedTargets(cache), distillation_type="soft")(inputs, labels)


def test_topk_renormalises_over_the_stored_classes(tmp_path, digits, teacher):
    train_ds, _ = digits
    args = make_args(distill_type="soft")
    build(tmp_path / "full", train_ds, teacher, epochs=1, store="full", args=args)
    build(tmp_path / "top3", train_ds, teacher, epochs=1, store="topk:3", args=args)
    views = torch.arange(12)
    full = opened(tmp_path / "full", args, train_ds, 1).targets(0, views)
    top = opened(tmp_path / "top3", args, train_ds, 1).targets(0, views)
    values, indices = full.topk(3, dim=1)
    assert torch.equal(top.topk(3, dim=1).indices, indices)
    torch.testing.assert_close(top.gather(1, indices), values.half().float())
    assert bool(((top == TOPK_FILL).sum(1) == 7).all())
    # softmax over the replayed row == softmax over the 3 stored logits alone
    torch.testing.assert_close(F.softmax(top, 1).gather(1, indices), F.softmax(values.half().float(), 1))
    assert torch.equal(top.argmax(1), full.argmax(1))


def test_targets_come_back_in_the_order_asked(tmp_path, digits, teacher):
    train_ds, _ = digits
    args = make_args(distill_type="soft")
    build(tmp_path / "c", train_ds, teacher, epochs=1, store="full", args=args)
    cache = opened(tmp_path / "c", args, train_ds, 1)
    views = torch.tensor([7, 2, 30, 2, 0])
    rows = cache.targets(0, views)
    for i, v in enumerate(views.tolist()):
        assert torch.equal(rows[i], cache.targets(0, torch.tensor([v]))[0])


# ---------------------------------------------------------------------------------------------
# files, resume, sharing


def test_manifest_and_chunks(tmp_path, digits, teacher):
    train_ds, _ = digits
    manifest = build(tmp_path / "c", train_ds, teacher, epochs=2, store="hard")
    on_disk = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert on_disk == manifest and manifest["complete"] and manifest["rows_per_epoch"] == 40
    for chunk in manifest["chunks"]:
        path = tmp_path / "c" / chunk["file"]
        import hashlib

        assert hashlib.sha256(path.read_bytes()).hexdigest() == chunk["sha256"]
        arrays = load_file(str(path))  # a real safetensors file
        assert arrays["hard"].dtype == np.int16 and arrays["hard"].shape == (40,)
    fp = manifest["fingerprint"]
    assert fp["views"]["aa"] == "rand-m9-mstd0.5-inc1" and fp["views"]["aug_repeats"] == 3
    assert fp["dataset"]["num_samples"] == 40 and fp["teacher"] == TEACHER
    assert set(fp["versions"]) >= {"torch", "timm", "numpy", "pillow"}
    assert not [p for p in os.listdir(tmp_path / "c") if p.endswith(".tmp")]


def test_resume_and_extend_redo_nothing(tmp_path, digits):
    train_ds, _ = digits
    first = CountingTeacher()
    build(tmp_path / "c", train_ds, first, epochs=2)
    assert first.images == 80
    again = CountingTeacher()
    build(tmp_path / "c", train_ds, again, epochs=3)  # extends by one epoch
    assert again.images == 40
    # a chunk renamed into place whose sidecar never got written is adopted, not recomputed
    (tmp_path / "c" / "epoch-0001.json").unlink()
    third = CountingTeacher()
    manifest = build(tmp_path / "c", train_ds, third, epochs=3)
    assert third.images == 0 and manifest["complete"] and len(manifest["chunks"]) == 3


def test_build_covers_every_position_whatever_the_batch_size(tmp_path, digits):
    train_ds, _ = digits
    teacher = CountingTeacher()
    manifest = build(tmp_path / "c", train_ds, teacher, epochs=1, args=make_args(batch_size=6))
    assert teacher.images == manifest["rows_per_epoch"] == 40  # 6 batches of 6 and one of 4
    reference = build(tmp_path / "r", train_ds, CountingTeacher(), epochs=1, args=make_args(batch_size=8))
    assert manifest["chunks"][0]["sha256"] == reference["chunks"][0]["sha256"]


def test_processes_share_the_work_by_epoch(tmp_path, digits):
    train_ds, _ = digits
    reference = build(tmp_path / "one", train_ds, CountingTeacher(), epochs=3)
    ranks = [CountingTeacher(), CountingTeacher()]
    build(tmp_path / "two", train_ds, ranks[1], epochs=3, rank=1, world_size=2)
    manifest = build(tmp_path / "two", train_ds, ranks[0], epochs=3, rank=0, world_size=2)
    assert [t.images for t in ranks] == [80, 40]  # epochs 0, 2 and epoch 1
    assert manifest["complete"]
    assert [c["sha256"] for c in manifest["chunks"]] == [c["sha256"] for c in reference["chunks"]]


@pytest.mark.slow
def test_sigkilled_build_resumes_to_the_same_cache(tmp_path, digits):
    """A build killed with SIGKILL mid-way resumes without redoing finished epochs, bit-identical."""
    train_ds, _ = digits
    root = Path(train_ds.reader.root).parent
    script = tmp_path / "build.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time, torch
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_cache import CountingTeacher, make_args, TEACHER
        from timm_deit_distill.cache import build_cache
        from source_fixtures import open_folder

        class Slow(CountingTeacher):
            def forward(self, x):
                time.sleep(0.3)
                return super().forward(x)

        train_ds, _ = open_folder({str(root)!r})
        args = make_args()
        build_cache(train_ds, args.view, args.loader, Slow(), {str(tmp_path / 'c')!r}, epochs=4,
                    store="hard", teacher_description=TEACHER)
    """))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(script)], env=env)
    deadline = time.time() + 120
    while not (tmp_path / "c" / "epoch-0001.json").exists():
        assert proc.poll() is None and time.time() < deadline, "the build ended before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = sorted(p.name for p in (tmp_path / "c").glob("epoch-*.json"))
    assert 2 <= len(done) < 4
    resumed = CountingTeacher()
    manifest = build(tmp_path / "c", train_ds, resumed, epochs=4)
    assert resumed.images == 40 * (4 - len(done))
    clean = build(tmp_path / "clean", train_ds, CountingTeacher(), epochs=4)
    assert [c["sha256"] for c in manifest["chunks"]] == [c["sha256"] for c in clean["chunks"]]
    assert not [p for p in os.listdir(tmp_path / "c") if p.endswith(".tmp")]


# ---------------------------------------------------------------------------------------------
# refusals


def test_changed_settings_are_refused_by_name(tmp_path, digits, teacher):
    train_ds, _ = digits
    build(tmp_path / "c", train_ds, teacher, epochs=2)
    cache = TeacherTargetCache.open(tmp_path / "c")
    with pytest.raises(CacheMismatch, match=r"views\.reprob: cache 0\.25, now 0\.1"):
        check(cache, make_args(reprob=0.1), train_ds, 2)
    with pytest.raises(CacheMismatch, match=r"views\.mixup: cache 0\.8, now 0\.5; views\.seed: cache 0, now 1"):
        check(cache, make_args(seed=1, mixup=0.5), train_ds, 2)
    with pytest.raises(CacheMismatch, match=r"views\.input_size: cache \[3, 32, 32\], now \[3, 48, 48\]"):
        check(cache, make_args(data_config={**DATA_CONFIG, "input_size": (3, 48, 48)}), train_ds, 2)
    with pytest.raises(CacheMismatch, match="deterministic_aug: cache True, now False.*--deterministic-aug"):
        check(cache, make_args(deterministic_aug=False), train_ds, 2)
    with pytest.raises(CacheMismatch, match="soft distillation needs logits.*--store full"):
        check(cache, make_args(distill_type="soft"), train_ds, 2)
    with pytest.raises(CacheMismatch, match="teacher: cache 'resnet18', now 'regnety_160'"):
        check(cache, make_args(distill_teacher="regnety_160"), train_ds, 2)
    # and a rebuild into the same directory with other settings
    with pytest.raises(CacheMismatch, match=r"views\.hflip: cache 0\.5, now 0\.0.*another --out"):
        build(tmp_path / "c", train_ds, teacher, args=make_args(hflip=0.0))


def test_changed_dataset_is_refused(tmp_path, digits, teacher):
    train_ds, _ = digits
    build(tmp_path / "c", train_ds, teacher, epochs=1)
    import copy

    smaller = copy.copy(train_ds)
    smaller.reader = copy.copy(train_ds.reader)
    smaller.reader.samples = train_ds.reader.samples[1:]
    with pytest.raises(CacheMismatch, match=r"dataset\.files_sha256.*dataset\.num_samples: cache 40, now 39"):
        check(TeacherTargetCache.open(tmp_path / "c"), make_args(), smaller, 1)


def test_training_past_the_cached_epochs_is_refused_with_the_numbers(tmp_path, digits, teacher):
    train_ds, _ = digits
    build(tmp_path / "c", train_ds, teacher, epochs=2)
    with pytest.raises(CacheMismatch, match=r"epochs 0-4 \(5 epochs\).*holds 2 \(epochs 0-1\); missing: 2-4.*--epochs 5"):
        check(TeacherTargetCache.open(tmp_path / "c"), make_args(), train_ds, 5)


def test_row_check_catches_an_ordering_bug(tmp_path, digits, teacher):
    train_ds, _ = digits
    build(tmp_path / "c", train_ds, teacher, epochs=2)
    cache = opened(tmp_path / "c", make_args(), train_ds, 2)
    cache.targets(0, torch.arange(8))
    # training computes another order for the same settings (e.g. a changed layout in an unreleased
    # version): the fingerprint cannot see it, the stored sample indices can
    cache._layout = ViewLayout(len(train_ds), seed=1, repeats=3, group_size=2, grouped=True)
    cache._open_epoch = None
    with pytest.raises(CacheError, match="cache row .* of epoch 0 was computed for another image"):
        cache.targets(0, torch.arange(8))


def test_corrupted_chunk_and_bad_inputs(tmp_path, digits, teacher, monkeypatch):
    train_ds, _ = digits
    build(tmp_path / "c", train_ds, teacher, epochs=1)
    chunk = tmp_path / "c" / "epoch-0000.safetensors"
    data = bytearray(chunk.read_bytes())
    data[-1] ^= 0x01
    chunk.write_bytes(bytes(data))
    # Caught before training starts (check_training hashes the chunks a run needs) ...
    with pytest.raises(CacheError, match="epoch-0000.safetensors does not match its sha256.*rerun `deit-distill cache build`"):
        opened(tmp_path / "c", make_args(), train_ds, 1)
    # ... and, beyond the up-front hashing budget, when the epoch is loaded.
    import timm_deit_distill.cache.replay as cache_module

    monkeypatch.setattr(cache_module, "HASH_UP_FRONT_BYTES", 0)
    cache = opened(tmp_path / "c", make_args(), train_ds, 1)
    with pytest.raises(CacheError, match="does not match its sha256.*rerun `deit-distill cache build`"):
        cache.targets(0, torch.arange(4))
    with pytest.raises(CacheError, match="no teacher target cache.*cache build"):
        TeacherTargetCache.open(tmp_path / "nothing")
    with pytest.raises(CacheError, match="check_training"):
        TeacherTargetCache.open(tmp_path / "c").targets(0, torch.arange(4))
    for spec in ("topk", "topk:0", "soft", "full:int8"):
        with pytest.raises(CacheError, match="use hard, topk:K"):
            CacheStore.parse(spec)


def test_store_sizes_match_the_imagenet_figures():
    """ImageNet-1k x 300 epochs: hard ~0.77 GB, top-5 ~7.7 GB, full fp16 ~769 GB (+1 byte/view row check)."""
    views = 1_281_167 * 300
    check = views
    assert CacheStore.parse("hard").bytes_per_view(1000) * views - check == pytest.approx(0.77e9, rel=0.01)
    assert CacheStore.parse("topk:5").bytes_per_view(1000) * views - check == pytest.approx(7.7e9, rel=0.01)
    assert CacheStore.parse("full:fp16").bytes_per_view(1000) * views - check == pytest.approx(769e9, rel=0.01)


# ---------------------------------------------------------------------------------------------
# the teacher check a build recorded stands for the teacher at replay


def test_a_cache_whose_teacher_was_never_measured_is_refused_unless_the_run_skips_the_check(tmp_path, digits,
                                                                                           teacher, caplog):
    train_ds, _ = digits
    args = make_args()
    build(tmp_path / "c", train_ds, teacher, epochs=1, teacher_check=None)  # built with --no-teacher-check
    cache = TeacherTargetCache.open(tmp_path / "c")
    with pytest.raises(CacheError, match="was never measured .* fix: rebuild it without --no-teacher-check, or "
                                         "pass --no-teacher-check to accept it"):
        cache.check_training(args.view, train_ds, 1, distill_type="hard", teacher=args.teacher)
    skipped = dataclasses.replace(args.teacher, check=False)
    with caplog.at_level("WARNING"):
        cache.check_training(args.view, train_ds, 1, distill_type="hard", teacher=skipped)
    assert "Teacher check skipped (--no-teacher-check)" in caplog.text and cache.teacher_check is None


def test_an_explicit_min_top1_is_held_against_the_recorded_figure(tmp_path, digits, teacher):
    train_ds, _ = digits
    args = make_args()
    build(tmp_path / "c", train_ds, teacher, epochs=1)
    cache = TeacherTargetCache.open(tmp_path / "c")
    with pytest.raises(CacheError, match=r"scored top-1 90.00% on 40 validation images when it was built, below "
                                         r"--teacher-min-top1 95"):
        cache.check_training(args.view, train_ds, 1, distill_type="hard",
                             teacher=dataclasses.replace(args.teacher, min_top1=95.0))
    cache.check_training(args.view, train_ds, 1, distill_type="hard",
                         teacher=dataclasses.replace(args.teacher, min_top1=85.0))
    assert cache.teacher_check == CHECKED


def test_a_rebuild_recomputes_a_chunk_altered_on_disk(tmp_path, digits, caplog):
    train_ds, _ = digits
    first = build(tmp_path / "c", train_ds, CountingTeacher(), epochs=2)
    chunk = tmp_path / "c" / first["chunks"][1]["file"]
    raw = bytearray(chunk.read_bytes())
    raw[-1] ^= 0x01  # same size, other bytes: what a rebuild used to report as complete
    chunk.write_bytes(bytes(raw))
    again = CountingTeacher()
    with caplog.at_level("WARNING"):
        second = build(tmp_path / "c", train_ds, again, epochs=2)
    assert again.images == 40  # only the altered epoch was recomputed
    assert "cache epoch 1: epoch-0001.safetensors does not match the sha256 recorded" in caplog.text
    assert second["chunks"] == first["chunks"] and second["complete"]
    assert sha256_file(chunk) == first["chunks"][1]["sha256"]
