"""Any timm classifier as the student (DeiT's "usual" and "hard" distillation on its one head), and timm's
distillation spellings computing timm's own tasks' loss (LogitDistillationTask, TokenDistillationTask)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.task import LogitDistillationTask, TokenDistillationTask

from timm_deit_distill.commands.args import parse_args
from timm_deit_distill.factory import builders
from timm_deit_distill.factory.settings import settings_from_options
from timm_deit_distill.task import DeiTDistillationTask

CPU = torch.device("cpu")


class FixedTargets:
    """A target source giving a module's logits for the batch (the teacher, as timm's tasks run it)."""

    def __init__(self, teacher: torch.nn.Module) -> None:
        self.teacher = teacher

    def targets(self, inputs, views=None, epoch=None):
        with torch.no_grad():
            return self.teacher(inputs)


def _batch(seed: int = 0, chans: int = 3, size: int = 32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(6, chans, size, size, generator=g), torch.randint(0, 10, (6,), generator=g)


def _model(name: str, seed: int, **kwargs) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(name, num_classes=10, **kwargs)


def _distill(argv):
    return settings_from_options(parse_args(argv)).distill


@pytest.mark.parametrize("kind", ["soft", "hard"])
def test_a_single_head_student_learns_both_terms_on_its_one_head_as_the_paper_writes(kind):
    """DeiT Table 3's "usual" (soft) and "hard" distillation: (1 - a) CE(head, y) + a * term(head, teacher)."""
    student, teacher = _model("resnet10t", 0), _model("resnet10t", 1).eval()
    distill = _distill(["--distill-teacher", "t", "--distill-type", kind, "--distill-alpha", "0.3",
                        "--distill-tau", "2"])
    task = builders.create_task(student, FixedTargets(teacher), distill, smoothing=0.0, mixup_active=False, device=CPU)
    x, y = _batch()
    out = task(x, y)
    logits, t = student(x), teacher(x).detach()
    if kind == "soft":  # DeiT's: KL summed, / (B * C), * tau^2
        term = F.kl_div(F.log_softmax(logits / 2, 1), F.log_softmax(t / 2, 1), reduction="sum",
                        log_target=True) * 4 / logits.numel()
    else:
        term = F.cross_entropy(logits, t.argmax(1))
    expected = 0.7 * F.cross_entropy(logits, y) + 0.3 * term
    torch.testing.assert_close(out["loss"], expected)
    torch.testing.assert_close(out["distill_loss"], term.detach())
    out["loss"].backward()
    assert student.get_classifier().weight.grad is not None


def test_a_distilled_student_returning_one_tensor_is_still_refused():
    """The architecture decides: a distilled model in eval mode (one, fused, tensor) is not a single-head student."""
    student = _model("deit_tiny_distilled_patch16_224", 0, img_size=32, patch_size=8, depth=1, embed_dim=32,
                     num_heads=2)
    teacher = _model("resnet10t", 1).eval()
    task = DeiTDistillationTask(student, FixedTargets(teacher), distillation_type="hard", verbose=False)
    x, y = _batch()
    task(x, y)  # training: two heads
    student.eval()
    with pytest.raises(ValueError, match="returned a single tensor"):
        task(x, y)


WEIGHTS = [[], ["--task-loss-weight", "0.3"], ["--distill-loss-weight", "2.5"],
           ["--distill-loss-weight", "2.5", "--task-loss-weight", "0.4"]]


@pytest.mark.parametrize("weights", WEIGHTS, ids=["equal", "complementary", "independent", "independent-both"])
@pytest.mark.parametrize("student_name", ["resnet10t", "deit_tiny_distilled_patch16_224"])
def test_kd_logit_computes_timms_logit_distillation_task(weights, student_name):
    """`--kd-model-name T` (logit): timm's LogitDistillationTask's loss and parts, any student (a distilled one
    through its fused output, as timm's train.py trains it)."""
    kwargs = dict(img_size=32, patch_size=8, depth=1, embed_dim=32, num_heads=2) if "deit" in student_name else {}
    student, teacher = _model(student_name, 0, **kwargs), _model("resnet10t", 1).eval()
    student.pretrained_cfg = {**student.pretrained_cfg, "mean": teacher.pretrained_cfg["mean"],
                              "std": teacher.pretrained_cfg["std"]}
    distill = _distill(["--kd-model-name", "t", "--kd-temperature", "3", *weights])
    ours = builders.create_task(student, FixedTargets(teacher), distill, smoothing=0.0, mixup_active=False, device=CPU)
    w = {k.lstrip("-").replace("-", "_"): float(v) for k, v in zip(weights[::2], weights[1::2], strict=True)}
    timms = LogitDistillationTask(student, teacher, criterion=torch.nn.CrossEntropyLoss(), temperature=3.0,
                                  verbose=False, **w)
    x, y = _batch()
    got, want = ours(x, y), timms(x, y)
    torch.testing.assert_close(got["loss"], want["loss"])
    torch.testing.assert_close(got["task_loss"], want["task_loss"].detach())
    torch.testing.assert_close(got["distill_loss"], want["kd_loss"].detach())


