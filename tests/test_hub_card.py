"""The model card: front matter the Hub parses, and facts taken from the checkpoint and its summary.csv."""

from __future__ import annotations

import csv
import re
import shutil

import pytest
from hub_checkpoints import TEACHER, write_run
from huggingface_hub import ModelCard

from timm_deit_distill.hub import save_pretrained
from timm_deit_distill.records import write_summary


def _table(card_text: str, heading: str) -> dict[str, str]:
    """The two-column table under ``## heading``, as a dict."""
    section = card_text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (.+?) \| (.+?) \|$", section, re.M)
    return {k: v for k, v in rows if k.strip() and set(k) != {"-"}}


@pytest.fixture(scope="module")
def card(tmp_path_factory):
    root = tmp_path_factory.mktemp("card")
    run = write_run(root / "run", epoch=1, epochs=3)
    folder = save_pretrained(run.checkpoint, root / "out", use_ema=True, repo_id="acme/deit-tiny-digits",
                             datasets=["acme/digits"])
    with open(run.checkpoint.parent / "summary.csv", newline="") as f:  # read as a user would, independently
        rows = list(csv.DictReader(f))
    return ModelCard.load(folder / "README.md"), rows, run


def test_front_matter_is_what_the_hub_expects(card):
    model_card, _, _ = card
    data = model_card.data
    assert data.library_name == "timm" and data.license == "apache-2.0"
    assert data.datasets == ["acme/digits"] and data.pipeline_tag == "image-classification"
    assert {"timm", "deit", "knowledge-distillation", "distillation-hard"} <= set(data.tags)


def test_results_are_the_summary_row_of_the_published_epoch(card):
    model_card, rows, run = card
    row = next(r for r in rows if int(r["epoch"]) == 1)  # the checkpoint was saved at epoch 1
    results = _table(model_card.text, "Results")
    expected = {
        "top-1, fused heads (average of class and distillation heads)": row["eval_top1"],
        "top-1, class-token head": row["eval_top1_cls"],
        "top-1, distillation-token head": row["eval_top1_dist"],
        "top-5, fused heads": row["eval_top5"],
        "top-1, EMA weights": row["eval_top1_ema"],
        "teacher top-1 on the same evaluation set": row["teacher_top1"],
        "student-teacher agreement": row["teacher_agreement"],
    }
    for label, value in expected.items():
        assert results[label] == f"{float(value):.2f}", label
    assert "Epoch 1, the epoch these weights were saved at." in model_card.text
    assert "the EMA row is their accuracy" in model_card.text
    best = max(rows, key=lambda r: float(r["eval_top1"]))  # the run went on improving after epoch 1
    assert f"Best fused top-1 during the run: {float(best['eval_top1']):.2f} at epoch {best['epoch']}" in model_card.text


def test_teacher_distillation_and_recipe_are_stated(card):
    model_card, rows, run = card
    distill = _table(model_card.text, "Distillation")
    assert distill["teacher"] == "`regnety_160.deit_in1k`"
    assert distill["teacher hub id"] == f"`{TEACHER['hub_id']}`"
    assert distill["teacher weights sha256"] == f"`{TEACHER['sha256']}`"
    assert distill["teacher top-1 (this run's evaluation set)"] == f"{float(rows[1]['teacher_top1']):.2f}"
    assert (distill["distillation type"], distill["alpha"], distill["tau"], distill["soft-loss reduction"]) == (
        "hard", "0.5", "1", "deit")
    recipe = _table(model_card.text, "Training recipe")
    assert recipe["lr"] == "0.0005" and recipe["epochs"] == "3" and recipe["aa"] == "rand-m9-mstd0.5-inc1"
    assert "Recipe preset: `deit_tiny`" in model_card.text
    assert distill["teacher checkpoint"] == "`regnety_160.pth`"
    config = (run.checkpoint.parent.parent / "out" / "config.json").read_text()
    assert "/somewhere/private" not in model_card.text + config  # local paths stay local

    details = _table(model_card.text, "Model details")
    assert details["architecture (as trained)"] == "`deit_tiny_distilled_patch4_32`"
    assert details["architecture (plain timm)"].startswith("`deit_tiny_distilled_patch16_224` with `img_size=(32, 32)")
    assert details["input size"].startswith("32x32 (bilinear")


