"""save_pretrained: the student only, raw or EMA by explicit choice, a config.json plain timm reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from hub_checkpoints import LABELS, reference_model, write_run
from safetensors.torch import load_file, save_file
from timm.data import resolve_data_config

from timm_deit_distill.checkpoint import CheckpointError
from timm_deit_distill.hub import HubExportError, plain_timm_architecture, save_pretrained
from timm_deit_distill.models import timm_equivalent

X = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return write_run(tmp_path_factory.mktemp("run"))


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_ema_choice_is_explicit_refused_without_flags_and_recorded(run, tmp_path):
    with pytest.raises(CheckpointError, match="--use-ema or --no-ema"):
        save_pretrained(run.checkpoint, tmp_path / "none")
    assert not (tmp_path / "none").exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # no staging folder left behind

    for use_ema, expected, label in ((True, run.ema, "ema"), (False, run.raw, "raw")):
        folder = save_pretrained(run.checkpoint, tmp_path / label, use_ema=use_ema)
        weights = load_file(folder / "model.safetensors")
        assert weights.keys() == expected.keys()
        assert all(torch.equal(weights[k], expected[k]) for k in expected)
        config = json.loads((folder / "config.json").read_text())
        assert config["deit_distill"]["weights"] == label
        card = (folder / "README.md").read_text()
        assert ("EMA weights (`state_dict_ema`)" if use_ema else "raw weights (`state_dict`)") in card


def test_an_unavailable_choice_is_refused(tmp_path):
    no_ema = write_run(tmp_path / "run", ema=False)
    with pytest.raises(CheckpointError, match="no EMA weights"):
        save_pretrained(no_ema.checkpoint, tmp_path / "out", use_ema=True)
    folder = save_pretrained(no_ema.checkpoint, tmp_path / "out")  # nothing to choose: raw, recorded
    assert json.loads((folder / "config.json").read_text())["deit_distill"]["weights"] == "raw"


def test_folder_is_the_student_only_in_a_config_timm_reads(run, tmp_path):
    folder = save_pretrained(run.checkpoint, tmp_path / "out", use_ema=True)
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    arch, model_args = timm_equivalent(run.variant, num_classes=10)
    assert config["architecture"] == arch == "deit_tiny_distilled_patch16_224"
    assert {k: config["model_args"][k] for k in model_args} == {**model_args, "img_size": [32, 32]}
    cfg = config["pretrained_cfg"]
    assert cfg["input_size"] == [3, 32, 32] and cfg["mean"] == [0.5] * 3 and cfg["std"] == [0.25] * 3
    assert cfg["crop_pct"] == 1.0 and cfg["interpolation"] == "bilinear"
    assert config["label_names"] == LABELS
    assert not {"tag", "notes", "hf_hub_id", "url"} & cfg.keys()  # nothing stale from fb_in1k survives

    # timm's own local-dir loader: the data config and the outputs are the student's
    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    data = resolve_data_config(model=model)
    assert data["input_size"] == (3, 32, 32) and tuple(data["mean"]) == (0.5,) * 3
    assert model.pretrained_cfg["label_names"] == LABELS
    with torch.inference_mode():
        assert torch.equal(model(X), reference_model(run, ema=True)(X))


def test_bare_state_dict_needs_flags_and_says_which(run, tmp_path):
    pth = tmp_path / "weights.pth"
    torch.save(run.raw, pth)
    with pytest.raises(HubExportError, match="--model"):
        save_pretrained(pth, tmp_path / "a")
    folder = save_pretrained(pth, tmp_path / "a", model_name=run.variant)
    assert torch.equal(load_file(folder / "model.safetensors")["head.weight"], run.raw["head.weight"])

    torch.manual_seed(0)
    seven = timm.create_model(run.variant, num_classes=7).state_dict()
    save_file(seven, tmp_path / "seven.safetensors")
    with pytest.raises(HubExportError, match="--num-classes 7"):
        save_pretrained(tmp_path / "seven.safetensors", tmp_path / "b", model_name=run.variant)
    folder = save_pretrained(tmp_path / "seven.safetensors", tmp_path / "b", model_name=run.variant, num_classes=7)
    assert json.loads((folder / "config.json").read_text())["num_classes"] == 7

    big = timm.create_model(run.variant, img_size=64).state_dict()
    save_file(big, tmp_path / "big.safetensors")
    with pytest.raises(HubExportError, match="--img-size 64"):
        save_pretrained(tmp_path / "big.safetensors", tmp_path / "c", model_name=run.variant)
    folder = save_pretrained(tmp_path / "big.safetensors", tmp_path / "c", model_name=run.variant, img_size=64)
    assert json.loads((folder / "config.json").read_text())["pretrained_cfg"]["input_size"] == [3, 64, 64]


def test_timm_canonical_variant_keeps_its_name_without_its_stale_tag(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model("deit_tiny_distilled_patch16_224", num_classes=5)
    assert model.pretrained_cfg["tag"] == "fb_in1k"
    folder = save_pretrained(model, tmp_path / "out")
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "deit_tiny_distilled_patch16_224"
    assert "tag" not in config["pretrained_cfg"] and "hf_hub_id" not in config["pretrained_cfg"]
    assert config["pretrained_cfg"]["input_size"] == [3, 224, 224] and config["num_classes"] == 5
    assert config["deit_distill"]["weights"] == "module"
    with pytest.raises(HubExportError, match="use_ema"):
        save_pretrained(model, tmp_path / "again", use_ema=True)


def test_existing_folder_is_replaced_file_by_file_and_kept_when_export_fails(run, tmp_path):
    out = tmp_path / "out"
    save_pretrained(run.checkpoint, out, use_ema=False)
    (out / "notes.txt").write_text("mine")
    save_pretrained(run.checkpoint, out, use_ema=True, overwrite=True)  # a folder holding files: only when asked
    assert (out / "notes.txt").read_text() == "mine"
    assert json.loads((out / "config.json").read_text())["deit_distill"]["weights"] == "ema"
    before = _files(out)
    with pytest.raises(CheckpointError):
        save_pretrained(run.checkpoint, out, overwrite=True)  # ambiguous EMA choice: refused before any write
    assert _files(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_architecture_must_be_one_plain_timm_builds():
    assert plain_timm_architecture("resnet18", {"num_classes": 3}) == ("resnet18", {"num_classes": 3})
    with pytest.raises(HubExportError, match="not a model timm knows"):
        plain_timm_architecture("deit_nonexistent_patch3", {})
