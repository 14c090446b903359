"""DistillationTeacher: every source, explicit weights, class check, input adaptation, isolation, precision."""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import save_for_hf
from timm.utils import CheckpointSaver, ModelEmaV3

from timm_deit_distill.checkpoint import CheckpointError
from timm_deit_distill.teacher import DistillationTeacher, TeacherError

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class NotAWeight:
    """A pickled object that torch.load(weights_only=True) must refuse."""


def _convnet(classes: int = 7, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return timm.create_model("resnet10t", pretrained=False, num_classes=classes).eval()


def _vit(classes: int = 7, img_size: int = 32) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=img_size, patch_size=8,
                             depth=1, num_classes=classes).eval()


@pytest.fixture
def batch() -> torch.Tensor:
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


def _perturbed_ema(model: nn.Module) -> ModelEmaV3:
    """An EMA whose weights differ from the model's, as after some training."""
    ema = ModelEmaV3(model, decay=0.5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ema.update(model)
    return ema


# ---- sources ----------------------------------------------------------------------------------------------

def test_timm_name_with_random_weights(batch, caplog):
    with caplog.at_level(logging.INFO, logger="timm_deit_distill.teacher"):
        teacher = DistillationTeacher.create("resnet10t", pretrained=False, model_kwargs={"num_classes": 7},
                                             num_classes=7, input_size=(3, 32, 32))
    out = teacher(batch)
    assert out.shape == (3, 7) and out.dtype == torch.float32
    assert not out.requires_grad and not torch.is_inference(out)
    description = teacher.description
    assert json.loads(json.dumps(description)) == description
    assert description["name"] == "resnet10t" and description["weights"] == "random"
    assert description["num_classes"] == 7 and description["input_size"] == [3, 32, 32]
    assert "resnet10t" in caplog.text and "7 classes" in caplog.text and "precision" in caplog.text


def test_timm_name_with_tag_and_checkpoint_records_the_tag(tmp_path, batch):
    model = _convnet()
    path = tmp_path / "weights.pth"
    torch.save(model.state_dict(), path)
    teacher = DistillationTeacher.create("resnet10t.c3_in1k", checkpoint_path=path, num_classes=7, precision="fp32")
    assert teacher.description["tag"] == "c3_in1k" and teacher.description["name"] == "resnet10t"
    torch.testing.assert_close(teacher(batch), _logits(model, batch))


def test_pretrained_teacher_refuses_a_class_override():
    with pytest.raises(TeacherError, match="discard the trained head"):
        DistillationTeacher.create("resnet10t", model_kwargs={"num_classes": 7})


def test_nn_module_without_num_classes_is_probed(batch):
    torch.manual_seed(0)
    module = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))
    expected = _logits(module, batch)
    teacher = DistillationTeacher.create(module, num_classes=5, input_size=(3, 32, 32), precision="fp32")
    assert teacher.num_classes == 5
    torch.testing.assert_close(teacher(batch), expected)
    with pytest.raises(TeacherError, match="input_size"):
        DistillationTeacher.create(nn.Sequential(nn.Flatten(), nn.Linear(12, 5)))