def test_usage_snippet_loads_with_plain_timm(card):
    model_card, _, _ = card
    assert 'timm.create_model("hf-hub:acme/deit-tiny-digits", pretrained=True)' in model_card.text
    assert "deit-distill pull acme/deit-tiny-digits" in model_card.text


def test_card_without_teacher_or_summary_says_so(tmp_path):
    run = write_run(tmp_path / "run", distill_type="none", ema=False)
    (run.checkpoint.parent / "summary.csv").unlink()
    folder = save_pretrained(run.checkpoint, tmp_path / "out")
    text = ModelCard.load(folder / "README.md").text
    assert "None: trained on labels only." in text
    # no summary.csv beside it: the rows the checkpoint carries (epochs 0..1) stand in for it
    fused = _table(text, "Results")["top-1, fused heads (average of class and distillation heads)"]
    assert fused == f"{run.summary_rows[1]['eval_top1']:.2f}"


def test_a_checkpoint_copied_beside_another_runs_summary_keeps_its_own_results(tmp_path, caplog):
    # The case: an old checkpoint sitting beside another run's summary.csv must not take its results.
    ours = write_run(tmp_path / "ours", epoch=1, epochs=3)
    other = write_run(tmp_path / "other", epoch=1, epochs=3)
    other_rows = [dict(row, eval_top1=row["eval_top1"] + 20, train_loss=row["train_loss"] / 2)
                  for row in other.summary_rows]
    write_summary(other.checkpoint.parent / "summary.csv", other_rows, ema=True)
    copied = other.checkpoint.parent / "copied.pth.tar"
    shutil.copy(ours.checkpoint, copied)
    folder = save_pretrained(copied, tmp_path / "out", use_ema=True)
    results = _table(ModelCard.load(folder / "README.md").text, "Results")
    fused = results["top-1, fused heads (average of class and distillation heads)"]
    assert fused == f"{ours.summary_rows[1]['eval_top1']:.2f}"
    assert "another run's?" in caplog.text


@pytest.mark.parametrize("variant, distilled, dtype, headline, tags, not_tags", [
    ("deit_tiny_distilled_patch4_32", True, "hard",
     "A DeiT student (`deit_tiny_distilled_patch4_32`) trained with **hard** distillation through attention from",
     {"deit", "vision-transformer", "knowledge-distillation", "distillation-hard"}, set()),
    ("deit_tiny_patch16_224", False, "soft",
     "A DeiT student (`deit_tiny_patch16_224`, one head, no distillation token) trained with **soft** distillation "
     "on its one head from", {"deit", "vision-transformer", "knowledge-distillation"}, set()),
    ("mobilenetv3_small_050", False, "soft", "A timm student (`mobilenetv3_small_050`, one head, no distillation "
     "token) trained with **soft** distillation on its one head from", {"knowledge-distillation"},
     {"deit", "vision-transformer"}),
    ("resnet10t", False, "none", "A timm model (`resnet10t`) trained without a teacher", {"timm"},
     {"deit", "vision-transformer", "knowledge-distillation"}),
])
def test_the_headline_and_tags_say_what_the_student_is_and_how_it_learned(variant, distilled, dtype, headline,
                                                                           tags, not_tags):
    """'Distillation through attention' and the deit / vision-transformer tags belong to students that have them
    (timm's registry decides the family); a run without a teacher is not tagged knowledge-distillation."""
    from timm_deit_distill.hub.card import CardFacts, build_model_card

    distill = {"type": dtype, "teacher": "resnet10t"} if dtype != "none" else {"type": "none"}
    text = build_model_card(CardFacts(
        variant=variant, timm_architecture=variant, model_args={"num_classes": 10}, num_params=1000,
        num_classes=10, data_config={"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3},
        weights="raw", distill=distill, distilled=distilled))
    first = text.split("\n---\n", 1)[1].split("\n\n")[1]
    assert first.startswith(headline), first
    data_tags = set(ModelCard(text).data.tags)
    assert tags <= data_tags and not (not_tags & data_tags), data_tags