@pytest.mark.parametrize("weights", WEIGHTS, ids=["equal", "complementary", "independent", "independent-both"])
@pytest.mark.parametrize("kind", ["soft", "hard"])
def test_kd_token_computes_timms_token_distillation_task(weights, kind):
    """`--kd-model-name T --kd-distill-type token`: timm's TokenDistillationTask (weights 1.0 and 1.0 by default,
    not DeiT's alpha 0.5)."""
    student = _model("deit_tiny_distilled_patch16_224", 0, img_size=32, patch_size=8, depth=1, embed_dim=32,
                     num_heads=2)
    teacher = _model("resnet10t", 1).eval()
    student.pretrained_cfg = {**student.pretrained_cfg, "mean": teacher.pretrained_cfg["mean"],
                              "std": teacher.pretrained_cfg["std"]}
    distill = _distill(["--kd-model-name", "t", "--kd-distill-type", "token", "--kd-token-distill-type", kind,
                        *weights])
    ours = builders.create_task(student, FixedTargets(teacher), distill, smoothing=0.0, mixup_active=False, device=CPU)
    w = {k.lstrip("-").replace("-", "_"): float(v) for k, v in zip(weights[::2], weights[1::2], strict=True)}
    timms = TokenDistillationTask(student, teacher, criterion=torch.nn.CrossEntropyLoss(), distill_type=kind,
                                  temperature=4.0, verbose=False, **w)
    x, y = _batch()
    got, want = ours(x, y), timms(x, y)
    torch.testing.assert_close(got["loss"], want["loss"])
    torch.testing.assert_close(got["distill_loss"], want["distill_loss"].detach())


def test_kd_token_on_a_single_head_student_is_refused():
    distill = _distill(["--kd-model-name", "t", "--kd-distill-type", "token"])
    with pytest.raises(ValueError, match="has no distillation head"):
        builders.create_task(_model("resnet10t", 0), FixedTargets(_model("resnet10t", 1)), distill, smoothing=0.0,
                             mixup_active=False, device=CPU)


# --- end to end: a single-head student through the trainer, the cache, resume and eval ---------------------------

def _cli(data, teacher, out, name, *extra):
    return ["--data-dir", str(data), "--model", "resnet10t", "--img-size", "16", "-b", "16", "--workers", "0",
            "--opt", "adamw", "--lr", "1e-3", "--warmup-epochs", "0", "--epochs", "2", "--seed", "3",
            "--log-interval", "100", "--distill-teacher", "resnet10t", "--distill-teacher-path", str(teacher),
            "--teacher-precision", "fp32", "--teacher-compile", "no", "--no-teacher-check",
            "--output", str(out), "--experiment", name, *extra]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from train_fixtures import digits, teacher_checkpoint

    root = tmp_path_factory.mktemp("heads")
    return root, digits(root / "digits", train_per_class=4, val_fraction=0.2), teacher_checkpoint(root / "t.pth")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["soft", "hard"])
