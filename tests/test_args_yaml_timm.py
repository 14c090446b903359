"""The run's args.yaml under timm's train.py ``-c``: every key timm has a flag for holds a value of the kind that
flag takes (/work/shared/reference/timm_train_flags.txt, read from timm's own parser), the device is a string
(timm's train.py does ``args.device.split``), and timm's ``kd_*`` keys make timm's TokenDistillationTask compute
this run's loss: the reference is timm's class, built from the file's values as train.py builds it.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import timm
import torch
import yaml
from timm.task import LogitDistillationTask, TokenDistillationTask
from torch import nn
from train_fixtures import FAST, STUDENT, STUDENT_KWARGS, digits

from timm_deit_distill.commands import train
from timm_deit_distill.errors import UsageError
from timm_deit_distill.factory.api import train_settings
from timm_deit_distill.factory.settings import UnlabeledSettings
from timm_deit_distill.factory.timm_args import timm_distillation_keys, timm_gap
from timm_deit_distill.losses import DistillationLoss

FLAGS = Path("/work/shared/reference/timm_train_flags.txt")
if not FLAGS.is_file():  # the list ships beside the repository on the project's machines only
    FLAGS = Path(__file__).parent / "timm_train_flags.txt"
VARIANT = "deit_tiny_distilled_patch4_32"


def timm_flags() -> dict[str, dict]:
    """dest -> {default, type, nargs, choices, flag} of timm train.py's parser, from the reference list."""
    out = {}
    for line in FLAGS.read_text().splitlines():
        if not line.startswith("-"):
            continue
        names, _, rest = line.partition("=")
        default, _, notes = rest.partition("   (")
        dest = next(n for n in names.split("|") if n.startswith("--"))[2:].replace("-", "_")
        parts = (p.strip() for p in notes.rstrip(")").split(";"))
        out[dest] = {"default": default.strip(),
                     **dict(p.split("=", 1) if "=" in p else (p, True) for p in parts if p)}
    out.pop("config")  # -c itself
    return out


def _kind_fits(value, spec: dict) -> bool:
    """Whether ``value`` (from YAML) is what timm's flag would hold after parsing its own command line."""
    if value is None:
        return spec["default"] == "None" or "nargs" in spec  # timm's own default, or an unset list
    if spec["default"].startswith("{"):  # --model-kwargs / --opt-kwargs (timm's ParseKwargs): a dict
        return isinstance(value, dict)
    if "nargs" in spec and spec["nargs"] != "?":
        return isinstance(value, list) and all(_kind_fits(v, {k: s for k, s in spec.items() if k != "nargs"})
                                               for v in value)
    if spec.get("flag"):
        return isinstance(value, bool)
    if "choices" in spec and str(value) not in spec["choices"].split(","):
        return False
    kind = spec.get("type")
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, str)


def _teacher_dir(path: Path) -> Path:
    """A resnet10t teacher as a `local-dir:` folder (timm's save_for_hf), its config at the student's 32 px:
    timm's create_model(kd_model_name, pretrained=True) and this package build the same teacher from it."""
    torch.manual_seed(0)
    model = timm.create_model("resnet10t", num_classes=10)
    model.pretrained_cfg = {**model.pretrained_cfg, "input_size": (3, 32, 32)}
    timm.models.save_for_hf(model, str(path), safe_serialization=True)
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """DeiT-spelled soft runs (a distilled and a single-head student) and timm-spelled token and logit runs, the
    teacher a `local-dir:` folder."""
    root = tmp_path_factory.mktemp("kd")
    data, teacher = digits(root / "digits", train_per_class=3), _teacher_dir(root / "teacher")
    common = ["--data-dir", str(data), *STUDENT, *FAST, "--epochs", "1", "--no-teacher-check", "--output", str(root)]
    assert train.main([*common, "--distill-teacher", f"local-dir:{teacher}", "--distill-type", "soft",
                       "--distill-alpha", "0.3", "--distill-tau", "2", "--experiment", "soft"]) == 0
    assert train.main([*common, "--kd-model-name", f"local-dir:{teacher}", "--kd-distill-type", "token",
                       "--task-loss-weight", "0.7", "--experiment", "timm"]) == 0
    single = [a for a in common if a not in STUDENT] + ["--model", "resnet10t", "--img-size", "32"]
    assert train.main([*single, "--distill-teacher", f"local-dir:{teacher}", "--distill-type", "soft",
                       "--distill-alpha", "0.3", "--distill-tau", "2", "--experiment", "usual"]) == 0
    assert train.main([*single, "--kd-model-name", f"local-dir:{teacher}", "--task-loss-weight", "0.7",
                       "--experiment", "timm_logit"]) == 0  # timm's default --kd-distill-type: logit
    return {"dir": root / "soft", "teacher": f"local-dir:{teacher}", "data": data,
            "args": {name: yaml.safe_load((root / name / "args.yaml").read_text())
                     for name in ("soft", "timm", "usual", "timm_logit")}}


