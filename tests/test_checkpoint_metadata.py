"""RunMetadata: the one typed record of a run's metadata. The trainer writes it (``deit_distill``, key for key as
before); the one reader understands this package's checkpoints, timm train.py's (its ``args``: ``model_kwargs``,
the data flags, ``kd_*``) and facebookresearch/deit main.py's (``model`` + ``args``); eval, push and teacher loading
read timm's and DeiT's checkpoints through it, checked against timm's own models, data config and loaders."""

from __future__ import annotations

import json
import pickle

import pytest
import timm
import torch
import yaml
from foreign_checkpoints import deit_main_checkpoint, timm_train_args, timm_train_checkpoint
from timm.data import create_dataset, create_transform, resolve_data_config
from timm.utils import accuracy
from train_fixtures import FAST, STUDENT, STUDENT_KWARGS, digits, load

from timm_deit_distill.checkpoint import NOT_RECORDED, RunMetadata, create_model_from_checkpoint
from timm_deit_distill.commands import evaluate, train
from timm_deit_distill.hub import save_pretrained
from timm_deit_distill.teacher import DistillationTeacher

VARIANT = "deit_tiny_distilled_patch4_32"
# The deit_distill dict as the trainer has written it (the format checkpoints keep, byte for byte).
KEYS = ["model", "model_kwargs", "pretrained_cfg", "label_names", "initial_weights", "distill", "recipe", "ema",
        "seed", "data", "world_size", "resumed"]
DISTILL_KEYS = ["teacher", "teacher_description", "type", "alpha", "tau", "soft_reduction"]


@pytest.fixture(scope="module")
def foreign(tmp_path_factory):
    """Checkpoints of timm's train.py (a hard token-distilled tiny DeiT trained with --model-kwargs; a resnet10t
    teacher with --model-kwargs stem_width=16) and of DeiT's main.py (a distilled DeiT, soft, tau 3; timm's
    test_vit, 1000 classes by default, trained on 10 without a teacher), and a digits folder."""
    root = tmp_path_factory.mktemp("foreign")
    torch.manual_seed(5)
    timm_token = timm_train_checkpoint(
        root / "timm-token", teacher=timm.create_model("resnet10t", num_classes=10), model=VARIANT,
        model_kwargs=dict(STUDENT_KWARGS), num_classes=10, kd_model_name="resnet10t", kd_distill_type="token",
        kd_token_distill_type="hard")
    timm_teacher = timm_train_checkpoint(root / "timm-teacher", model="resnet10t", model_kwargs={"stem_width": 16},
                                         num_classes=10, img_size=32, seed=1)
    deit = deit_main_checkpoint(root / "deit", nb_classes=10, model=VARIANT, input_size=32,
                                distillation_type="soft", distillation_tau=3.0, seed=2)
    deit_vit = deit_main_checkpoint(root / "deit-vit", nb_classes=10, model="test_vit", input_size=160, seed=3)
    return {"data": digits(root / "digits", train_per_class=2), "timm_token": timm_token,
            "timm_teacher": timm_teacher, "deit": deit, "deit_vit": deit_vit}


def _model(name, weights, **kwargs):
    """The reference: the architecture built by timm itself, with the weights the program saved."""
    model = timm.create_model(name, **kwargs)
    model.load_state_dict(weights)
    return model.eval()


def _top1(model, data_dir):
    """timm's dataset, eval transform (the model's own data config) and accuracy on the validation split."""
    ds = create_dataset("", root=str(data_dir / "validation"),
                        transform=create_transform(**resolve_data_config({}, model=model)))
    x, y = torch.stack([ds[i][0] for i in range(len(ds))]), torch.tensor([ds[i][1] for i in range(len(ds))])
    with torch.inference_mode():
        return accuracy(model(x), y, topk=(1,))[0].item(), len(ds)


# --- the record the trainer writes -----------------------------------------------------------------------------

