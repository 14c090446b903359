"""The `deit-distill` entry point: --version and the `models` subcommand."""

from __future__ import annotations

import subprocess
import sys

import timm

import timm_deit_distill
from timm_deit_distill.commands.cli import main


def test_version(capsys):
    try:
        main(["--version"])
    except SystemExit as e:
        assert e.code == 0
    assert capsys.readouterr().out.strip() == f"deit-distill {timm_deit_distill.__version__}"


def test_models_lists_every_variant_with_true_params_and_size(capsys):
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(rows) == set(timm_deit_distill.DISTILLED_VARIANTS)
    for name, (_, params, size, classes, weights, origin) in rows.items():
        model = timm.create_model(name)
        assert params == f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M"
        h, w = model.pretrained_cfg["input_size"][1:]
        assert size == f"{h}x{w}"
        assert int(classes) == model.num_classes
        assert weights == (model.pretrained_cfg.get("hf_hub_id") or "none")
        assert origin == ("plugin" if name in timm_deit_distill.PLUGIN_VARIANTS else "timm")


def test_console_script_runs_as_module():
    out = subprocess.run([sys.executable, "-m", "timm_deit_distill", "models"],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    assert "deit_tiny_distilled_patch4_32" in out and "32x32" in out