@pytest.mark.parametrize("name, task, weights", [("soft", "token", (0.7, 0.03)),
                                                  ("timm", "token", (0.7, None)),  # timm's: as given
                                                  ("usual", "logit", (0.7, 0.03)),  # one head: timm's logit task
                                                  ("timm_logit", "logit", (0.7, None))])
def test_every_key_timm_has_a_flag_for_holds_what_that_flag_takes(runs, name, task, weights):
    flags, written = timm_flags(), runs["args"][name]
    assert len(flags) == 171  # the list's 172 options: these and the positional data
    # train.py reads kd_token_distill_type for its token task only: left None for another task, it is inert
    inert = {"kd_token_distill_type"} if written["kd_distill_type"] != "token" else set()
    wrong = {k: v for k, v in written.items()
             if k in flags and not (v is None and k in inert) and not _kind_fits(v, flags[k])}
    assert not wrong
    assert written["device"] == "cpu"  # the device the run used: timm's train.py splits it
    # timm's train.py builds create_model(model, num_classes=args.num_classes): None is the model's 1000 (and its
    # teacher's, whose head is then dropped); this package counted the data's classes
    assert written["num_classes"] == 10
    # the tiny DeiT is this package's variant: timm's train.py knows it after --device-modules imports the package
    plugin = written["model"] == "deit_tiny_distilled_patch4_32"
    assert written["device_modules"] == (["timm_deit_distill"] if plugin else None)
    assert (written["kd_model_name"], written["kd_distill_type"]) == (runs["teacher"], task)
    if task == "token":
        assert written["kd_token_distill_type"] == "soft"
    assert (written["task_loss_weight"], written["distill_loss_weight"]) == pytest.approx(weights)


def _deit_settings(kind, reduction="deit", **teacher):
    """DeiT-spelled distillation settings (the fields timm_distillation_keys reads)."""
    base = dict(source="resnet10t", checkpoint_path=None, input_size=None, mean=None, std=None)
    return SimpleNamespace(distill=SimpleNamespace(type=kind, alpha=0.3, tau=2.0, soft_reduction=reduction,
                                                   family="deit"),
                           teacher=SimpleNamespace(**{**base, **teacher}), distill_cache=None)


AT32 = dict(num_classes=10, teacher_description={"input_size": [3, 32, 32]}, student_input_size=[3, 32, 32])


@pytest.mark.parametrize("kind, reduction", [("soft", "deit"), ("soft", "batchmean"), ("hard", "deit")])
def test_timms_token_task_built_from_the_keys_computes_this_runs_loss(kind, reduction):
    torch.manual_seed(1)
    keys = timm_distillation_keys(_deit_settings(kind, reduction), distilled=True, **AT32)
    assert keys["kd_distill_type"] == "token"
    student = timm.create_model(VARIANT, num_classes=10, **STUDENT_KWARGS)
    student.set_distilled_training(True)
    teacher = timm.create_model("resnet10t", num_classes=10).eval()
    # train.py: TokenDistillationTask(student, teacher, criterion, distill_type=args.kd_token_distill_type, ...)
    task = TokenDistillationTask(student_model=student, teacher_model=teacher, criterion=nn.CrossEntropyLoss(),
                                 distill_type=keys["kd_token_distill_type"],
                                 distill_loss_weight=keys["distill_loss_weight"],
                                 task_loss_weight=keys["task_loss_weight"], temperature=keys["kd_temperature"])
    x, y = torch.randn(6, 3, 32, 32), torch.randint(0, 10, (6,))
    theirs = task(x, y)["loss"]
    ours = DistillationLoss(nn.CrossEntropyLoss(), None, kind, 0.3, 2.0, soft_reduction=reduction)
    with torch.no_grad():
        target = teacher(x)
    assert ours.parts(student(x), y, target)["loss"].item() == pytest.approx(theirs.item(), rel=1e-5)


@pytest.mark.parametrize("reduction", ["deit", "batchmean"])
def test_on_a_single_head_student_deits_soft_distillation_is_timms_logit_task(reduction):
    torch.manual_seed(2)
    keys = timm_distillation_keys(_deit_settings("soft", reduction), distilled=False, **AT32)
    assert (keys["kd_distill_type"], keys["kd_loss_type"]) == ("logit", "kl")
    student = timm.create_model("resnet10t", num_classes=10, stem_width=8)
    teacher = timm.create_model("resnet10t", num_classes=10).eval()
    # train.py: LogitDistillationTask(student, teacher, criterion, loss_type=args.kd_loss_type, ...)
    task = LogitDistillationTask(student_model=student, teacher_model=teacher, criterion=nn.CrossEntropyLoss(),
                                 loss_type=keys["kd_loss_type"], distill_loss_weight=keys["distill_loss_weight"],
                                 task_loss_weight=keys["task_loss_weight"], temperature=keys["kd_temperature"])
    task.train()
    x, y = torch.randn(6, 3, 32, 32), torch.randint(0, 10, (6,))
    theirs = task(x, y)["loss"]
    ours = DistillationLoss(nn.CrossEntropyLoss(), None, "soft", 0.3, 2.0, soft_reduction=reduction,
                            single_head=True)
    with torch.no_grad():
        target = teacher(x)
    assert ours.parts(student(x), y, target)["loss"].item() == pytest.approx(theirs.item(), rel=1e-5)
    assert timm_distillation_keys(_deit_settings("hard"), distilled=False, **AT32) == {}  # no timm task for it