def test_a_trainer_checkpoint_reads_back_as_the_dict_it_holds(trained_teacher):
    recorded = load(trained_teacher["checkpoint"])["deit_distill"]
    assert list(recorded) == KEYS and list(recorded["distill"]) == DISTILL_KEYS
    meta = RunMetadata.from_checkpoint(load(trained_teacher["checkpoint"]))
    assert (meta.layout, meta.model, meta.num_classes, meta.distils) == ("deit-distill", "resnet10t", 10, False)
    assert (meta.input_hw, meta.input_hw_source) == ((32, 32), "deit_distill.pretrained_cfg.input_size")
    assert meta.distill.teacher_check is NOT_RECORDED  # no teacher: the trainer writes no check
    assert pickle.dumps(meta.as_dict()) == pickle.dumps(recorded)  # same keys, order, values and types


@pytest.mark.slow
def test_a_distilled_run_records_the_teachers_path_and_check_after_its_settings(trained_teacher, tmp_path):
    data = digits(tmp_path / "digits", train_per_class=5, val_fraction=0.2)
    assert train.main(["--data-dir", str(data), *STUDENT, *FAST, "--epochs", "1", "--img-size", "16",
                       "--distill-teacher-path", str(trained_teacher["checkpoint"]), "--teacher-precision", "fp32",
                       "--teacher-compile", "no", "--output", str(tmp_path), "--experiment", "run"]) == 0
    checkpoint = load(tmp_path / "run" / "last.pth.tar")
    recorded = checkpoint["deit_distill"]
    assert list(recorded) == KEYS and list(recorded["distill"]) == [*DISTILL_KEYS, "teacher_path", "teacher_check",
                                                                                       "family", "heads"]
    meta = RunMetadata.from_checkpoint(checkpoint)
    assert pickle.dumps(meta.as_dict()) == pickle.dumps(recorded)
    assert meta.distill.teacher_path["path"].startswith("fp32") and meta.distill.teacher_check["passed"] is True
    assert yaml.safe_load((tmp_path / "run" / "args.yaml").read_text())["teacher_check"] == meta.distill.teacher_check


# --- the other programs' layouts -------------------------------------------------------------------------------

def test_timm_train_checkpoints_are_read_as_timm_built_the_model_and_its_task(foreign):
    meta = RunMetadata.from_checkpoint(load(foreign["timm_token"][0]))
    assert (meta.layout, meta.model, meta.ema, meta.seed) == ("timm", VARIANT, False, 42)
    assert meta.model_kwargs == {**STUDENT_KWARGS, "num_classes": 10}
    assert (meta.distill.teacher, meta.distill.type, meta.distill.tau) == ("resnet10t", "hard", None)
    # timm's weights with neither --task-loss-weight nor --distill-loss-weight: 1 x task + 1 x distillation
    assert (meta.distill.task_loss_weight, meta.distill.distill_loss_weight, meta.distill.alpha) == (1.0, 1.0, None)
    assert meta.label_names is None and meta.data is None and meta.pretrained_cfg is None

    # Every data flag, against timm's own resolve_data_config of the same namespace.
    args = timm_train_args(model="resnet10t", num_classes=10, img_size=48, in_chans=1, gp="max", mean=[0.5],
                           std=[0.25], crop_pct=0.9, interpolation="bilinear", kd_model_name="resnet18",
                           kd_distill_type="token", task_loss_weight=0.3, kd_temperature=2.0)
    meta = RunMetadata.from_timm_args(vars(args))
    assert meta.model_kwargs == {"num_classes": 10, "in_chans": 1, "global_pool": "max"}
    reference = resolve_data_config(vars(args), model=timm.create_model("resnet10t", **meta.model_kwargs))
    recorded = {k: tuple(v) if isinstance(v, list) else v for k, v in meta.pretrained_cfg.items()}
    assert recorded == {k: reference[k] for k in recorded} and reference.keys() - recorded == {"crop_mode"}  # no flag
    assert (meta.input_hw, meta.input_hw_source) == ((48, 48), "args.img_size")
    soft = meta.distill  # timm's token task, soft by default; only --task-loss-weight: distillation = 1 - task
    assert (soft.type, soft.alpha, soft.tau, soft.soft_reduction) == ("soft", pytest.approx(0.7), 2.0, "batchmean")
    assert (soft.task_loss_weight, soft.distill_loss_weight) == (0.3, pytest.approx(0.7))
    no_teacher = RunMetadata.from_timm_args(vars(timm_train_args(model="resnet10t")))
    assert no_teacher.distill.type == "none" and not no_teacher.distils and no_teacher.distill.teacher is None


