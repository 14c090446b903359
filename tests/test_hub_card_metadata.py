"""The model card's front matter, as the Hub reads it: `model-index` (the results widget), `base_model` when
training started from a Hub model, the teacher as a tag; checked with the Hub's metadata validator.

huggingface_hub's `ModelCard.validate()` posts the card to `/api/validate-yaml`; the stand-in
(tests/hub_standin.py) answers with the checks the Hub makes (`metadata_problems`), and the first tests here
show it rejects what the Hub rejects, so a card that passes is not passing a check that cannot fail. The
model-index is read back with huggingface_hub's own parser (`ModelCard.load(...).data.eval_results`) and
compared with the run's summary.csv read independently.
"""

from __future__ import annotations

import csv
import json
from types import SimpleNamespace

import pytest
import timm
import torch
from hub_checkpoints import TEACHER, write_run
from hub_standin import HubStandIn, metadata_problems
from huggingface_hub import EvalResult, ModelCard, ModelCardData, constants
from train_fixtures import FAST, STUDENT, STUDENT_KWARGS, digits, load

from timm_deit_distill.hub import save_pretrained

REPO = "acme/deit-tiny-digits"


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    with HubStandIn(tmp_path_factory.mktemp("hub")) as stand_in:
        yield stand_in


@pytest.fixture
def validator(hub, monkeypatch):
    """ModelCard.validate() against the stand-in (it posts to constants.ENDPOINT, read at call time)."""
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    return hub


def _summary(run) -> list[dict]:
    with open(run.checkpoint.parent / "summary.csv", newline="") as f:
        return list(csv.DictReader(f))


def _export(tmp_path, *, use_ema=True, initial_weights=None, **run_options):
    run = write_run(tmp_path / "run", epoch=1, epochs=3, **run_options)
    if initial_weights is not None:  # what the trainer records (deit_distill['initial_weights'])
        checkpoint = load(run.checkpoint)
        checkpoint["deit_distill"]["initial_weights"] = initial_weights
        torch.save(checkpoint, run.checkpoint)
    folder = save_pretrained(run.checkpoint, tmp_path / "out", use_ema=use_ema, repo_id=REPO,
                             datasets=["acme/digits"])
    return ModelCard.load(folder / "README.md"), run


# --- the validator: it rejects what the Hub rejects ---------------------------------------------------------------

def _rejections(card: ModelCard) -> list[str]:
    """The messages /api/validate-yaml answered with (ModelCard.validate raises its 400 body as a ValueError)."""
    with pytest.raises(ValueError) as e:
        card.validate()
    return [error["message"] for error in json.loads(str(e.value))["errors"]]


def _card(**data) -> ModelCard:
    """A card whose front matter huggingface_hub writes from ``data`` (its content is built from card.data)."""
    card = ModelCard("---\nlicense: apache-2.0\n---\n# x\n")
    card.data = ModelCardData(**data)
    return card


def _result(**changes) -> EvalResult:
    fields = dict(task_type="image-classification", dataset_type="acme/digits", dataset_name="digits",
                  metric_type="accuracy", metric_value=91.5)
    return EvalResult(**{**fields, **changes})


@pytest.mark.parametrize("results, message", [
    # None where the schema requires a value: huggingface_hub's writer drops it, as a careless writer would
    ([_result(dataset_name=None)], '"model-index[0].results[0].dataset.name" is required'),
    ([_result(metric_value=None)], '"model-index[0].results[0].metrics[0].value" is required'),
    ([_result(task_type=None)], '"model-index[0].results[0].task.type" is required'),
    ([], '"model-index[0].results" must be a non-empty list'),
])
def test_the_validator_rejects_a_model_index_the_hub_rejects(results, message, validator):
    card = _card(license="apache-2.0", model_name="x", eval_results=results)
    assert "model-index" in card.content
    assert _rejections(card) == [message]
    if results:  # huggingface_hub's own reader cannot take it either: the schema is the same
        with pytest.raises(ValueError, match="Invalid `model_index`"):
            ModelCard(card.content)
    _card(license="apache-2.0", model_name="x", eval_results=[_result()]).validate()  # a complete one passes