def test_local_dir_written_by_save_for_hf(tmp_path, batch):
    model = _convnet()
    # config.json's input_size is the size the teacher runs at: the batch's, so nothing is resized here
    save_for_hf(model, str(tmp_path / "teacher"), safe_serialization=True, data_config={"input_size": (3, 32, 32)})
    teacher = DistillationTeacher.create(f"local-dir:{tmp_path / 'teacher'}", num_classes=7, precision="fp32")
    torch.testing.assert_close(teacher(batch), _logits(model, batch))
    weights = tmp_path / "teacher" / "model.safetensors"
    assert teacher.description["file"] == str(weights.resolve())
    assert teacher.description["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    with pytest.raises(TeacherError, match="10"):
        DistillationTeacher.create(f"local-dir:{tmp_path / 'teacher'}", num_classes=10)
    with pytest.raises(TeacherError, match="config.json"):
        DistillationTeacher.create(f"local-dir:{tmp_path}")


def _offline_hub_cache(cache: Path, repo_id: str, folder: Path) -> None:
    """The layout huggingface_hub serves offline: refs/main -> snapshots/<sha>/<file> -> blobs/<sha256>."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    revision = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    (repo / "blobs").mkdir()
    (repo / "snapshots" / revision).mkdir(parents=True)
    for file in folder.iterdir():
        digest = hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.copy(file, repo / "blobs" / digest)
        os.symlink(f"../../blobs/{digest}", repo / "snapshots" / revision / file.name)


@pytest.mark.slow  # a fresh interpreter: the Hub client reads HF_HUB_OFFLINE/HF_HUB_CACHE at import
def test_hf_hub_id_from_the_local_hub_cache(tmp_path, batch):
    model = _convnet()
    save_for_hf(model, str(tmp_path / "export"), safe_serialization=True, data_config={"input_size": (3, 32, 32)})
    _offline_hub_cache(tmp_path / "hub", "testorg/tiny-teacher", tmp_path / "export")
    torch.save(batch, tmp_path / "batch.pt")
    script = (
        "import json, sys, torch\n"
        "from timm_deit_distill.teacher import DistillationTeacher\n"
        "t = DistillationTeacher.create('hf-hub:testorg/tiny-teacher', num_classes=7, precision='fp32')\n"
        f"torch.save(t(torch.load({str(tmp_path / 'batch.pt')!r})), {str(tmp_path / 'out.pt')!r})\n"
        "print(json.dumps(t.description))\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    description = json.loads(done.stdout.strip().splitlines()[-1])
    assert description["hub_id"] == "testorg/tiny-teacher" and description["num_classes"] == 7
    assert description["sha256"] == hashlib.sha256((tmp_path / "export" / "model.safetensors").read_bytes()).hexdigest()
    torch.testing.assert_close(torch.load(tmp_path / "out.pt"), _logits(model, batch))


def test_unknown_source_and_misplaced_options_are_refused(tmp_path):
    with pytest.raises(TeacherError, match="Unknown teacher"):
        DistillationTeacher.create("no_such_model_anywhere")
    with pytest.raises(TeacherError, match="checkpoint_path"):
        DistillationTeacher.create("resnet10t", pretrained=False, use_ema=True)
    with pytest.raises(CheckpointError, match="does not exist"):
        DistillationTeacher.create("resnet10t", checkpoint_path=tmp_path / "missing.pth")



def test_pretrained_weights_that_cannot_be_fetched_name_the_local_alternatives(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(TeacherError) as error:
        DistillationTeacher.create("resnet10t", pretrained=True)
    message = str(error.value)
    assert "couldn't connect" in message  # the cause, then the fixes for the API and the command line
    assert "checkpoint_path=FILE" in message and "--distill-teacher-path FILE" in message and "local-dir:" in message


# ---- checkpoint files -------------------------------------------------------------------------------------

def test_timm_training_checkpoint_needs_an_explicit_raw_or_ema_choice(tmp_path, batch):
    model = _convnet()
    ema = _perturbed_ema(model)
    # trained at the batch's size (timm's train.py records --img-size), so the teacher runs unresized
    args = argparse.Namespace(model="resnet10t", lr=0.1, mean=None, std=None, img_size=32, input_size=None)
    saver = CheckpointSaver(model, torch.optim.SGD(model.parameters(), lr=0.1), args=args, model_ema=ema,
                            checkpoint_dir=str(tmp_path))
    saver.save_checkpoint(epoch=0, metric=1.0)
    path = tmp_path / "last.pth.tar"
    with pytest.raises(CheckpointError, match="use_ema"):
        DistillationTeacher.create("resnet10t", checkpoint_path=path, num_classes=7)
    raw = DistillationTeacher.create("resnet10t", checkpoint_path=path, use_ema=False, precision="fp32")
    averaged = DistillationTeacher.create(None, checkpoint_path=path, use_ema=True, precision="fp32")  # arch read
    torch.testing.assert_close(raw(batch), _logits(model, batch))
    torch.testing.assert_close(averaged(batch), _logits(ema.module, batch))
    assert not torch.allclose(raw(batch), averaged(batch))
    assert (raw.description["weights"], averaged.description["weights"]) == ("raw", "ema")
    assert raw.description["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_deit_checkpoint_with_model_and_model_ema(tmp_path, batch):
    model = _convnet()
    ema = _perturbed_ema(model)
    path = tmp_path / "deit_checkpoint.pth"
    optimizer = torch.optim.AdamW(model.parameters())
    torch.save({"model": model.state_dict(), "model_ema": ema.module.state_dict(), "optimizer": optimizer.state_dict(),
                "epoch": 299, "args": argparse.Namespace(model="resnet10t", teacher_model="regnety_160", input_size=32)},
               path)
    with pytest.raises(CheckpointError, match="both raw weights"):
        DistillationTeacher.create("resnet10t", checkpoint_path=path)
    raw = DistillationTeacher.create("resnet10t", checkpoint_path=path, use_ema=False, precision="fp32")
    torch.testing.assert_close(raw(batch), _logits(model, batch))
    averaged = DistillationTeacher.create("resnet10t", checkpoint_path=path, use_ema=True, precision="fp32")
    torch.testing.assert_close(averaged(batch), _logits(ema.module, batch))


def test_plain_and_ddp_prefixed_state_dicts(tmp_path, batch):
    model = _convnet()
    path = tmp_path / "plain.pth"
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, path)  # as saved from DDP
    teacher = DistillationTeacher.create("resnet10t", checkpoint_path=path, num_classes=7, precision="fp32")
    torch.testing.assert_close(teacher(batch), _logits(model, batch))
    with pytest.raises(CheckpointError, match="EMA"):
        DistillationTeacher.create("resnet10t", checkpoint_path=path, use_ema=True)


def test_safetensors_file(tmp_path, batch):
    model = _convnet()
    path = tmp_path / "teacher.safetensors"
    safetensors.torch.save_file(model.state_dict(), str(path))
    teacher = DistillationTeacher.create("resnet10t", checkpoint_path=path, num_classes=7, precision="fp32")
    torch.testing.assert_close(teacher(batch), _logits(model, batch))
    assert teacher.description["file"] == str(path.resolve())
    path.write_bytes(path.read_bytes()[:100])  # truncated
    with pytest.raises(CheckpointError, match="truncated: a safetensors file"):
        DistillationTeacher.create("resnet10t", checkpoint_path=path)


def test_checkpoint_with_this_packages_metadata_needs_no_name(tmp_path):
    model = _vit(img_size=32)
    path = tmp_path / "model_best.pth.tar"
    meta = {"model": "vit_tiny_patch16_224",
            "model_kwargs": {"img_size": 32, "patch_size": 8, "depth": 1, "num_classes": 7},
            "pretrained_cfg": {"input_size": [3, 32, 32], "mean": [0.1, 0.2, 0.3], "std": [0.3, 0.2, 0.1]}}
    torch.save({"epoch": 1, "arch": "vit_tiny_patch16_224", "state_dict": model.state_dict(),
                "args": argparse.Namespace(model="vit_tiny_patch16_224"), "deit_distill": meta}, path)
    teacher = DistillationTeacher.create(path, num_classes=7, precision="fp32")  # a file as the source
    assert teacher.fixed_input_hw == (32, 32)
    assert teacher.description["mean"] == [0.1, 0.2, 0.3] and teacher.description["std"] == [0.3, 0.2, 0.1]
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(teacher(x), _logits(model, x))


def _student_run_checkpoint(path: Path) -> Path:
    """A checkpoint as `deit-distill train` writes one for a small DeiT student (its metadata names the model)."""
    import timm_deit_distill  # noqa: F401  (registers the student's architecture)

    kwargs = {"depth": 1, "embed_dim": 32, "num_heads": 2, "num_classes": 7}
    model = timm.create_model("deit_tiny_distilled_patch4_32", **kwargs)
    meta = {"model": "deit_tiny_distilled_patch4_32", "model_kwargs": kwargs,
            "pretrained_cfg": {"input_size": [3, 32, 32]}}
    torch.save({"epoch": 0, "arch": "deit_tiny_distilled_patch4_32", "state_dict": model.state_dict(),
                "args": argparse.Namespace(model="deit_tiny_distilled_patch4_32"), "deit_distill": meta}, path)
    return path


@pytest.mark.parametrize("layout", ["this trainer", "timm train.py", "facebookresearch/deit main.py"])
def test_a_teacher_named_as_another_architecture_than_its_checkpoint_records_is_refused(tmp_path, layout):
    """A DeiT run's checkpoint named as a ResNet teacher passed the DeiT's img_size/depth to ResNet's constructor
    (TypeError); a ResNet checkpoint named as a DeiT blamed missing classifier weights. The file names its
    architecture: the refusal says which, and the flag that fixes it."""
    path = tmp_path / "last.pth.tar"
    if layout == "this trainer":
        _student_run_checkpoint(path)
        given, recorded = "resnet10t", "deit_tiny_distilled_patch4_32"
    elif layout == "timm train.py":
        torch.save({"epoch": 0, "arch": "resnet10t", "state_dict": _convnet().state_dict(),
                    "args": argparse.Namespace(model="resnet10t")}, path)
        given, recorded = "deit_tiny_distilled_patch4_32", "resnet10t"
    else:
        torch.save({"model": _convnet().state_dict(), "epoch": 299, "args": argparse.Namespace(model="resnet10t")},
                   path)
        given, recorded = "vit_tiny_patch16_224", "resnet10t"
    with pytest.raises(TeacherError) as error:
        DistillationTeacher.create(given, checkpoint_path=path, num_classes=7, precision="fp32")
    message = str(error.value)
    assert f"records the architecture {recorded!r}" in message and f"--distill-teacher {recorded}" in message
    assert f"named {given!r}" in message
    if recorded == "resnet10t":  # the architecture with a pretrained tag is the same architecture
        tagged = DistillationTeacher.create("resnet10t.c3_in1k", checkpoint_path=path, precision="fp32")
        assert tagged.description["name"] == "resnet10t"
    # the file alone names its architecture, for every layout (a DeiT main.py file through its args.model)
    alone = DistillationTeacher.create(None, checkpoint_path=path, num_classes=7, precision="fp32")
    assert alone.description["name"] == recorded


def test_unsafe_pickles_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": _convnet().state_dict(), "payload": NotAWeight()}, path)
    with pytest.raises(CheckpointError, match="unsafe to unpickle .GLOBAL test_teacher.NotAWeight"):
        DistillationTeacher.create("resnet10t", checkpoint_path=path)


def test_class_mismatch_names_both_counts_and_the_fix(tmp_path):
    path = tmp_path / "seven.pth"
    torch.save(_convnet(classes=7).state_dict(), path)
    with pytest.raises(TeacherError) as error:
        DistillationTeacher.create("resnet10t", checkpoint_path=path, num_classes=10)
    message = str(error.value)
    assert "7 classes" in message and "10" in message and "trained on your 10 classes" in message
    with pytest.raises(TeacherError, match="1000 classes"):
        DistillationTeacher.create("resnet10t", pretrained=False, num_classes=10)
    with pytest.raises(TeacherError, match="do not fit"):
        DistillationTeacher.create("resnet18", checkpoint_path=path)  # other architecture


# ---- input adaptation -------------------------------------------------------------------------------------

def _capture_input(teacher: DistillationTeacher) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    teacher.model.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    return seen


def test_normalisation_is_what_the_teachers_own_pipeline_gives():
    pixels = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    data_mean, data_std = (0.5, 0.4, 0.3), (0.25, 0.3, 0.2)
    as_loaded = (pixels - torch.tensor(data_mean).view(1, 3, 1, 1)) / torch.tensor(data_std).view(1, 3, 1, 1)
    teacher = DistillationTeacher.create(_convnet(), data_mean=data_mean, data_std=data_std, precision="fp32")
    seen = _capture_input(teacher)
    teacher(as_loaded)
    expected = (pixels - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(seen[0], expected, rtol=1e-5, atol=1e-5)
    # Same normalisation: the input passes unchanged.
    same = DistillationTeacher.create(_convnet(), data_mean=IMAGENET_MEAN, data_std=IMAGENET_STD)
    seen_same = _capture_input(same)
    same(as_loaded)
    assert torch.equal(seen_same[0], as_loaded) and not same.adapts_normalisation


def test_fixed_size_teacher_gets_a_resized_input_and_a_convnet_does_not():
    x = torch.randn(2, 3, 16, 16)
    vit = DistillationTeacher.create(_vit(img_size=32), input_size=(3, 16, 16), data_mean=(0.5,) * 3,
                                     data_std=(0.5,) * 3, precision="fp32")
    assert vit.fixed_input_hw == (32, 32)  # from the model, not its stale 224px pretrained_cfg
    seen = _capture_input(vit)
    assert vit(x).shape == (2, 7)
    expected = F.interpolate(x, size=(32, 32), mode="bicubic", align_corners=False, antialias=True)
    torch.testing.assert_close(seen[0], expected)
    convnet = DistillationTeacher.create(_convnet(), input_size=(3, 16, 16))
    seen = _capture_input(convnet)
    convnet(x)
    assert seen[0].shape == x.shape and convnet.fixed_input_hw is None


# ---- isolation from the student -----------------------------------------------------------------------------

def test_teacher_stays_eval_frozen_and_out_of_state_dicts_and_parameters():
    teacher = DistillationTeacher.create(_convnet())
    student = nn.Linear(4, 7)
    parent = nn.Sequential(OrderedDict(student=student, teacher=teacher))
    parent.train()
    assert not teacher.training and not any(m.training for m in teacher.model.modules())
    assert not any(p.requires_grad for p in teacher.model.parameters())
    assert list(parent.state_dict()) == ["student.weight", "student.bias"]
    assert [id(p) for p in parent.parameters()] == [id(p) for p in student.parameters()]
    parent.load_state_dict(parent.state_dict())  # strict load works without teacher keys


def test_moving_a_parent_moves_the_hidden_teacher():
    teacher = DistillationTeacher.create(_convnet(), data_mean=(0.5,) * 3, data_std=(0.5,) * 3)
    nn.Sequential(teacher).to(torch.float64)
    assert next(teacher.model.parameters()).dtype == torch.float64
    assert teacher.input_scale.dtype == torch.float64


# ---- precision --------------------------------------------------------------------------------------------

def test_precision_and_compile_values_are_checked_before_loading():
    for kwargs, word in (({"precision": "int8"}, "precision"), ({"compile": "maybe"}, "compile")):
        with pytest.raises(TeacherError, match=word):
            DistillationTeacher.create("resnet10t", checkpoint_path="/nonexistent/never-read.pth", **kwargs)


def test_auto_precision_is_not_read_from_cpu_flags():
    # The path is measured (tests/test_teacher_paths.py); until then nothing is assumed from the CPU.
    teacher = DistillationTeacher.create(_convnet())
    assert teacher.path is None and teacher.compute_dtype == torch.float32
    assert teacher.description["precision"] == "auto"


def _first_conv_dtype(teacher: DistillationTeacher, x: torch.Tensor, outer_autocast: bool = False) -> torch.dtype:
    dtypes = []
    conv = next(m for m in teacher.model.modules() if isinstance(m, nn.Conv2d))
    conv.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    if outer_autocast:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = teacher(x)
    else:
        out = teacher(x)
    assert out.dtype == torch.float32
    return dtypes[0]


def test_precision_is_applied_and_fp32_ignores_an_outer_autocast(batch):
    model = _convnet()
    reference = _logits(model, batch)
    bf16 = DistillationTeacher.create(model, precision="bf16")
    assert _first_conv_dtype(bf16, batch) == torch.bfloat16
    assert bf16.description["precision"] == "bf16"
    torch.testing.assert_close(bf16(batch), reference, rtol=0.1, atol=0.1)
    fp32 = DistillationTeacher.create(_convnet(), precision="fp32")
    assert _first_conv_dtype(fp32, batch, outer_autocast=True) == torch.float32


def test_channels_last_for_convnets_only_and_compile(batch):
    convnet = DistillationTeacher.create(_convnet())
    vit = DistillationTeacher.create(_vit())
    assert convnet.channels_last and not vit.channels_last
    assert next(convnet.model.parameters()).dim() != 4 or \
        next(p for p in convnet.model.parameters() if p.dim() == 4).is_contiguous(memory_format=torch.channels_last)
    torch.manual_seed(0)
    small = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))
    expected = _logits(small, batch)
    compiled = DistillationTeacher.create(small, input_size=(3, 32, 32), precision="fp32").compile(backend="eager")
    torch.testing.assert_close(compiled(batch), expected)
    assert compiled.channels_last