def test_deit_main_checkpoints_and_plain_state_dicts_record_what_they_hold(foreign):
    meta = RunMetadata.from_checkpoint(load(foreign["deit"][0]))
    assert (meta.layout, meta.model, meta.model_kwargs, meta.ema) == ("deit", VARIANT, {"num_classes": 10}, True)
    assert meta.pretrained_cfg == {"input_size": [3, 32, 32]} and meta.input_hw_source == "args.input_size"
    assert meta.distill.as_dict() == {"teacher": "regnety_160", "teacher_description": None, "type": "soft",
                                      "alpha": 0.5, "tau": 3.0, "soft_reduction": "deit"}
    alone = RunMetadata.from_checkpoint(load(foreign["deit_vit"][0]))  # --distillation-type none (the default)
    assert alone.model_kwargs == {"num_classes": 10} and alone.distill.type == "none" and not alone.distils
    assert alone.distill.teacher is None  # its args name regnety_160, the default of a flag it did not use
    plain = RunMetadata.from_checkpoint(foreign["deit"][1])  # a state dict: weights, nothing about them
    assert plain.layout == "weights" and plain.model is None and plain.model_kwargs is None and plain.distill is None


# --- eval, push and teacher loading read them ------------------------------------------------------------------

def test_eval_evaluates_a_timm_train_checkpoint_trained_with_model_kwargs(foreign, tmp_path):
    path, weights = foreign["timm_token"]
    out = tmp_path / "eval.json"
    assert evaluate.main(["--checkpoint", str(path), "--data-dir", str(foreign["data"]), "--workers", "0",
                          "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    top1, count = _top1(_model(VARIANT, weights, num_classes=10, **STUDENT_KWARGS), foreign["data"])
    assert (result["model"], result["weights"], result["count"]) == (VARIANT, "raw", count)
    assert result["heads"]["fused"]["top1"] == pytest.approx(top1, abs=1e-6)
    model, _ = create_model_from_checkpoint(path)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())


def test_push_names_the_teacher_and_timms_loss_of_a_timm_token_checkpoint(foreign, tmp_path):
    path, weights = foreign["timm_token"]
    folder = save_pretrained(path, tmp_path / "hub")
    card = (folder / "README.md").read_text()
    assert "trained with **hard** distillation through attention from the teacher `resnet10t`" in card
    assert "trained without a teacher" not in card
    assert "| loss weights (timm's train.py) | 1 x task loss + 1 x distillation loss |" in card
    assert "| alpha | n/a |" in card and "- teacher:resnet10t" in card and "- distillation-hard" in card
    config = json.loads((folder / "config.json").read_text())
    assert config["deit_distill"]["distill"]["teacher"] == "resnet10t"
    published = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()  # plain timm reads it back
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        assert torch.equal(published(x), _model(VARIANT, weights, num_classes=10, **STUDENT_KWARGS)(x))


def test_eval_and_push_read_a_deit_main_checkpoint(foreign, tmp_path):
    path, weights = foreign["deit_vit"]  # its classes are in args.nb_classes
    out = tmp_path / "eval.json"
    assert evaluate.main(["--checkpoint", str(path), "--data-dir", str(foreign["data"]), "--workers", "0",
                          "--no-ema", "--json", str(out)]) == 0
    top1, _ = _top1(_model("test_vit", weights, num_classes=10), foreign["data"])
    result = json.loads(out.read_text())
    assert result["model"] == "test_vit" and result["heads"]["fused"]["top1"] == pytest.approx(top1, abs=1e-6)
    assert save_pretrained(path, tmp_path / "vit", use_ema=False).is_dir()
    card = (save_pretrained(foreign["deit"][0], tmp_path / "hub", use_ema=False) / "README.md").read_text()
    assert "trained with **soft** distillation through attention from the teacher `regnety_160`" in card
    assert "| alpha | 0.5 |" in card and "| tau | 3 |" in card and "| soft-loss reduction | deit |" in card


def test_a_teacher_from_a_timm_train_checkpoint_is_built_with_its_model_kwargs(foreign):
    path, weights = foreign["timm_teacher"]
    teacher = DistillationTeacher.create(None, checkpoint_path=path, num_classes=10, precision="fp32",
                                         compile="no", channels_last=False)
    reference = _model("resnet10t", weights, num_classes=10, stem_width=16)
    assert all(torch.equal(teacher.model.state_dict()[k], v) for k, v in weights.items())
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        assert torch.equal(teacher.model(x), reference(x))
    assert teacher.description["input_size"] == [3, 32, 32]  # recorded by timm's --img-size


def test_a_timm_train_checkpoint_trained_with_model_kwargs_starts_and_resumes_a_run(foreign, tmp_path, capsys):
    path, weights = foreign["timm_token"]
    data, flags = foreign["data"], [a if a != "3" else "42" for a in FAST]  # timm's train.py seed: 42
    bare = ["--model", VARIANT, *flags, "--epochs", "2", "--output", str(tmp_path)]
    assert train.main([*STUDENT, *bare[2:], "--data-dir", str(data), "--initial-checkpoint", str(path),
                       "--experiment", "init"]) == 0
    capsys.readouterr()
    # timm's run trained with SGD (its default): its optimizer state does not fit AdamW, said before any work
    assert train.main([*STUDENT, *bare[2:], "--data-dir", str(data), "--resume", str(path),
                       *_timm_token_teacher(tmp_path), "--experiment", "resumed"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "fix: resume with --opt sgd, or add --no-resume-opt" in err, err
    assert not (tmp_path / "resumed").exists()
    assert train.main([*STUDENT, *bare[2:], "--opt", "sgd", "--data-dir", str(data), "--resume", str(path),
                       *_timm_token_teacher(tmp_path), "--experiment", "resumed"]) == 0
    resumed = load(tmp_path / "resumed" / "last.pth.tar")
    assert resumed["epoch"] == 1 and resumed["deit_distill"]["model_kwargs"] == {**STUDENT_KWARGS, "num_classes": 10}
    assert type(resumed["optimizer"]["param_groups"][0]["momentum"]) is float  # SGD's state, stepped on
    capsys.readouterr()
    # Without the run's --model-kwargs the weights do not fit: the one line names the flag that builds them.
    given = "--model-kwargs depth=1 embed_dim=32 num_heads=2"
    for how in (["--initial-checkpoint", str(path), "--experiment", "init2"],
                ["--resume", str(path), "--opt", "sgd", *_timm_token_teacher(tmp_path), "--experiment", "resumed2"]):
        assert train.main([*bare, "--data-dir", str(data), *how]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and given in err, err
        assert not (tmp_path / how[-1]).exists()


def _timm_token_teacher(folder, arch="resnet10t"):
    """The flags of the teacher timm's train.py built from ``--kd-model-name resnet10t`` (its weights as a file:
    nothing is downloaded here), for the hard token distillation the checkpoint's run trained with."""
    path = folder / f"{arch}.pth"
    if not path.exists():
        torch.save(timm.create_model(arch, num_classes=10).state_dict(), path)
    return ["--distill-teacher", arch, "--distill-teacher-path", str(path), "--distill-type", "hard",
            "--no-teacher-check"]


def test_resuming_a_distilled_timm_train_checkpoint_without_its_teacher_is_refused(foreign, tmp_path, capsys):
    # timm's train.py --kd-model-name resnet10t --kd-distill-type token --kd-token-distill-type hard: resumed
    # without a teacher (or with another one) it would train on, silently, as another run
    path, _ = foreign["timm_token"]
    resume = [*STUDENT, *[a if a != "3" else "42" for a in FAST], "--opt", "sgd", "--epochs", "2", "--data-dir",
              str(foreign["data"]), "--output", str(tmp_path), "--resume", str(path)]
    other = _timm_token_teacher(tmp_path, "resnet14t")
    for teacher, after in (([], "none"), (other, "resnet14t (hard distillation)")):
        assert train.main([*resume, *teacher, "--experiment", "resumed"]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1, err
        assert f"teacher resnet10t (hard distillation) -> {after}" in err and "fix:" in err, err
        assert not (tmp_path / "resumed").exists()


def test_push_of_a_timm_logit_checkpoint_names_its_teacher_and_claims_no_second_head(tmp_path):
    # timm's train.py --kd-model-name resnet18 (logit, its default) --model-kwargs stem_width=16 on a resnet10t
    torch.manual_seed(7)
    path, weights = timm_train_checkpoint(tmp_path / "timm-logit", teacher=timm.create_model("resnet18", num_classes=10),
                                          model="resnet10t", model_kwargs={"stem_width": 16}, num_classes=10,
                                          kd_model_name="resnet18", task_loss_weight=0.6)
    folder = save_pretrained(path, tmp_path / "hub")
    card = (folder / "README.md").read_text()
    assert "timm's **logit** distillation from the teacher `resnet18`" in card and "- distillation-logit" in card
    assert "| loss weights (timm's train.py) | 0.6 x task loss + 0.4 x distillation loss |" in card
    assert "trained without a teacher" not in card and "distillation-token" not in card  # it has one head
    published = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        assert torch.equal(published(x), _model("resnet10t", weights, num_classes=10, stem_width=16)(x))


def test_push_of_a_timm_train_run_folder_states_the_results_of_its_summary(tmp_path, caplog):
    # timm's train.py resolves --lr-base-scale and --lr while running: the args.yaml beside its checkpoint holds
    # them as given, and is still that run's
    rows = [{"epoch": 0, "train_loss": 2.25, "eval_loss": 2.1, "eval_top1": 31.25, "eval_top5": 80.5, "lr": 0.01}]
    path, _ = timm_train_checkpoint(tmp_path / "timm-run", teacher=timm.create_model("resnet18", num_classes=10),
                                    model="resnet10t", num_classes=10, kd_model_name="resnet18", summary=rows)
    assert load(path)["args"].lr_base_scale == "linear"
    with caplog.at_level("WARNING"):
        card = (save_pretrained(path, tmp_path / "hub") / "README.md").read_text()
    assert "No `summary.csv`" not in card and "31.25" in card, card
    assert not [r for r in caplog.records if "other settings" in r.getMessage()]


@pytest.mark.parametrize("use_ema", [True, False])
def test_the_card_of_a_timm_train_run_with_model_ema_gives_its_eval_columns_to_the_ema(tmp_path, use_ema):
    # timm's train.py --model-ema: summary.csv's eval_* are the EMA's (eval_metrics = ema_eval_metrics); the raw
    # weights' figures are written nowhere
    rows = [{"epoch": 0, "train_loss": 2.25, "eval_loss": 2.1, "eval_top1": 31.25, "eval_top5": 80.5, "lr": 0.01}]
    path, _ = timm_train_checkpoint(tmp_path / "timm-run", model="resnet10t", num_classes=10, model_ema=True,
                                    summary=rows)
    card = (save_pretrained(path, tmp_path / "hub", use_ema=use_ema) / "README.md").read_text()
    assert "| top-1, EMA weights | 31.25 |" in card, card
    assert "| top-1 | 31.25 |" not in card