@pytest.mark.parametrize("data, message", [
    ({"base_model": "acme/a/b"}, "\"base_model\" 'acme/a/b' is not a model id on the Hub"),
    ({"base_model": "acme/a", "base_model_relation": "distillation"}, '"base_model_relation" must be one of'),
    ({"base_model_relation": "finetune"}, '"base_model_relation" needs "base_model"'),
])
def test_the_validator_rejects_base_model_fields_the_hub_rejects(data, message, validator):
    (problem,) = _rejections(_card(license="apache-2.0", **data))
    assert problem.startswith(message)


# --- the card ----------------------------------------------------------------------------------------------------

def test_the_card_passes_the_hubs_metadata_checks(tmp_path, validator):
    card, _ = _export(tmp_path, initial_weights={"flag": "--pretrained", "model": "deit_tiny_patch16_224.fb_in1k",
                                                 "hub_id": "timm/deit_tiny_patch16_224.fb_in1k"})
    card.validate()  # what the Hub's upload runs on a README.md (HfApi._validate_yaml: the same endpoint)
    assert metadata_problems(card.data.to_dict()) == []
    assert ("POST", "/api/validate-yaml") in validator.calls


@pytest.mark.parametrize("use_ema", [True, False])
def test_the_model_index_holds_the_published_weights_results(use_ema, tmp_path):
    card, run = _export(tmp_path, use_ema=use_ema)
    row = next(r for r in _summary(run) if int(r["epoch"]) == 1)  # the checkpoint was saved at epoch 1
    suffix = "_ema" if use_ema else ""  # the EMA weights' own accuracy when they are the ones published
    assert card.data.model_name == REPO
    common = dict(task_type="image-classification", task_name="Image Classification", dataset_type="acme/digits",
                  dataset_name="acme/digits", dataset_split="validation")
    assert card.data.eval_results == [
        EvalResult(**common, metric_type="accuracy", metric_name="Top 1 Accuracy",
                   metric_value=float(row[f"eval_top1{suffix}"])),
        EvalResult(**common, metric_type="top_5_accuracy", metric_name="Top 5 Accuracy",
                   metric_value=float(row[f"eval_top5{suffix}"])),
    ]


def test_a_card_without_results_has_no_model_index(tmp_path):
    run = write_run(tmp_path / "run", epoch=1, epochs=3)
    (run.checkpoint.parent / "summary.csv").unlink()
    checkpoint = load(run.checkpoint)
    checkpoint["summary"] = []
    torch.save(checkpoint, run.checkpoint)
    card = ModelCard.load(save_pretrained(run.checkpoint, tmp_path / "out", use_ema=True) / "README.md")
    assert card.data.eval_results is None and "model-index" not in card.content.split("---")[1]


def test_base_model_is_the_hub_model_training_started_from(tmp_path):
    card, _ = _export(tmp_path, initial_weights={"flag": "--initial-checkpoint", "file": "model.safetensors",
                                                 "hub_id": "acme/deit-tiny-start"})
    assert (card.data.base_model, card.data.base_model_relation) == ("acme/deit-tiny-start", "finetune")
    assert "| starting weights | `acme/deit-tiny-start` (--initial-checkpoint) |" in card.text
    card, _ = _export(tmp_path / "b", initial_weights={"flag": "--initial-checkpoint", "file": "w.pth",
                                                       "hub_id": None})
    assert card.data.get("base_model") is None and card.data.get("base_model_relation") is None
    assert "| starting weights | `w.pth` (--initial-checkpoint) |" in card.text
    card, _ = _export(tmp_path / "c")  # trained from random weights: nothing to name
    assert card.data.get("base_model") is None and "starting weights" not in card.text