def test_a_single_head_student_trains_evaluates_and_records_its_head(files, kind, capsys):
    import json

    from train_fixtures import load

    from timm_deit_distill.commands import evaluate, train
    from timm_deit_distill.records import read_summary

    root, data, teacher = files
    assert train.main(_cli(data, teacher, root / "runs", kind, "--distill-type", kind, "--model-ema")) == 0
    rows = read_summary(root / "runs" / kind / "summary.csv")
    assert len(rows) == 2 and all(float(r["train_distill_loss"]) > 0 for r in rows)
    distill = load(root / "runs" / kind / "last.pth.tar")["deit_distill"]["distill"]
    assert (distill["type"], distill["family"], distill["heads"]) == (kind, "deit", "the one head: labels and teacher")
    capsys.readouterr()
    out = root / f"{kind}.json"
    assert evaluate.main(["--checkpoint", str(root / "runs" / kind / "last.pth.tar"), "--data-dir", str(data),
                          "--workers", "0", "--use-ema", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["count"] > 0
    # the Hub card says which head learned from which teacher
    from huggingface_hub import ModelCard

    from timm_deit_distill.hub import save_pretrained

    card = ModelCard.load(save_pretrained(root / "runs" / kind / "last.pth.tar", root / f"hub-{kind}",
                                          use_ema=True) / "README.md").text
    assert "| what each head learned from | the one head: labels and teacher |" in card
    assert f"| distillation type | {kind} |" in card and "resnet10t" in card


@pytest.mark.slow
def test_a_single_head_student_replays_a_cache_as_it_learns_online(files, capsys):
    from timm_deit_distill.commands import cache as cache_cli
    from timm_deit_distill.commands import train
    from timm_deit_distill.records import read_summary

    root, data, teacher = files
    aug = ["--distill-type", "soft", "--deterministic-aug", "--aa", "rand-m9-mstd0.5-inc1", "--reprob", "0.25"]
    cache = root / "cache"
    assert cache_cli.main(["build", *_cli(data, teacher, root / "x", "x", *aug), "--store", "full",
                           "--out", str(cache)]) == 0
    assert train.main(_cli(data, teacher, root / "runs", "online", *aug)) == 0
    assert train.main(_cli(data, teacher, root / "runs", "cached", *aug, "--distill-cache", str(cache))) == 0
    online, cached = read_summary(root / "runs" / "online" / "summary.csv"), read_summary(
        root / "runs" / "cached" / "summary.csv")
    for a, b in zip(online, cached, strict=True):
        for column in ("train_loss", "train_distill_loss", "eval_top1"):
            assert float(a[column]) == pytest.approx(float(b[column]), rel=1e-5, abs=1e-6), column


@pytest.mark.slow
def test_a_single_head_student_resumes_exactly(files):
    from train_fixtures import load

    from timm_deit_distill.commands import train

    root, data, teacher = files
    argv = ["--distill-type", "hard", "--sched", "constant", "--model-ema", "--model-ema-decay", "0.9", "--mixup", "0.8"]
    assert train.main(_cli(data, teacher, root / "resume", "straight", *argv)) == 0
    assert train.main(_cli(data, teacher, root / "resume", "legs", *argv, "--epochs", "1")) == 0
    legs = root / "resume" / "legs"
    assert train.main(_cli(data, teacher, root / "resume", "legs", *argv, "--resume",
                           str(legs / "last.pth.tar"))) == 0
    a, b = load(root / "resume" / "straight" / "last.pth.tar"), load(legs / "last.pth.tar")
    assert a["epoch"] == b["epoch"] == 1
    for key in ("state_dict", "state_dict_ema"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name} differs after resume"


def test_a_one_channel_student_with_three_channel_normalisation_is_refused_before_anything_is_written(
        files, tmp_path, capsys):
    """resnet10t's pretrained config holds 3 means: with --in-chans 1 the first batch crashed after args.yaml was
    written. Refused in one line naming the fix; with the fix it trains."""
    from timm_deit_distill.commands import train

    root, data, _ = files
    argv = ["--data-dir", str(data), "--model", "resnet10t", "--in-chans", "1", "--input-img-mode", "L",
            "--img-size", "16", "-b", "16", "--workers", "0", "--epochs", "1", "--output", str(tmp_path)]
    assert train.main([*argv, "--experiment", "gray"]) == 2
    err = capsys.readouterr().err
    assert "takes 1 input channel(s) but its mean" in err and "--mean 0.5 --std 0.5" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "gray").exists()
    assert train.main([*argv, "--experiment", "fixed", "--mean", "0.5", "--std", "0.5"]) == 0


@pytest.mark.parametrize("argv", [
    ["--kd-model-name", "resnet10t", "--kd-distill-type", "token", "--task-loss-weight", "0.3"],
    ["--kd-model-name", "resnet10t", "--distill-loss-weight", "2", "--kd-temperature", "2"],
    ["--distill-teacher", "resnet10t", "--distill-type", "soft", "--distill-alpha", "0.2"],
])
def test_the_recorded_options_read_back_as_the_same_family_and_weights(argv, tmp_path):
    """What args.yaml records (the settings' options) reloads with -c into the same distillation: a timm-family run
    in timm's keys (its weights' mode kept), a DeiT one in DeiT's."""
    import yaml

    settings = settings_from_options(parse_args(argv))
    config = tmp_path / "args.yaml"
    config.write_text(yaml.safe_dump(settings.options(), sort_keys=False))
    again = settings_from_options(parse_args(["-c", str(config)]))
    assert again.distill == settings.distill and again.teacher.source == "resnet10t"


# --- timm's feature distillation ------------------------------------------------------------------------------

class FixedFeatures(FixedTargets):
    def targets(self, inputs, views=None, epoch=None):
        with torch.no_grad():
            return self.teacher.forward_head(self.teacher.forward_features(inputs), pre_logits=True)


@pytest.mark.parametrize("weights", WEIGHTS, ids=["equal", "complementary", "independent", "independent-both"])
def test_kd_feature_computes_timms_feature_distillation_task(weights):
    """`--kd-distill-type feature`: timm's FeatureDistillationTask (its trainable module, its projection where the
    pooled sizes differ: resnet10t 512 -> mobilenetv3 1024), same loss and parts in every weighting mode."""
    from timm.task import FeatureDistillationTask

    student, teacher = _model("resnet10t", 0), _model("mobilenetv3_small_050", 1).eval()
    student.pretrained_cfg = {**student.pretrained_cfg, "mean": teacher.pretrained_cfg["mean"],
                              "std": teacher.pretrained_cfg["std"]}
    distill = _distill(["--kd-model-name", "t", "--kd-distill-type", "feature", *weights])
    trainable = builders.feature_module(student, SimpleNamespace(feature_dim=1024), distill)
    ours = builders.create_task(trainable, FixedFeatures(teacher), distill, smoothing=0.0, mixup_active=False,
                                device=CPU)
    w = {k.lstrip("-").replace("-", "_"): float(v) for k, v in zip(weights[::2], weights[1::2], strict=True)}
    timms = FeatureDistillationTask(student, teacher, criterion=torch.nn.CrossEntropyLoss(), verbose=False, **w)
    timms.trainable_module.projection.load_state_dict(trainable.projection.state_dict())
    x, y = _batch()
    got, want = ours(x, y), timms(x, y)
    torch.testing.assert_close(got["loss"], want["loss"])
    torch.testing.assert_close(got["distill_loss"], want["kd_loss"].detach())
    got["loss"].backward()
    assert trainable.projection.weight.grad is not None  # the projection learns


def test_the_teachers_features_are_timms_pooled_pre_logits_on_its_own_input():
    """DistillationTeacher.features: what timm's DistillationTeacher(return_features=True) gives, on the input the
    teacher's logits see (renormalised to its own mean/std)."""
    from timm.task.distillation import DistillationTeacher as TimmTeacher

    from timm_deit_distill.teacher import DistillationTeacher

    teacher = _model("mobilenetv3_small_050", 1).eval()
    ours = DistillationTeacher.create(teacher, num_classes=10, data_mean=(0.5, 0.5, 0.5), data_std=(0.5, 0.5, 0.5),
                                      precision="fp32", compile="no")
    x, _ = _batch()
    timms = TimmTeacher(teacher)
    half = torch.full((1, 3, 1, 1), 0.5)
    want = timms(timms.normalize_input(x, half, half), return_features=True)
    torch.testing.assert_close(ours.features(x), want, rtol=1e-5, atol=1e-5)
    assert ours.feature_dim == 1024


@pytest.mark.slow
def test_kd_feature_trains_its_projection_checkpoints_it_and_resumes_exactly(files, tmp_path):
    """The projection is in the optimizer, in every checkpoint (timm's task_state['projection']) and restored by
    --resume: two legs end where one run does."""
    from train_fixtures import load

    from timm_deit_distill.commands import train

    root, data, _ = files
    torch.manual_seed(0)
    mb = tmp_path / "mb.pth"
    torch.save(timm.create_model("mobilenetv3_small_050", num_classes=10).state_dict(), mb)

    def argv(name, *extra):
        cli = _cli(data, mb, tmp_path, name, "--sched", "constant", *extra)
        at = cli.index("--distill-teacher")
        return [*cli[:at], "--kd-model-name", "mobilenetv3_small_050", *cli[at + 2:], "--kd-distill-type", "feature"]

    assert train.main(argv("straight")) == 0
    assert train.main(argv("legs", "--epochs", "1")) == 0
    first = load(tmp_path / "legs" / "last.pth.tar")
    assert train.main(argv("legs", "--resume", str(tmp_path / "legs" / "last.pth.tar"))) == 0
    a, b = load(tmp_path / "straight" / "last.pth.tar"), load(tmp_path / "legs" / "last.pth.tar")
    assert not any(k.startswith(("student.", "projection.")) for k in a["state_dict"])  # a plain student
    projection = a["task_state"]["projection"]
    assert projection["weight"].shape == (1024, 512)
    assert not torch.equal(projection["weight"], first["task_state"]["projection"]["weight"])  # it trained
    # the optimizer steps the student's tensors and the projection's two
    n_student = len(list(timm.create_model("resnet10t").parameters()))
    assert sum(len(g["params"]) for g in a["optimizer"]["param_groups"]) == n_student + 2
    for name in a["state_dict"]:
        assert torch.equal(a["state_dict"][name], b["state_dict"][name]), name
    for name in projection:
        assert torch.equal(projection[name], b["task_state"]["projection"][name]), name


@pytest.mark.slow
def test_a_single_head_student_under_torchrun_matches_one_process(files, tmp_path):
    """Two torchrun processes (gloo) train a plain ViT (DeiT-Ti's architecture without the distillation token)
    with soft distillation to the weights one process reaches with the global batch."""

    from train_fixtures import load, run_cli, run_torchrun

    from timm_deit_distill.records import read_summary

    _, data, teacher = files

    def argv(name, batch):
        return ["--data-dir", str(data), "--model", "vit_tiny_patch16_224", "--img-size", "16", "--model-kwargs",
                "patch_size=4", "depth=1", "embed_dim=32", "num_heads=2", "-b", str(batch), "--workers", "0",
                "--epochs", "2", "--opt", "sgd", "--lr", "0.05", "--warmup-epochs", "0", "--deterministic-aug",
                "--distill-teacher", "resnet10t", "--distill-teacher-path", str(teacher), "--distill-type", "soft",
                "--no-teacher-check", "--teacher-precision", "fp32", "--teacher-compile", "no", "--seed", "5",
                "--output", str(tmp_path), "--experiment", name]

    ddp = run_torchrun(argv("ddp", 8))
    assert ddp.returncode == 0, ddp.stdout + ddp.stderr
    single = run_cli(argv("single", 16))
    assert single.returncode == 0, single.stdout + single.stderr
    a, b = load(tmp_path / "ddp" / "last.pth.tar"), load(tmp_path / "single" / "last.pth.tar")
    for name, value in a["state_dict"].items():
        assert torch.allclose(value, b["state_dict"][name], rtol=1e-4, atol=1e-6), name
    rows = read_summary(tmp_path / "ddp" / "summary.csv"), read_summary(tmp_path / "single" / "summary.csv")
    for r2, r1 in zip(*rows, strict=True):
        assert float(r2["train_distill_loss"]) == pytest.approx(float(r1["train_distill_loss"]), rel=1e-4)


@pytest.mark.parametrize("exclude_head", [True, False], ids=["agc", "norm"])
def test_gradient_clipping_sees_timms_clip_parameters_under_feature_distillation(exclude_head):
    """`--clip-mode agc` leaves out the classifier's two parameters; under feature distillation the trainable
    module's last two are the projection's, so the loop must take timm's FeatureDistillationTask's choice (the
    student's without its head, then the projection's), not timm's model_parameters on the whole module."""
    from timm.models import model_parameters
    from timm.task import FeatureDistillationTask

    from timm_deit_distill.task import clip_parameters, feature_trainable

    student, teacher = _model("resnet10t", 0), _model("mobilenetv3_small_050", 1).eval()
    trainable = feature_trainable(student, 1024)
    timms = FeatureDistillationTask(student, teacher, criterion=torch.nn.CrossEntropyLoss(), verbose=False)
    timms.trainable_module.projection = trainable.projection
    want = [id(p) for p in timms.get_clip_parameters(exclude_head=exclude_head)]
    assert [id(p) for p in clip_parameters(trainable, exclude_head=exclude_head)] == want
    if exclude_head:  # what the loop took before: the projection's weight and bias left out, the head's kept
        assert [id(p) for p in model_parameters(trainable, exclude_head=True)] != want
    plain = _model("resnet10t", 2)
    assert ([id(p) for p in clip_parameters(plain, exclude_head=exclude_head)]
            == [id(p) for p in model_parameters(plain, exclude_head=exclude_head)])
