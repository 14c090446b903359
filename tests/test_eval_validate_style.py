"""`deit-distill eval` takes timm validate.py's command line: a positional data folder, `--model NAME`,
`--checkpoint`, `--pretrained`, `--num-samples` and `--results-file` (validate.py's summary, CSV or JSON).

The references are timm's own: its model built from the exported folder with plain `timm.create_model`
(what validate.py does with `--model local-dir:DIR --pretrained`), its dataset, transforms and `accuracy`,
and the summary columns validate.py writes (read from its source: model, top1, top1_err, top5, top5_err,
param_count, img_size, crop_pct, interpolation, rounded to 4 and 2 places).
"""

from __future__ import annotations

import argparse
import csv
import json

import pytest
import timm
import torch
from timm.data import create_dataset, create_transform, resolve_data_config
from timm.utils import ModelEmaV3, accuracy
from train_fixtures import STUDENT_KWARGS, digits

from timm_deit_distill.checkpoint import CheckpointSaver
from timm_deit_distill.commands import evaluate

VALIDATE_COLUMNS = ["model", "top1", "top1_err", "top5", "top5_err", "param_count", "img_size", "crop_pct",
                    "interpolation"]
VARIANT = "deit_tiny_distilled_patch4_32"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A trainer-format checkpoint (raw + EMA weights), a digits folder, and the raw weights exported as a folder
    plain timm loads (`deit-distill push --to-dir`)."""
    from timm_deit_distill.hub import save_pretrained

    root = tmp_path_factory.mktemp("validate-style")
    data = digits(root / "digits", train_per_class=1)
    torch.manual_seed(2)
    model = timm.create_model(VARIANT, num_classes=10, **STUDENT_KWARGS)
    ema = ModelEmaV3(model, decay=0.5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    meta = {"model": VARIANT, "model_kwargs": {"num_classes": 10, **STUDENT_KWARGS},
            "pretrained_cfg": {"input_size": [3, 32, 32], "mean": [0.485, 0.456, 0.406],
                               "std": [0.229, 0.224, 0.225], "crop_pct": 1.0, "interpolation": "bicubic"},
            "label_names": [str(i) for i in range(10)], "distill": None, "recipe": None, "ema": True}
    saver = CheckpointSaver(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                            args=argparse.Namespace(model=VARIANT), model_ema=ema, checkpoint_dir=str(root / "run"),
                            recovery_dir=str(root / "run"), extra_state=lambda: {"deit_distill": meta})
    (root / "run").mkdir()
    saver.save_checkpoint(0, metric=1.0)
    ckpt = root / "run" / "last.pth.tar"
    export = save_pretrained(ckpt, root / "export", use_ema=False)
    return {"root": root, "data": data, "ckpt": ckpt, "export": export}


def _timm_reference(export, data_dir) -> dict:
    """validate.py's figures for `--model local-dir:EXPORT --pretrained`: plain timm's model, dataset and accuracy."""
    model = timm.create_model(f"local-dir:{export}", pretrained=True).eval()
    cfg = resolve_data_config({}, model=model)
    ds = create_dataset("", root=str(data_dir / "validation"), transform=create_transform(**cfg))
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    y = torch.tensor([ds[i][1] for i in range(len(ds))])
    with torch.inference_mode():
        top1, top5 = (a.item() for a in accuracy(model(x), y, topk=(1, 5)))
    return {"top1": round(top1, 4), "top1_err": round(100 - top1, 4), "top5": round(top5, 4),
            "top5_err": round(100 - top5, 4), "param_count": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
            "img_size": cfg["input_size"][-1], "crop_pct": cfg["crop_pct"], "interpolation": cfg["interpolation"]}


def _read_csv(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_a_validate_py_command_line_with_a_checkpoint_writes_validate_pys_summary(run, tmp_path, capsys):
    results = tmp_path / "results.csv"
    argv = [str(run["data"]), "--model", VARIANT, "--checkpoint", str(run["ckpt"]), "--results-file", str(results),
            "--no-ema", "-j", "0", "--json", str(tmp_path / "eval.json")]
    assert evaluate.main(argv) == 0
    assert f"validate.py's summary (csv) written to {results}" in capsys.readouterr().err
    with open(results, newline="") as f:
        assert next(csv.reader(f)) == VALIDATE_COLUMNS  # validate.py's header, in its order
    (row,) = _read_csv(results)
    ref = _timm_reference(run["export"], run["data"])  # the export holds the same raw weights
    assert row["model"] == VARIANT
    for key, value in ref.items():
        assert row[key] == str(value), key
    ours = json.loads((tmp_path / "eval.json").read_text())
    assert ours["timm_summary"] == {"model": VARIANT, **ref} and ours["top1"] == pytest.approx(ref["top1"], abs=1e-4)


def test_an_exported_folder_is_evaluated_as_validate_py_would_without_a_checkpoint(run, tmp_path, capsys):
    """`--model local-dir:DIR --pretrained`, the command validate.py takes for an exported student."""
    results = tmp_path / "results.json"
    model = f"local-dir:{run['export']}"
    assert evaluate.main([str(run["data"]), "--model", model, "--pretrained", "--results-file", str(results),
                          "--results-format", "json", "-j", "0"]) == 0
    out = capsys.readouterr().out
    assert f"{model} (pretrained weights) on" in out
    assert json.loads(results.read_text()) == {"model": model, **_timm_reference(run["export"], run["data"])}
    assert not list(run["export"].glob("eval-*"))  # no checkpoint folder: the JSON is printed, not written


def test_the_dataset_flag_and_the_positional_agree(run, tmp_path):
    """The same numbers whichever way the data folder is given (validate.py takes both)."""
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    common = ["--checkpoint", str(run["ckpt"]), "--use-ema", "-j", "0"]
    assert evaluate.main([str(run["data"]), *common, "--json", str(a)]) == 0
    assert evaluate.main([*common, "--data-dir", str(run["data"]), "--json", str(b)]) == 0
    assert json.loads(a.read_text())["heads"] == json.loads(b.read_text())["heads"]


@pytest.mark.parametrize("argv, needle", [
    (["--model", "resnet10t"], f"--model resnet10t is not the architecture --checkpoint {{ckpt}} records ({VARIANT})"),
    (["--data-dir", "{other}"], "the dataset is given twice, as {data} and as --data-dir {other}; give it once."),
    (["--results-file", "{exists}"], "--results-file {exists} already exists; writing there would replace it"),
    (["--results-file", "{ckpt}", "--overwrite"], "--results-file {ckpt} is the --checkpoint file"),
])
def test_validate_style_refusals_come_before_any_work_in_one_line(argv, needle, run, tmp_path, capsys):
    exists = tmp_path / "old.csv"
    exists.write_text("model,top1\nx,1\n")
    fill = {"ckpt": run["ckpt"], "data": run["data"], "other": tmp_path, "exists": exists}
    argv = [a.format(**fill) for a in argv]
    before = run["ckpt"].read_bytes()
    assert evaluate.main([str(run["data"]), "--checkpoint", str(run["ckpt"]), "--no-ema", "-j", "0",
                          "--json", str(tmp_path / "r.json"), *argv]) == 2
    captured = capsys.readouterr()
    assert needle.format(**fill) in captured.err and captured.err.count("\n") == 1 and captured.out == ""
    assert not (tmp_path / "r.json").exists() and exists.read_text() == "model,top1\nx,1\n"
    assert run["ckpt"].read_bytes() == before


@pytest.mark.parametrize("argv, needle", [
    ([], "nothing to evaluate: pass --checkpoint FILE"),
    (["--model", "local-dir:{export}", "--use-ema"], "--use-ema chooses between a checkpoint's raw and EMA weights"),
    (["--model", "deit_tiny_distilled_patch4_32", "--pretrained"], "without --checkpoint, --model names a model "
                                                                   "with pretrained weights"),
    (["--model", "local-dir:{missing}"], "has no config.json"),
])
def test_without_a_checkpoint_the_model_must_bring_its_weights(argv, needle, run, tmp_path, capsys):
    argv = [a.format(export=run["export"], missing=tmp_path / "nothing") for a in argv]
    assert evaluate.main([str(run["data"]), "-j", "0", *argv]) == 2
    err = capsys.readouterr().err
    assert needle.lower() in err.lower() and err.count("\n") == 1 and "Traceback" not in err


def test_validate_pys_num_samples_spelling_is_accepted():
    args = evaluate.build_parser().parse_args(["DIR", "--model", "m", "--num-samples", "40"])
    assert (args.data, args.model, args.val_num_samples, args.results_format) == ("DIR", "m", 40, "csv")