def test_the_teacher_is_a_tag_not_a_base_model(tmp_path):
    card, _ = _export(tmp_path)
    assert f"teacher:{TEACHER['hub_id']}" in card.data.tags and card.data.get("base_model") is None
    card, _ = _export(tmp_path / "none", distill_type="none")
    assert not [t for t in card.data.tags if t.startswith("teacher:")]


# --- what the trainer records -------------------------------------------------------------------------------------

def _settings(**kw) -> SimpleNamespace:
    return SimpleNamespace(**{"model": "m", "pretrained": False, "pretrained_path": None, "initial_checkpoint": "",
                              **kw})


def test_the_start_of_training_is_recorded_with_its_hub_model(tmp_path):
    from timm_deit_distill.factory import initial_weights_origin

    model = timm.create_model("deit_tiny_patch16_224.fb_in1k", pretrained=False)  # its cfg names the Hub repo
    assert initial_weights_origin(_settings(model="deit_tiny_patch16_224.fb_in1k", pretrained=True), model) == {
        "flag": "--pretrained", "model": "deit_tiny_patch16_224.fb_in1k", "hub_id": "timm/deit_tiny_patch16_224.fb_in1k"}
    assert initial_weights_origin(_settings(), model) is None  # random weights
    cached = tmp_path / "hub" / "models--acme--deit-start" / "snapshots" / ("0" * 40) / "model.safetensors"
    assert initial_weights_origin(_settings(initial_checkpoint=str(cached)), model) == {
        "flag": "--initial-checkpoint", "file": "model.safetensors", "hub_id": "acme/deit-start"}
    assert initial_weights_origin(_settings(pretrained=True, pretrained_path=str(cached)), model)["hub_id"] == (
        "acme/deit-start")
    resumed = {"deit_distill": {"initial_weights": {"flag": "--pretrained", "hub_id": "timm/x"}}}
    assert initial_weights_origin(_settings(pretrained=True), model, resumed=resumed) == {
        "flag": "--pretrained", "hub_id": "timm/x"}  # a resumed run keeps its start


def test_a_run_started_from_a_hub_file_publishes_it_as_base_model(tmp_path):
    """End to end: --initial-checkpoint FILE from the Hugging Face cache -> the checkpoint records the repo ->
    the exported card's base_model; a run started from that run's checkpoint names the same repo."""
    from timm_deit_distill.commands import train

    data = digits(tmp_path / "digits", train_per_class=2)
    torch.manual_seed(0)
    start = timm.create_model("deit_tiny_distilled_patch4_32", num_classes=10, **STUDENT_KWARGS)
    cached = tmp_path / "hf" / "models--acme--deit-tiny-start" / "snapshots" / ("a" * 40) / "pytorch_model.bin"
    cached.parent.mkdir(parents=True)
    torch.save(start.state_dict(), cached)
    argv = ["--data-dir", str(data), *STUDENT, *FAST, "--epochs", "1", "--output", str(tmp_path)]
    assert train.main([*argv, "--experiment", "a", "--initial-checkpoint", str(cached)]) == 0
    recorded = load(tmp_path / "a" / "last.pth.tar")["deit_distill"]["initial_weights"]
    assert recorded == {"flag": "--initial-checkpoint", "file": "pytorch_model.bin", "hub_id": "acme/deit-tiny-start"}
    card = ModelCard.load(save_pretrained(tmp_path / "a" / "last.pth.tar", tmp_path / "export") / "README.md")
    assert card.data.base_model == "acme/deit-tiny-start" and card.data.base_model_relation == "finetune"
    assert train.main([*argv, "--experiment", "b", "--initial-checkpoint", str(tmp_path / "a" / "last.pth.tar")]) == 0
    assert load(tmp_path / "b" / "last.pth.tar")["deit_distill"]["initial_weights"]["hub_id"] == "acme/deit-tiny-start"
