"""End to end on a checkpoint the real trainer wrote: push over loopback, the card read as a user would,
and plain timm in a separate process giving the trainer's own student output for output."""

from __future__ import annotations

import csv
import hashlib
import re
import subprocess
import sys
import textwrap

import pytest
import timm
import torch
from hub_checkpoints import TOKEN
from hub_standin import HubStandIn, client_subprocess_env, isolate_client
from huggingface_hub import ModelCard, constants
from safetensors.torch import save_file

from timm_deit_distill.checkpoint import create_model_from_checkpoint
from timm_deit_distill.commands import cli
from timm_deit_distill.data.digits import write_digits_imagefolder
from timm_deit_distill.hub import pull

pytestmark = [pytest.mark.slow,
              pytest.mark.filterwarnings("ignore:Use .content=<...>. to upload raw bytes:DeprecationWarning")]


def test_trained_student_published_and_loaded_by_plain_timm(tmp_path, monkeypatch, capsys):
    data = write_digits_imagefolder(tmp_path / "digits", train_per_class=5)
    torch.manual_seed(0)
    save_file(timm.create_model("resnet10t", num_classes=10).state_dict(), tmp_path / "teacher.safetensors")
    train = [sys.executable, "-m", "timm_deit_distill", "train", str(data), "--model", "deit_tiny_distilled_patch4_32",
             "--num-classes", "10", "--epochs", "1", "-b", "50", "--workers", "0", "--model-ema",
             "--distill-type", "hard", "--distill-teacher", "resnet10t",
             "--distill-teacher-path", str(tmp_path / "teacher.safetensors"),
                 "--no-teacher-check",  # a random-weight teacher: this test is about publishing
             "--output", str(tmp_path / "runs"), "--experiment", "e2e"]
    proc = subprocess.run(train, capture_output=True, text=True, timeout=600,
                          env=client_subprocess_env(tmp_path / "home", offline=True))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run_dir = tmp_path / "runs" / "e2e"
    checkpoint = run_dir / "model_best.pth.tar"

    isolate_client(monkeypatch, tmp_path / "client")
    with HubStandIn(tmp_path / "standin") as hub:
        with monkeypatch.context() as patch:
            # HfApi reads ENDPOINT per call, which is all push needs; downloads also use the URL template
            # built from it at import, so the patch is undone before the pull (which takes endpoint=).
            patch.setattr(constants, "ENDPOINT", hub.url)
            patch.setenv("HF_TOKEN", TOKEN)
            assert cli.main(["push", str(checkpoint), "--repo-id", "acme/trained", "--use-ema"]) == 0
        assert TOKEN not in "".join(capsys.readouterr())
        folder = pull("acme/trained", cache_dir=tmp_path / "cache", endpoint=hub.url)

        # the card, read as a user would
        card = ModelCard.load(folder / "README.md")
        assert card.data.library_name == "timm" and "distillation-hard" in card.data.tags
        with open(run_dir / "summary.csv", newline="") as f:
            row = list(csv.DictReader(f))[-1]
        teacher_sha = hashlib.sha256((tmp_path / "teacher.safetensors").read_bytes()).hexdigest()
        # summary.csv follows timm: eval_* are the EMA's, raw_eval_* the raw weights' (the card's head rows)
        for label, column in (("top-1, EMA weights", "eval_top1"), ("top-1, class-token head", "raw_eval_top1_cls"),
                              ("top-1, distillation-token head", "raw_eval_top1_dist"),
                              ("student-teacher agreement, EMA weights", "teacher_agreement")):
            assert re.search(rf"^\| {re.escape(label)} \| {float(row[column]):.2f} \|$", card.text, re.M), label
        assert f"| teacher weights sha256 | `{teacher_sha}` |" in card.text
        assert "| teacher | `resnet10t` |" in card.text and "| distillation type | hard |" in card.text
        assert str(tmp_path) not in card.text + (folder / "config.json").read_text()

        # plain timm, separate process, against the stand-in
        x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        torch.save(x, tmp_path / "x.pt")
        code = textwrap.dedent(f"""
            import sys, timm, torch
            model = timm.create_model("hf-hub:acme/trained", pretrained=True).eval()
            with torch.inference_mode():
                torch.save(model(torch.load({str(tmp_path / 'x.pt')!r})), {str(tmp_path / 'out.pt')!r})
            assert "timm_deit_distill" not in sys.modules
        """)
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180,
                              env=client_subprocess_env(tmp_path / "plain", endpoint=hub.url))
        assert proc.returncode == 0, proc.stderr
    student, _ = create_model_from_checkpoint(str(checkpoint), use_ema=True)  # the trainer's own reader
    with torch.inference_mode():
        assert torch.equal(torch.load(tmp_path / "out.pt"), student(x))
