"""DistilledStudent and DeiTDistillationTask: same numbers in all three loops, equal to timm's own task."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import pytest
import timm
import torch
import torch.distributed as dist
import torch.nn as nn
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from timm.task import TokenDistillationTask, TrainingTask
from torch.nn.parallel import DistributedDataParallel

from timm_deit_distill.losses import DistillationLoss
from timm_deit_distill.task import (
    DeiTDistillationTask,
    DistilledOutput,
    DistilledStudent,
    student_data_config,
)
from timm_deit_distill.teacher import DistillationTeacher, TeacherError, TeacherPath

CLASSES = 10


def _student(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    # pretrained_cfg keeps saying 224px here (timm's trap); the model really takes 32px.
    return timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, img_size=32, patch_size=8,
                             depth=2, num_classes=CLASSES)


def _convnet_teacher(classes: int = CLASSES) -> nn.Module:
    torch.manual_seed(1)
    return timm.create_model("resnet10t", pretrained=False, num_classes=classes).eval()


def _vit_teacher() -> nn.Module:
    torch.manual_seed(2)  # its normalisation (mean=std=0.5) differs from the student's ImageNet one
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=1,
                             num_classes=CLASSES).eval()


@pytest.fixture
def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, CLASSES, (4,), generator=g)


def _grads(module: nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in module.parameters() if p.grad is not None]


def _assert_same_grads(a: nn.Module, b: nn.Module) -> None:
    grads_a, grads_b = _grads(a), _grads(b)
    assert len(grads_a) == len(grads_b) > 0
    for ga, gb in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-6)


def test_student_data_config_reads_the_real_input_size():
    config = student_data_config(_student())
    assert config["input_size"] == (3, 32, 32)
    assert config["mean"] == pytest.approx((0.485, 0.456, 0.406))


def test_hard_mode_equals_timms_token_distillation_task(data):
    x, y = data
    student, teacher = _student(), _convnet_teacher()
    theirs = TokenDistillationTask(copy.deepcopy(student), copy.deepcopy(teacher), criterion=nn.CrossEntropyLoss(),
                                   distill_type="hard", task_loss_weight=0.5, verbose=False).train()
    ours = DeiTDistillationTask(copy.deepcopy(student), copy.deepcopy(teacher), nn.CrossEntropyLoss(),
                                distillation_type="hard", alpha=0.5, teacher_kwargs={"precision": "fp32"}).train()
    expected, result = theirs(x, y), ours(x, y)
    for key in ("loss", "output", "task_loss", "distill_loss"):
        torch.testing.assert_close(result[key], expected[key].detach() if key != "loss" else expected[key])
    expected["loss"].backward()
    result["loss"].backward()
    _assert_same_grads(ours.trainable_module, theirs.trainable_module)


@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_batchmean_soft_term_equals_timms_and_deits_is_c_times_smaller(data, tau):
    x, y = data
    student, teacher = _student(), _vit_teacher()  # both tasks renormalise the input for this teacher
    theirs = TokenDistillationTask(copy.deepcopy(student), copy.deepcopy(teacher), criterion=nn.CrossEntropyLoss(),
                                   distill_type="soft", temperature=tau, task_loss_weight=0.5, verbose=False).train()
    expected = theirs(x, y)
    parts = {}
    for reduction in ("batchmean", "deit"):
        ours = DeiTDistillationTask(copy.deepcopy(student), copy.deepcopy(teacher), nn.CrossEntropyLoss(),
                                    distillation_type="soft", alpha=0.5, tau=tau, soft_reduction=reduction,
                                    teacher_kwargs={"precision": "fp32"}).train()
        parts[reduction] = ours(x, y)
    torch.testing.assert_close(parts["batchmean"]["distill_loss"], expected["distill_loss"], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(parts["batchmean"]["loss"], expected["loss"].detach(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(parts["deit"]["distill_loss"] * CLASSES, expected["distill_loss"], rtol=1e-5, atol=1e-7)


def test_three_loops_give_the_same_loss_and_gradients(data):
    x, y = data
    student, teacher_model = _student(), _convnet_teacher()
    teacher = DistillationTeacher.create(copy.deepcopy(teacher_model), num_classes=CLASSES, precision="fp32")
    kwargs = dict(distillation_type="soft", alpha=0.3, tau=2.0)

    # 1. DeiT's engine: criterion(samples, outputs, targets)
    engine_student = copy.deepcopy(student).train()
    engine_student.set_distilled_training(True)
    engine_loss = DistillationLoss(nn.CrossEntropyLoss(), teacher, kwargs["distillation_type"], kwargs["alpha"],
                                   kwargs["tau"])
    loss_engine = engine_loss(x, engine_student(x), y)
    # ... and with the plain teacher module, called exactly as DeiT calls it
    plain_loss = DistillationLoss(nn.CrossEntropyLoss(), teacher_model, "soft", 0.3, 2.0)
    torch.testing.assert_close(plain_loss(x, engine_student(x), y), loss_engine)

    # 2. timm-style: loss_fn(model(x), y)
    wrapped = DistilledStudent(copy.deepcopy(student), teacher).train()
    output = wrapped(x)
    assert isinstance(output, DistilledOutput)
    loss_timm_style = DistillationLoss(nn.CrossEntropyLoss(), None, "soft", 0.3, 2.0)(output, y)

    # 3. timm's Task API: task(input, target)
    task = DeiTDistillationTask(copy.deepcopy(student), teacher, nn.CrossEntropyLoss(), **kwargs).train()
    loss_task = task(x, y)["loss"]

    torch.testing.assert_close(loss_timm_style, loss_engine)
    torch.testing.assert_close(loss_task, loss_engine)
    for loss in (loss_engine, loss_timm_style, loss_task):
        loss.backward()
    _assert_same_grads(wrapped.student, engine_student)
    _assert_same_grads(task.trainable_module, engine_student)


def test_mixed_inputs_and_soft_targets_reach_teacher_and_criterion(data):
    x, y = data
    mixup = Mixup(mixup_alpha=0.8, cutmix_alpha=0.0, label_smoothing=0.1, num_classes=CLASSES)
    torch.manual_seed(0)
    mixed_x, soft_y = mixup(x.clone(), y.clone())
    assert soft_y.shape == (4, CLASSES)
    teacher = DistillationTeacher.create(_convnet_teacher(), num_classes=CLASSES, precision="fp32")
    task = DeiTDistillationTask(_student(), teacher, SoftTargetCrossEntropy(), "hard").train()
    result = task(mixed_x, soft_y)
    reference = DistillationLoss(SoftTargetCrossEntropy(), teacher, "hard", 0.5, 1.0)
    task.trainable_module.set_distilled_training(True)
    torch.testing.assert_close(result["loss"], reference(mixed_x, task.trainable_module(mixed_x), soft_y))


def test_distilled_student_state_dict_is_the_students_alone(data):
    x, _ = data
    student = _student()
    wrapped = DistilledStudent(student, _convnet_teacher())
    state = wrapped.state_dict()
    assert list(state) == list(student.state_dict())
    assert all(torch.equal(state[k], v) for k, v in student.state_dict().items())
    other = DistilledStudent(_student(seed=5), _convnet_teacher())
    other.load_state_dict(state)  # strict, plain student keys
    other.eval()
    wrapped.eval()
    torch.testing.assert_close(other(x), wrapped(x))
    fresh = _student(seed=6)
    fresh.load_state_dict(state)  # a plain timm student loads the checkpoint
    # Nested in a parent, the wrapper still saves and loads the student's keys under the parent's prefix.
    parent = nn.Sequential(OrderedDict(net=wrapped))
    nested = parent.state_dict()
    assert list(nested) == [f"net.{k}" for k in student.state_dict()]
    nn.Sequential(OrderedDict(net=other)).load_state_dict(nested)


def test_distilled_student_modes_and_teacher_isolation(data):
    x, _ = data
    student = _student()
    wrapped = DistilledStudent(student, _convnet_teacher())
    wrapped.train()
    assert not wrapped.teacher.training and not wrapped.teacher.model.training
    out = wrapped(x)
    assert out.teacher_logits.shape == (4, CLASSES) and out.dist_logits.shape == (4, CLASSES)
    wrapped.eval()
    fused = wrapped(x)
    assert isinstance(fused, torch.Tensor)
    torch.testing.assert_close(fused, (out.cls_logits + out.dist_logits).detach() / 2, rtol=1e-5, atol=1e-6)
    assert {id(p) for p in wrapped.parameters()} == {id(p) for p in student.parameters()}
    assert wrapped.num_classes == CLASSES and wrapped.pretrained_cfg is student.pretrained_cfg
    assert "student.cls_token" in wrapped.no_weight_decay()


def test_task_contract_checkpoint_ema_and_compile(data):
    x, y = data
    student = _student()
    task = DeiTDistillationTask(student, _convnet_teacher(), distillation_type="hard")
    assert isinstance(task, TrainingTask) and task.get_trainable_module() is student
    task.train()
    assert student.training and not task.teacher.training
    state = task.get_checkpoint_state()
    assert list(state) == ["state_dict"] and list(state["state_dict"]) == list(student.state_dict())
    task.setup_ema(decay=0.9)
    assert list(task.get_checkpoint_state(ema=True)["state_dict_ema"]) == list(student.state_dict())
    task.compile(backend="eager")
    result = task(x, y)
    assert set(result) == {"loss", "output", "task_loss", "distill_loss"}
    result["loss"].backward()
    assert list(task.get_checkpoint_state()["state_dict"]) == list(student.state_dict())  # no _orig_mod.
    assert all(p.grad is None for p in task.teacher.model.parameters())


def test_prepare_distributed_wraps_only_the_student(tmp_path, data):
    x, y = data
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        student = _student()
        task = DeiTDistillationTask(student, _convnet_teacher(), distillation_type="hard").prepare_distributed()
        assert isinstance(task.trainable_module, DistributedDataParallel)
        assert task.trainable_module.module is student
        assert not isinstance(task.teacher, DistributedDataParallel)
        assert {id(p) for p in task.trainable_module.parameters()} == {id(p) for p in student.parameters()}
        task.train()
        task(x, y)["loss"].backward()
        assert list(task.get_checkpoint_state()["state_dict"]) == list(student.state_dict())
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_under_ddp_every_process_runs_the_teacher_on_the_path_process_0_measured(tmp_path):
    import json

    out = tmp_path / "paths.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "MASTER_ADDR": "127.0.0.1",
           "DEIT_DISTILL_TEACHER_PATHS": "",  # measure now, do not recall
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(Path(__file__).parent / "ddp_task_worker.py"), str(out)],
        capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    seen = json.loads(out.read_text())
    assert seen["paths"][0] == seen["paths"][1] != "None"
    assert seen["reasons"][1] == "chosen by process 0" and seen["reasons"][0] != seen["reasons"][1]


def test_task_builds_the_teacher_for_the_students_data(tmp_path):
    path = tmp_path / "teacher.pth"
    torch.save(_vit_teacher().state_dict(), path)
    task = DeiTDistillationTask(_student(), "vit_tiny_patch16_224",
                                teacher_kwargs={"checkpoint_path": path, "model_kwargs": {"img_size": 32,
                                                "patch_size": 8, "depth": 1}})
    assert task.teacher.num_classes == CLASSES and task.teacher.adapts_normalisation
    assert task.teacher.description["input_size"] == [3, 32, 32]


def test_wrong_teacher_or_student_is_refused_before_training():
    with pytest.raises(TeacherError, match="7 classes"):
        DeiTDistillationTask(_student(), _convnet_teacher(classes=7))
    with pytest.raises(TeacherError, match="7 classes"):
        DistilledStudent(_student(), _convnet_teacher(classes=7))
    with pytest.raises(ValueError, match="needs a teacher_model"):
        DeiTDistillationTask(_student(), None, distillation_type="soft")
    # a single-head student is DeiT's "usual"/"hard" distillation (tests/test_heads.py); timm's token task needs two
    with pytest.raises(ValueError, match="has no distillation head"):
        DeiTDistillationTask(timm.create_model("resnet10t", num_classes=CLASSES), _convnet_teacher(), heads="two")
    with pytest.raises(ValueError, match="alpha"):
        DeiTDistillationTask(_student(), _convnet_teacher(), alpha=2.0)


def test_none_type_trains_both_heads_on_the_labels_as_timm_does(data):
    """Without a teacher a distilled student trains both heads through their average (timm's train.py, and the
    trainer): training the class head alone left the distillation head at its initialisation while evaluation
    averages the two."""
    x, y = data
    student = _student()
    task = DeiTDistillationTask(student, None, nn.CrossEntropyLoss(), distillation_type="none").train()
    result = task(x, y)
    torch.testing.assert_close(result["loss"], nn.functional.cross_entropy(result["output"], y))
    assert result["distill_loss"].item() == 0.0
    result["loss"].backward()
    assert student.head_dist.weight.grad is not None and student.head_dist.weight.grad.abs().sum() > 0
    with torch.no_grad():
        torch.testing.assert_close(result["output"], student.eval()(x))  # what evaluation scores


def test_no_forward_measures_the_teacher_or_writes_a_file(data, tmp_path, monkeypatch, teacher_timings):
    """A teacher left on precision 'auto' runs eager fp32 in a Task's, a DistilledStudent's or the loss's forward:
    measuring is select_teacher_path / select_path, an explicit call, never a side effect (timing runs and a write
    under the user's cache folder on a training run's first batch)."""
    from timm_deit_distill.teacher import tuning

    x, y = data
    monkeypatch.setenv("DEIT_DISTILL_TEACHER_PATHS", str(tmp_path / "paths.json"))

    def measured(*args, **kwargs):
        raise AssertionError("a forward measured the teacher's paths")

    monkeypatch.setattr(tuning, "select_path", measured)
    task = DeiTDistillationTask(_student(), _convnet_teacher(), distillation_type="hard").train()
    wrapped = DistilledStudent(_student(), _convnet_teacher()).train()
    teacher = DistillationTeacher.create(_convnet_teacher(), num_classes=CLASSES)
    loss = DistillationLoss(nn.CrossEntropyLoss(), teacher, "soft", 0.5, 2.0)
    student = _student()
    student.set_distilled_training(True)
    task(x, y)["loss"].backward()
    wrapped(x)
    loss(x, student(x), y).backward()
    for used in (task.teacher, wrapped.teacher, teacher):
        assert str(used.path) == "fp32 eager" and used.path_choice.how == "default"
    assert set(teacher_timings.calls) <= {TeacherPath("fp32", False)}
    assert list(tmp_path.iterdir()) == []


def test_select_teacher_path_is_the_explicit_measurement(data, teacher_timings):
    x, y = data
    teacher_timings.set({TeacherPath("fp32", False): 10.0, TeacherPath("bf16", False): 4.0})
    task = DeiTDistillationTask(_student(), _convnet_teacher(), distillation_type="hard")
    assert task.teacher.path is None
    g = torch.Generator().manual_seed(3)
    batches = [(torch.randn(8, 3, 32, 32, generator=g), y) for _ in range(5)]
    choice = task.select_teacher_path(batches, steps=10_000, batch_size=8)
    assert choice.how == "measured" and task.teacher.path == choice.path is not None
    assert TeacherPath("bf16", False) in teacher_timings.calls  # the candidates were timed, here and only here
    assert DeiTDistillationTask(_student(), None, distillation_type="none").select_teacher_path([(x, y)]) is None


@pytest.mark.slow
def test_examples_run(tmp_path):
    examples = Path(__file__).resolve().parents[1] / "examples"
    for script in ("deit_engine_loop.py", "timm_style_loop.py", "task_api.py"):
        done = subprocess.run(
            [sys.executable, str(examples / script), "--workdir", str(tmp_path), "--steps", "2",
             "--batch-size", "8", "--teacher-epochs", "1"],
            capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert done.returncode == 0, f"{script}: {done.stderr[-2000:]}"
        assert "teacher val top-1" in done.stdout and "student val top-1" in done.stdout
