"""push -> pull -> load with the real huggingface_hub client against the loopback Hub stand-in; tokens."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from hub_checkpoints import TOKEN, reference_model, write_run
from hub_standin import HubStandIn, client_subprocess_env, isolate_client
from huggingface_hub import constants
from huggingface_hub.errors import RepositoryNotFoundError
from safetensors.torch import load_file

from timm_deit_distill.commands import hub as hub_cli
from timm_deit_distill.hub import HubAuthError, load_model, pull, push_to_hub, save_pretrained

pytestmark = pytest.mark.filterwarnings("ignore:Use .content=<...>. to upload raw bytes:DeprecationWarning")

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
PUSH_CALLS = {("POST", "/api/repos/create"), ("POST", "/api/validate-yaml"),
              ("POST", "/api/models/acme/rt/preupload/main"), ("POST", "/acme/rt.git/info/lfs/objects/batch"),
              ("POST", "/api/models/acme/rt/commit/main")}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return write_run(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    with HubStandIn(tmp_path_factory.mktemp("standin")) as hub:
        yield hub


@pytest.fixture(scope="module")
def pushed(run, hub):
    info = push_to_hub(run.checkpoint, "acme/rt", use_ema=True, token=TOKEN, endpoint=hub.url)
    return info, list(hub.calls)


def test_push_makes_the_calls_facts_lists_and_one_commit(pushed, hub):
    info, calls = pushed
    assert info.oid == hub.head("acme/rt")
    assert set(calls) >= PUSH_CALLS
    puts = [path for method, path in calls if method == "PUT"]
    assert puts == [f"/lfs/{hub.stored('acme/rt', 'model.safetensors').oid}"]  # the weights went by LFS
    assert not hub.stored("acme/rt", "config.json").lfs


def test_round_trip_pull_is_the_exported_folder_at_one_commit_and_loads_identically(run, pushed, hub, tmp_path,
                                                                                     monkeypatch):
    isolate_client(monkeypatch, tmp_path)
    local = save_pretrained(run.checkpoint, tmp_path / "local", use_ema=True, repo_id="acme/rt")
    start = len(hub.calls)
    folder = pull("acme/rt", cache_dir=tmp_path / "cache", endpoint=hub.url)
    calls = hub.calls[start:]
    sha = hub.head("acme/rt")
    assert folder.name == sha
    lookups = [path for _, path in calls if path == "/api/models/acme/rt" or "/revision/" in path]
    assert lookups == ["/api/models/acme/rt"]  # the revision is resolved once ...
    assert all(f"/resolve/{sha}/" in path for _, path in calls if "/resolve/" in path)  # ... files at that sha
    assert {p.name: p.read_bytes() for p in local.iterdir()} == {
        p.name: p.read_bytes() for p in folder.iterdir() if p.name != ".gitattributes"}

    model = load_model("acme/rt", cache_dir=tmp_path / "cache", endpoint=hub.url)
    with torch.inference_mode():
        assert torch.equal(model(X), reference_model(run, ema=True)(X))


def test_branch_and_private_repo(run, hub, tmp_path, monkeypatch):
    isolate_client(monkeypatch, tmp_path)
    push_to_hub(run.checkpoint, "acme/priv", revision="dev", private=True, use_ema=False, token=TOKEN,
                endpoint=hub.url)
    cache = tmp_path / "cache"
    with pytest.raises(RepositoryNotFoundError):
        pull("acme/priv@dev", cache_dir=cache, endpoint=hub.url)  # private: not without a token
    folder = pull("acme/priv@dev", cache_dir=cache, token=TOKEN, endpoint=hub.url)
    weights = load_file(folder / "model.safetensors")
    assert all(torch.equal(weights[k], run.raw[k]) for k in run.raw)  # --no-ema: the raw weights
    with pytest.raises(FileNotFoundError, match="not a timm model repo"):
        pull("acme/priv", cache_dir=cache, token=TOKEN, endpoint=hub.url)  # main holds only .gitattributes
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert pull("acme/priv@dev", cache_dir=cache) == folder  # refs/dev was recorded after verification


def test_plain_timm_process_loads_the_pushed_student_from_the_standin(run, pushed, hub, tmp_path):
    torch.save(X, tmp_path / "x.pt")
    code = textwrap.dedent(f"""
        import json, sys, timm, torch
        x = torch.load({str(tmp_path / 'x.pt')!r})
        outs = {{}}
        for name in ("hf-hub:acme/rt", "hf-hub:acme/rt@{pushed[0].oid}"):
            model = timm.create_model(name, pretrained=True).eval()
            with torch.inference_mode():
                outs[name] = model(x)
        torch.save(outs, {str(tmp_path / 'out.pt')!r})
        cfg = model.pretrained_cfg
        print(json.dumps({{"plain": "timm_deit_distill" not in sys.modules, "input_size": cfg["input_size"],
                          "mean": cfg["mean"], "crop_pct": cfg["crop_pct"], "labels": cfg["label_names"]}}))
    """)
    proc = subprocess.run([sys.executable, "-W", "error::UserWarning", "-c", code], capture_output=True, text=True,
                          timeout=180, env=client_subprocess_env(tmp_path, endpoint=hub.url))
    assert proc.returncode == 0, proc.stderr
    facts = json.loads(proc.stdout.strip().splitlines()[-1])
    assert facts == {"plain": True, "input_size": [3, 32, 32], "mean": [0.5] * 3, "crop_pct": 1.0,
                     "labels": ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]}
    with torch.inference_mode():
        expected = reference_model(run, ema=True)(X)
    for out in torch.load(tmp_path / "out.pt").values():
        assert torch.equal(out, expected)


def test_push_without_a_token_fails_before_any_request_and_says_how_to_log_in(run, hub, tmp_path, monkeypatch,
                                                                              capsys):
    isolate_client(monkeypatch, tmp_path)
    start = len(hub.calls)
    with pytest.raises(HubAuthError, match=r"hf auth login.*HF_TOKEN"):
        push_to_hub(run.checkpoint, "acme/none", use_ema=True, endpoint=hub.url)
    assert hub_cli.main(["push", str(run.checkpoint), "--repo-id", "acme/none", "--use-ema"]) == 2
    err = capsys.readouterr().err
    assert "deit-distill push: error: No Hugging Face token found" in err and "hf auth login" in err
    assert hub.calls[start:] == []


def test_a_rejected_token_is_reported_and_never_printed(run, hub, tmp_path, monkeypatch, capsys, caplog):
    isolate_client(monkeypatch, tmp_path)
    secret = "hf_wrong_secret_0123456789"
    monkeypatch.setenv("HF_TOKEN", secret)
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)  # what HF_ENDPOINT sets at import
    caplog.set_level("DEBUG")
    assert hub_cli.main(["push", str(run.checkpoint), "--repo-id", "acme/denied", "--no-ema"]) == 2
    captured = capsys.readouterr()
    assert "401" in captured.err and "hf auth whoami" in captured.err
    assert secret not in captured.out + captured.err + caplog.text
    assert "acme/denied" not in hub.repos


def test_cli_push_then_pull_in_a_fresh_process_with_the_stored_login(run, hub, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "token").write_text(TOKEN)  # what `hf auth login` stores (HF_HOME/token)
    out = tmp_path / "pulled"
    code = textwrap.dedent(f"""
        import sys
        from timm_deit_distill.commands.cli import main
        rc = main(["push", {str(run.checkpoint)!r}, "--repo-id", "acme/cli", "--use-ema", "--dataset", "acme/digits"])
        sys.exit(rc or main(["pull", "acme/cli", "--out", {str(out)!r}]))
    """)
    env = client_subprocess_env(home, endpoint=hub.url)
    env["HF_HUB_VERBOSITY"] = "debug"  # the client's own logs must not carry the token either
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr
    assert f"pushed acme/cli (main) at commit {hub.head('acme/cli')}" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == str(out)
    assert TOKEN not in proc.stdout + proc.stderr
    assert all(TOKEN.encode() not in p.read_bytes() for p in out.iterdir())
    weights = load_file(out / "model.safetensors")
    assert all(torch.equal(weights[k], run.ema[k]) for k in run.ema)


def test_cli_to_dir_writes_the_folder_without_uploading(run, hub, tmp_path, capsys):
    start = len(hub.calls)
    assert hub_cli.main(["push", str(run.checkpoint), "--to-dir", str(tmp_path / "out"), "--no-ema"]) == 0
    assert "raw weights of deit_tiny_distilled_patch4_32" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert hub.calls[start:] == []
    assert hub_cli.main(["push", str(run.checkpoint), "--no-ema"]) == 2
    assert "--repo-id ORG/NAME is required" in capsys.readouterr().err
