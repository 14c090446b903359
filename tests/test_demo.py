"""`deit-distill demo`: its command lines are the trainer's, its reports add up, `--quick` runs end to end."""

from __future__ import annotations

import dataclasses
import json
import logging
import statistics
from pathlib import Path

import pytest

from timm_deit_distill.commands import demo
from timm_deit_distill.factory.options import options_from_keywords, train_parser


def _resolved(options: dict) -> dict:
    """The options a demo run gives `deit-distill train`, resolved as the trainer resolves them."""
    return vars(options_from_keywords(train_parser(), options, what="the demo"))

_DISTILL_FLAGS = {"distill_type", "distill_teacher", "distill_teacher_path", "distill_alpha", "distill_tau",
                  "distill_soft_reduction", "teacher_precision", "distill_teacher_ema", "experiment", "seed", "_layers",
                  "model", "model_kwargs"}


def _student_config(mode: str, seed: int = 0) -> dict:
    options = demo.student_options(demo.DEFAULT_REGIME, Path("/data"), Path("/runs"), mode, seed,
                                   Path("/t/last.pth.tar"))
    return _resolved(options)


def test_students_get_the_same_budget_and_differ_only_in_distillation():
    configs = {mode: _student_config(mode) for mode in demo.MODES}
    budget = {mode: {k: v for k, v in c.items() if k not in _DISTILL_FLAGS} for mode, c in configs.items()}
    assert all(b == budget["none"] for b in budget.values())
    regime = demo.DEFAULT_REGIME
    none = configs["none"]
    assert (none["model"], none["epochs"], none["img_size"]) == (demo.PLAIN_STUDENT, regime.epochs, regime.img_size)
    assert none["model_ema"] is regime.ema and none["hflip"] == 0
    # DeiT's Table 3: no, usual and hard distillation without the distillation token; DeiT⚗ hard and soft with it
    assert {m: (c["model"], c["distill_type"]) for m, c in configs.items()} == {
        "none": (demo.PLAIN_STUDENT, "none"), "usual": (demo.PLAIN_STUDENT, "soft"),
        "hard": (demo.PLAIN_STUDENT, "hard"), "deit_hard": (demo.STUDENT, "hard"), "deit_soft": (demo.STUDENT, "soft")}