def test_runs_timm_cannot_express_write_no_kd_keys():
    def keys(settings, **where):
        return timm_distillation_keys(settings, distilled=True, **{**AT32, **where})

    assert keys(_deit_settings("hard"))["kd_model_name"] == "resnet10t"
    assert keys(_deit_settings("hard", checkpoint_path="t.pth")) == {}  # timm builds its teacher by name only
    assert keys(_deit_settings("hard", input_size=(3, 64, 64))) == {}
    assert keys(_deit_settings("hard"), teacher_description={"input_size": [3, 224, 224]}) == {}  # timm feeds it
    cached = _deit_settings("hard")  # the student's input
    cached.distill_cache = "cache/"
    assert keys(cached) == {}
    timm_spelled = _deit_settings("soft")
    timm_spelled.distill.family = "timm"  # its options are timm's keys already
    assert keys(timm_spelled) == {}


def test_the_file_read_back_with_c_gives_the_same_settings_and_an_edit_in_one_place_is_refused(runs, tmp_path):
    path = runs["dir"] / "args.yaml"
    settings = train_settings(config=str(path))
    assert (settings.distill.type, settings.distill.alpha, settings.distill.tau) == ("soft", 0.3, 2.0)
    assert settings.distill.soft_reduction == "deit" and settings.teacher.source == runs["teacher"]
    edited = tmp_path / "edited.yaml"
    edited.write_text(path.read_text().replace("distill_tau: 2.0", "distill_tau: 3.0"))
    with pytest.raises(UsageError, match=r"kd_temperature 2\.0 disagrees with distill_tau 3\.0"):
        train_settings(config=str(edited))


def test_push_reads_the_run_folder_whose_args_yaml_holds_timms_keys(runs, tmp_path, caplog):
    # the kd_* keys, num_classes and device_modules are args.yaml's rendering for timm's train.py: the checkpoint
    # beside it is still that run's, and the card states the run's summary.csv
    from timm_deit_distill.hub import save_pretrained

    with caplog.at_level("WARNING"):
        card = (save_pretrained(runs["dir"] / "last.pth.tar", tmp_path / "hub") / "README.md").read_text()
    assert "From the run's `summary.csv`." in card
    assert not [r for r in caplog.records if "beside it" in r.getMessage()]


def test_a_run_timm_cannot_express_says_so_at_the_top_of_its_args_yaml(runs, tmp_path):
    # a teacher from a checkpoint file: timm's train.py would build kd_model_name pretrained; the file has no kd_*
    # keys and its first line says what timm's -c of it does
    file = tmp_path / "resnet10t.pth"
    torch.save(timm.create_model("resnet10t", num_classes=10).state_dict(), file)
    assert train.main(["--data-dir", str(runs["data"]), *STUDENT, *FAST, "--epochs", "1", "--no-teacher-check",
                       "--distill-teacher", "resnet10t", "--distill-teacher-path", str(file), "--distill-type", "hard",
                       "--output", str(tmp_path), "--experiment", "file"]) == 0
    path = tmp_path / "file" / "args.yaml"
    first = path.read_text().splitlines()[0]
    assert first.startswith("# timm's train.py: this run's teacher came from a checkpoint file") and \
        first.endswith("trains without a teacher."), first
    assert yaml.safe_load(path.read_text())["kd_model_name"] is None
    assert train_settings(config=str(path)).teacher.checkpoint_path == str(file)  # the comment is no setting


def test_the_gap_names_why_timm_would_not_distil_as_the_run_did():
    def gap(settings, distilled=True, **where):
        return timm_gap(settings, distilled=distilled, **{k: v for k, v in {**AT32, **where}.items()
                                                          if k != "num_classes"})

    assert gap(_deit_settings("hard")) is None and gap(_deit_settings("soft"), distilled=False) is None
    assert "no timm task" in gap(_deit_settings("hard"), distilled=False)
    assert "its own input size" in gap(_deit_settings("soft", input_size=(3, 64, 64)))
    timm_spelled = _deit_settings("soft", checkpoint_path="t.pth")
    timm_spelled.distill.family = "timm"
    assert "builds kd_model_name pretrained, at the student's input, instead" in gap(timm_spelled)
    none = _deit_settings("none")
    assert gap(none) is None
    with_unlabeled = _deit_settings("hard")
    with_unlabeled.unlabeled = UnlabeledSettings(unlabeled_data_dir="crawl")
    assert "unlabelled images (--unlabeled-data-dir crawl)" in gap(with_unlabeled)
    assert "trains on the labelled images only" in gap(with_unlabeled)
    with_unlabeled.unlabeled = UnlabeledSettings()
    assert gap(with_unlabeled) is None