def test_the_students_without_token_are_the_distilled_students_architecture_without_it():
    """timm builds both from the demo's options: the same vision transformer, less the distillation token and head."""
    import timm
    from timm.models.deit import VisionTransformerDistilled
    from timm.models.vision_transformer import VisionTransformer

    import timm_deit_distill.models  # noqa: F401  (registers the distilled variant)

    size = demo.DEFAULT_REGIME.img_size
    plain = timm.create_model(demo.PLAIN_STUDENT, img_size=size, **_student_config("none")["model_kwargs"])
    token = timm.create_model(demo.STUDENT, img_size=size)
    assert type(plain) is VisionTransformer and type(token) is VisionTransformerDistilled
    shapes = {k: v.shape for k, v in plain.state_dict().items()}
    token_shapes = {k: v.shape for k, v in token.state_dict().items()}
    assert set(token_shapes) - set(shapes) == {"dist_token", "head_dist.weight", "head_dist.bias"}
    assert set(shapes) <= set(token_shapes)
    for key, shape in shapes.items():
        if key != "pos_embed":
            assert token_shapes[key] == shape, key
    # one position more for the distillation token; the same 9 patches of 4x4 pixels
    assert (shapes["pos_embed"][1], token_shapes["pos_embed"][1]) == (1 + (size // 4) ** 2, 2 + (size // 4) ** 2)


def test_students_use_deits_loss_definitions():
    for mode in ("usual", "hard", "deit_hard", "deit_soft"):
        c = _student_config(mode, seed=2)
        assert c["distill_type"] == ("hard" if "hard" in mode else "soft") and c["seed"] == 2
        assert (c["distill_alpha"], c["distill_tau"], c["distill_soft_reduction"]) == (0.5, 1.0, "deit")
        assert c["distill_teacher"] == demo.TEACHER and c["distill_teacher_path"] == "/t/last.pth.tar"
    assert _student_config("none")["distill_teacher"] is None


def test_teacher_is_trained_with_the_students_augmentation():
    regime = demo.DEFAULT_REGIME
    teacher = _resolved(demo.teacher_options(regime, Path("/data"), Path("/runs")))
    student = _student_config("deit_hard")
    for key in ("scale", "ratio", "hflip", "color_jitter", "aa", "mixup", "cutmix", "reprob", "smoothing", "img_size",
                "train_interpolation"):
        assert teacher[key] == student[key], key
    assert teacher["model"] == demo.TEACHER and teacher["distill_type"] == "none"
    assert teacher["epochs"] == regime.teacher_epochs


def test_aggregate_gives_means_and_sample_stds_beside_them():
    rows = [{"seed": s, "top1_cls": c, "top1_dist": d, "top1_fused": f, "agreement": a}
            for s, c, d, f, a in [(0, 80.0, 82.0, 83.0, 0.85), (1, 70.0, 75.0, 74.0, 0.78), (2, 75.5, 79.0, 77.0, 0.8)]]
    out = demo.aggregate({"hard": rows})["hard"]
    assert out["top1_fused"] == pytest.approx(statistics.mean([83.0, 74.0, 77.0]))
    assert out["top1_fused_std"] == pytest.approx(statistics.stdev([83.0, 74.0, 77.0]))
    assert out["agreement_std"] == pytest.approx(statistics.stdev([0.85, 0.78, 0.8]))
    assert out["per_seed"] == rows
    single = demo.aggregate({"none": rows[:1]})["none"]
    assert single["top1_cls"] == 80.0 and single["top1_cls_std"] is None  # one seed: no spread to report


def test_paired_differences_subtract_the_same_seeds_undistilled_run():
    def rows(values):
        return [{"seed": s, "top1_cls": f, "top1_dist": f, "top1_fused": f, "agreement": a}
                for s, (f, a) in values.items()]

    per_seed = {"none": rows({0: (70.0, 0.70), 1: (80.0, 0.80), 2: (75.0, 0.75)}),
                "soft": rows({2: (76.0, 0.80), 0: (73.0, 0.72), 1: (82.0, 0.81)}),  # order must not matter
                "hard": rows({0: (71.0, 0.69), 1: (78.0, 0.80), 2: (77.0, 0.78)})}
    for row in per_seed["none"]:  # the undistilled student has one head: each read-out is compared with it
        row["top1_cls"] = row["top1_dist"] = None
    per_seed["hard"][0]["top1_cls"] = 60.0
    out = demo.paired_differences(per_seed)
    soft_diffs = [3.0, 2.0, 1.0]  # seeds 0, 1, 2
    assert [d["seed"] for d in out["soft"]["per_seed"]] == [2, 0, 1]
    assert out["soft"]["top1_fused"] == pytest.approx(statistics.mean(soft_diffs))
    assert out["soft"]["top1_fused_std"] == pytest.approx(statistics.stdev(soft_diffs))
    assert out["soft"]["outside_spread"] is True  # +2 +- 1
    hard_diffs = [1.0, -2.0, 2.0]
    assert out["hard"]["top1_fused"] == pytest.approx(statistics.mean(hard_diffs))
    assert out["hard"]["agreement"] == pytest.approx(statistics.mean([-0.01, 0.0, 0.03]))
    assert out["hard"]["outside_spread"] is False  # +0.33 +- 2.1
    assert out["hard"]["per_seed"][0]["top1_cls"] == pytest.approx(60.0 - 70.0)
    assert "top1_cls" not in out["soft"] or out["soft"]["top1_cls"] == pytest.approx(statistics.mean(soft_diffs))
    # A seed without an undistilled run is left out rather than compared with another seed's.
    partial = demo.paired_differences({"none": per_seed["none"][:1], "hard": per_seed["hard"]})
    assert [d["seed"] for d in partial["hard"]["per_seed"]] == [0] and partial["hard"]["outside_spread"] is None


def test_a_seed_gives_every_mode_the_same_initial_student_and_views(tmp_path):
    """The premise of the paired comparison, checked on the trainer's real set-up."""
    import torch
    from train_fixtures import digits, teacher_checkpoint

    from timm_deit_distill.factory.api import train_settings
    from timm_deit_distill.factory.run import build_run

    data = digits(tmp_path / "digits", train_per_class=2)
    teacher = teacher_checkpoint(tmp_path / "teacher.pth")
    regime = dataclasses.replace(demo.QUICK_REGIME, batch_size=4)
    runs = {}
    for mode in demo.MODES:
        options = demo.student_options(regime, data, tmp_path / "runs", mode, 5, teacher)
        options["model_kwargs"] = {**options.get("model_kwargs", {}), "depth": 1, "embed_dim": 32, "num_heads": 2}
        run = build_run(train_settings(**options))
        run.train_loader.set_epoch(1)
        runs[mode] = (run.student.state_dict(), next(iter(run.train_loader))[0])
    views = runs["none"][1]
    for mode in demo.MODES:  # one architecture's students start from the same weights, all see the same views
        weights = runs["none" if mode in ("none", "usual", "hard") else "deit_hard"][0]
        assert all(torch.equal(weights[k], v) for k, v in runs[mode][0].items()), mode
        assert torch.equal(views, runs[mode][1]), mode


def _fake_results(per_seed: dict, teacher_predictions: list[int], labels: list[int]) -> dict:
    """results.json as run_demo assembles it, from per-seed records that hold their validation predictions."""
    from timm_deit_distill.analysis import disagreement_table

    teacher = {"fused": teacher_predictions, "labels": labels}
    demo.report.fill_agreement(teacher, per_seed)
    table = disagreement_table(demo.disagreement_models(teacher, per_seed))
    return {"teacher": {"model": demo.TEACHER, "top1": 90.0}, "seeds": [0, 1], "student_model": demo.STUDENT,
            "plain_student_model": demo.PLAIN_STUDENT, "data": {"val_images": 4, "train_images": 200},
            "students": demo.aggregate(per_seed), "vs_none": demo.paired_differences(per_seed),
            "disagreement": {"models": [k for k, _, _ in demo.DISAGREEMENT_MODELS], "table": table}}


def test_table3_and_the_disagreement_table_from_known_predictions():
    truth = [0, 1, 2, 3]
    teacher = [0, 1, 2, 0]

    def row(seed, cls=None, dist=None, fused=None):
        preds = {k: v for k, v in (("cls", cls), ("dist", dist), ("fused", fused)) if v is not None}
        top1 = {k: 100.0 * sum(p == t for p, t in zip(v, truth, strict=True)) / 4 for k, v in preds.items()}
        agree = sum(p == t for p, t in zip(preds["fused"], teacher, strict=True)) / 4
        return {"seed": seed, "top1_cls": top1.get("cls"), "top1_dist": top1.get("dist"), "top1_fused": top1["fused"],
                "agreement": agree, "predictions": preds}

    per_seed = {
        "none": [row(0, fused=[0, 1, 1, 1]), row(1, fused=[0, 1, 2, 2])],  # 50 %, 75 %
        "usual": [row(0, fused=[0, 1, 2, 1]), row(1, fused=[0, 1, 2, 3])],  # 75 %, 100 %
        "hard": [row(0, fused=[0, 1, 2, 0]), row(1, fused=[0, 0, 2, 0])],  # 75 %, 50 %
        "deit_hard": [row(0, cls=[0, 1, 1, 1], dist=[0, 1, 2, 0], fused=[0, 1, 2, 1]),
                      row(1, cls=[1, 1, 2, 3], dist=[0, 1, 2, 0], fused=[0, 1, 2, 3])],
    }
    for r in per_seed["none"]:  # evaluated without the teacher (it may finish first): agreement from predictions
        r["agreement"] = None
    results = _fake_results(per_seed, teacher, truth)
    table = results["disagreement"]["table"]
    # by hand: none vs teacher differs on 2 of 4 images in seed 0 ([0,1,1,1] vs [0,1,2,0]) and 1 in seed 1
    assert table["teacher"]["none"]["per_run"] == [0.5, 0.25]
    assert table["usual"]["none"]["per_run"] == [0.25, 0.25] and table["usual"]["none"]["mean"] == 0.25
    assert table["deit_hard_dist"]["teacher"]["per_run"] == [0.0, 0.0]
    assert table["deit_hard_cls"]["deit_hard_dist"]["per_run"] == [0.5, 0.5]
    assert table["hard"]["deit_hard"]["per_run"] == [0.25, 0.5]
    assert table["hard"]["deit_hard"]["std"] == pytest.approx(statistics.stdev([0.25, 0.5]))
    assert "deit_soft" not in table["teacher"]  # no such run: no column, no invented figure
    assert table["ground_truth"]["teacher"]["per_run"] == [0.25, 0.25]  # the teacher misses image 3
    assert table["ground_truth"]["deit_hard_cls"]["per_run"] == [0.5, 0.25]  # 1 - each seed's class-head top-1

    text = demo.results_table(results)
    assert "| no distillation | deit_tiny_patch16_224 | 62.5 ± 17.7 |  | 62.5 ± 17.7 |" in text
    assert "| usual distillation | deit_tiny_patch16_224 | 87.5 ± 17.7 | +25.0 ± 0.0 | 75.0 ± 0.0 |" in text
    assert "| DeiT⚗ hard distillation: class embedding | deit_tiny_distilled_patch4_32 | 62.5 ± 17.7 | +0.0 ± 0.0 |  |" in text
    assert "| DeiT⚗ hard distillation: distillation embedding | deit_tiny_distilled_patch4_32 | 75.0 ± 0.0 |" in text
    assert "| teacher | 25.0 ± 0.0 |  | 37.5 ± 17.7 | 25.0 ± 0.0 | 12.5 ± 17.7 |" in text  # teacher vs none, usual, hard


def test_bad_seeds_are_refused_before_any_work(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        demo.main(["--out", str(tmp_path / "o"), "--seeds", "1", "1"])
    assert e.value.code == 2
    assert "distinct" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_an_out_that_is_a_file_is_refused_in_one_line(tmp_path, capsys, monkeypatch):
    """--out onto an existing file was `[Errno 17] File exists: '...summary.csv'`."""
    monkeypatch.chdir(tmp_path)
    mine = tmp_path / "summary.csv"
    mine.write_text("epoch\n")
    for out, says in ((mine, f"--out {mine} is a file, not a folder"),
                      (mine / "demo", f"--out {mine / 'demo'} cannot be created: {mine} is a file")):
        assert demo.main(["--quick", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"deit-distill demo: error: {says}") and "Errno" not in err, err
    assert mine.read_text() == "epoch\n" and sorted(p.name for p in tmp_path.iterdir()) == ["summary.csv"]


def test_without_the_demo_extra_it_says_so_in_one_line_and_creates_nothing(tmp_path, capsys, monkeypatch):
    """scikit-learn missing: a traceback ending in ImportError, exit 1 and an empty demo_output/ left behind; now
    one line naming the extra to install, exit 2, nothing created. (A None entry in sys.modules makes its import
    fail as a missing package does.)"""
    import sys

    for name in [n for n in sys.modules if n == "sklearn" or n.startswith("sklearn.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.chdir(tmp_path)
    assert demo.main(["--quick"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("deit-distill demo: error: the demo needs scikit-learn") and \
        "fix: pip install 'timm-deit-distill[demo]'" in err
    assert list(tmp_path.iterdir()) == []  # no demo_output/


def test_a_folder_holding_another_run_is_refused_not_overwritten(tmp_path):
    run_dir = tmp_path / "hard-seed0"
    run_dir.mkdir()
    (run_dir / "demo_run.json").write_text(json.dumps({"options": {"epochs": 5}}))
    (run_dir / "last.pth.tar").write_bytes(b"kept")
    with pytest.raises(demo.DemoError, match="holds a different run"):
        demo.run_training({"epochs": 6}, run_dir, 6, "student hard-seed0")
    assert (run_dir / "last.pth.tar").read_bytes() == b"kept"


def _check_range(value, lo, hi):
    assert value is not None and lo <= value <= hi, value


@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path, capfd, caplog):
    caplog.set_level(logging.INFO)
    out = tmp_path / "demo"
    assert demo.main(["--quick", "--out", str(out)]) == 0
    printed = capfd.readouterr().out
    assert "| DeiT Table 3 row |" in printed and "(the paper: 0.06 and 0.93)" in printed
    assert "Disagreement (DeiT Table 4)" in printed

    results = json.loads((out / "results.json").read_text())
    assert results["seeds"] == [0]
    _check_range(results["teacher"]["top1"], 0, 100)
    assert set(results["students"]) == set(demo.MODES)
    for mode, s in results["students"].items():
        token = mode.startswith("deit_")  # the DeiT⚗ students have three read-outs, the others one head
        for key in ("top1_cls", "top1_dist"):
            if token:
                _check_range(s[key], 0, 100)
            else:
                assert s[key] is None, (mode, key)
        _check_range(s["top1_fused"], 0, 100)
        _check_range(s["agreement"], 0, 1)
        assert s["top1_fused_std"] is None and len(s["per_seed"]) == 1, mode
        assert "predictions" not in s["per_seed"][0]
    assert set(results["vs_none"]) == set(demo.MODES) - {"none"}
    for mode, d in results["vs_none"].items():
        expected = results["students"][mode]["top1_fused"] - results["students"]["none"]["top1_fused"]
        assert d["top1_fused"] == pytest.approx(expected) and d["outside_spread"] is None, mode
    tc = results["token_cosine"]
    for key in ("input", "output"):
        _check_range(tc[key], -1, 1)
    assert len(tc["layers"]) == 12 and tc["student"] == "deit_hard"  # DeiT-Ti's depth
    table = results["disagreement"]["table"]
    assert set(table) == {"ground_truth", "teacher", "none", "usual", "hard", "deit_hard_cls", "deit_hard_dist",
                          "deit_hard", "deit_soft"}
    assert table["ground_truth"]["teacher"]["mean"] == pytest.approx(1 - results["teacher"]["top1"] / 100)
    # the fused read-out's disagreement with the teacher is what `deit-distill eval` measured as agreement
    for mode in demo.MODES:
        assert table["teacher"][mode]["mean"] == pytest.approx(1 - results["students"][mode]["agreement"]), mode
        assert table["ground_truth"][mode]["mean"] == pytest.approx(1 - results["students"][mode]["top1_fused"] / 100)

    # Every run went through the trainer and the evaluator, and the reports were written.
    runs = out / "runs" / "quick"
    for name in ["teacher", *(f"{m}-seed0" for m in demo.MODES)]:
        assert (runs / name / "summary.csv").exists() and (runs / name / "last.pth.tar").exists(), name
    student_eval = json.loads((runs / "deit_hard-seed0" / "eval.json").read_text())
    assert student_eval["heads"]["fused"]["top1"] == results["students"]["deit_hard"]["top1_fused"]
    assert student_eval["heads"]["dist"]["top1"] == results["students"]["deit_hard"]["top1_dist"]
    assert (out / "results.md").read_text().startswith("Validation top-1")
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    hub = out / "best_student"
    assert {"model.safetensors", "config.json", "README.md"} <= {p.name for p in hub.iterdir()}
    config = json.loads((hub / "config.json").read_text())
    assert config["num_classes"] == 10

    # A second call reuses every finished run and reports the same figures. (Runs log from worker
    # processes, seen at the file-descriptor level, or in-process with one CPU, seen by caplog.)
    caplog.clear()
    assert demo.main(["--quick", "--out", str(out)]) == 0
    logged = capfd.readouterr().out + caplog.text
    assert logged.count("reusing the finished run") == 1 + len(demo.MODES)
    again = json.loads((out / "results.json").read_text())
    assert again["students"] == results["students"] and again["teacher"] == results["teacher"]
    assert again["disagreement"] == results["disagreement"]


def test_a_student_trained_without_the_teacher_is_measured_without_it(tmp_path, monkeypatch):
    """The no-distillation students may finish before the teacher (they do not wait for it): their evaluation
    must not need its checkpoint; their agreement comes from the predictions once both runs are done."""
    from timm_deit_distill.commands.demo import runner

    given = {}

    def fake_eval(checkpoint, data_dir, teacher_checkpoint, use_ema, teacher_check=True):
        given[checkpoint.parent.name] = teacher_checkpoint
        teacher = None if teacher_checkpoint is None else {"agreement": 0.5}
        return {"heads": {"fused": {"top1": 50.0}}, "teacher": teacher}

    monkeypatch.setattr(runner, "run_training", lambda options, run_dir, epochs, label: run_dir / "last.pth.tar")
    monkeypatch.setattr(runner, "run_eval", fake_eval)
    monkeypatch.setattr(runner, "measure_predictions", lambda *a: {"fused": [0, 1]})
    for mode in ("none", "usual"):
        record = runner.run_job(runner.Job(demo.QUICK_REGIME, tmp_path / "d", tmp_path / "r", mode, 0))
        assert record["agreement"] == (None if mode == "none" else 0.5)
    assert given == {"none-seed0": None, "usual-seed0": tmp_path / "r" / "teacher" / "last.pth.tar"}
