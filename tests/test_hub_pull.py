"""pull: one commit, every file checked against the Hub's checksums; offline from the HF cache."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import timm
import torch
from hub_checkpoints import TOKEN, reference_model, write_run
from hub_standin import HubStandIn, client_subprocess_env, git_blob_sha1, isolate_client
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import LocalEntryNotFoundError
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed

from timm_deit_distill.hub import HubIntegrityError, load_model, pull, push_to_hub, save_pretrained

pytestmark = pytest.mark.filterwarnings("ignore:Use .content=<...>. to upload raw bytes:DeprecationWarning")  # inside huggingface_hub

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def build_hf_cache(cache: Path, repo_id: str, files: dict[str, bytes], *, commit: str = COMMIT) -> Path:
    """An HF cache entry in the layout FACTS.md describes: blobs named by ETag, relative links, refs/main."""
    storage = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = storage / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (storage / "blobs").mkdir()
    for name, data in files.items():
        etag = hashlib.sha256(data).hexdigest() if name.endswith(".safetensors") else git_blob_sha1(data)
        blob = storage / "blobs" / etag
        blob.write_bytes(data)
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
    (storage / "refs").mkdir()
    (storage / "refs" / "main").write_text(commit)  # 40 hex, no trailing newline
    return snapshot


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return write_run(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
    folder = save_pretrained(run.checkpoint, tmp_path_factory.mktemp("export") / "out", use_ema=True,
                             repo_id="acme/cached")
    return {p.name: p.read_bytes() for p in folder.iterdir()}


# -- offline ---------------------------------------------------------------------------------------------

def test_offline_pull_and_load_from_a_cache_in_hf_layout(run, exported, tmp_path, monkeypatch):
    isolate_client(monkeypatch, tmp_path, offline=True)
    cache = tmp_path / "cache"
    snapshot = build_hf_cache(cache, "acme/cached", exported)
    assert pull("acme/cached", cache_dir=cache) == snapshot
    out = pull("acme/cached", cache_dir=cache, out_dir=tmp_path / "copy")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == exported
    assert not any(p.is_symlink() for p in out.iterdir())
    model = load_model("acme/cached", cache_dir=cache)
    with torch.inference_mode():
        assert torch.equal(model(X), reference_model(run, ema=True)(X))


def test_offline_pull_names_what_is_missing(exported, tmp_path, monkeypatch):
    isolate_client(monkeypatch, tmp_path, offline=True)
    cache = tmp_path / "cache"
    snapshot = build_hf_cache(cache, "acme/cached", exported)
    with pytest.raises(LocalEntryNotFoundError, match=r"acme/absent@main is not in the Hub cache.*"
                                                      r"deit-distill pull acme/absent"):
        pull("acme/absent", cache_dir=cache)
    with pytest.raises(LocalEntryNotFoundError, match="acme/cached@v2"):
        pull("acme/cached@v2", cache_dir=cache)
    (snapshot / "model.safetensors").unlink()
    with pytest.raises(LocalEntryNotFoundError, match=r"HF_HUB_OFFLINE is set .* lacks model\.safetensors"):
        pull("acme/cached", cache_dir=cache)


def test_offline_pull_refuses_a_corrupted_cached_blob(exported, tmp_path, monkeypatch):
    isolate_client(monkeypatch, tmp_path, offline=True)
    cache = tmp_path / "cache"
    snapshot = build_hf_cache(cache, "acme/cached", exported)
    blob = (snapshot / "model.safetensors").resolve()
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01
    blob.write_bytes(bytes(data))
    with pytest.raises(HubIntegrityError, match="model.safetensors: sha256"):
        pull("acme/cached", cache_dir=cache)
    assert not blob.exists() and not (snapshot / "model.safetensors").exists()
    assert (snapshot / "config.json").exists()  # the good files stay


def test_plain_timm_loads_offline_and_plugin_variants_resolve_their_hub_ids(run, exported, tmp_path):
    """In a process that never imports this package, timm loads the pushed student from the cache; then, with
    the package imported, a plugin variant with pretrained=True finds its hub id's weights in the cache."""
    cache = tmp_path / "hub-cache"
    build_hf_cache(cache, "acme/cached", exported)
    torch.manual_seed(0)
    teacher_224 = timm.create_model("deit_tiny_distilled_patch16_224").state_dict()
    save_file(teacher_224, tmp_path / "w.safetensors")
    build_hf_cache(cache, "timm/deit_tiny_distilled_patch16_224.fb_in1k",
                   {"model.safetensors": (tmp_path / "w.safetensors").read_bytes()})
    torch.save(X, tmp_path / "x.pt")
    code = textwrap.dedent(f"""
        import json, sys, timm, torch
        model = timm.create_model("hf-hub:acme/cached", pretrained=True).eval()
        with torch.inference_mode():
            out = model(torch.load({str(tmp_path / 'x.pt')!r}))
        plain = "timm_deit_distill" not in sys.modules
        import timm_deit_distill
        m384 = timm.create_model("deit_tiny_distilled_patch16_384", pretrained=True)
        torch.save({{"out": out, "pos": m384.pos_embed.data, "qkv": m384.blocks[2].attn.qkv.weight.data}},
                   {str(tmp_path / 'res.pt')!r})
        print(json.dumps({{"plain": plain, "input_size": model.pretrained_cfg["input_size"],
                          "labels": model.pretrained_cfg["label_names"]}}))
    """)
    proc = subprocess.run([sys.executable, "-W", "error::UserWarning", "-c", code], capture_output=True, text=True,
                          timeout=180, env=client_subprocess_env(tmp_path, offline=True))
    assert proc.returncode == 0, proc.stderr
    facts = json.loads(proc.stdout.strip().splitlines()[-1])
    assert facts["plain"] and facts["input_size"] == [3, 32, 32] and facts["labels"][0] == "zero"
    res = torch.load(tmp_path / "res.pt")
    with torch.inference_mode():
        assert torch.equal(res["out"], reference_model(run, ema=True)(X))
    expected_pos = resample_abs_pos_embed(teacher_224["pos_embed"], new_size=(24, 24), num_prefix_tokens=2)
    torch.testing.assert_close(res["pos"], expected_pos)
    assert torch.equal(res["qkv"], teacher_224["blocks.2.attn.qkv.weight"])


# -- online, against the stand-in ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def hub(run, tmp_path_factory):
    with HubStandIn(tmp_path_factory.mktemp("standin")) as hub:
        push_to_hub(run.checkpoint, "acme/tiny", use_ema=True, token=TOKEN, endpoint=hub.url)
        yield hub


def _corrupt(kind: str, data: bytes) -> bytes:
    if kind == "truncated":
        return data[: len(data) - 1000]
    if kind == "corrupt":  # the safetensors header overwritten
        return b"\xff" * 64 + data[64:]
    flipped = bytearray(data)  # one bit inside the tensor data, which safetensors cannot notice
    flipped[len(data) - 12345] ^= 0x10
    return bytes(flipped)


@pytest.mark.parametrize("kind", ["truncated", "corrupt", "bit-flipped"])
def test_pull_refuses_weights_changed_on_the_server_and_evicts_them(kind, hub, tmp_path, monkeypatch):
    isolate_client(monkeypatch, tmp_path)
    obj = hub.object_path("acme/tiny", "model.safetensors")
    original = obj.read_bytes()
    obj.write_bytes(_corrupt(kind, original))
    cache = tmp_path / "cache"
    try:
        if kind == "bit-flipped":  # what makes the check necessary: the client alone accepts the file
            path = hf_hub_download("acme/tiny", "model.safetensors", cache_dir=tmp_path / "plain", endpoint=hub.url)
            assert Path(path).stat().st_size == len(original) and Path(path).read_bytes() != original
        with pytest.raises(HubIntegrityError, match=r"model\.safetensors: sha256 [0-9a-f]{64}, the Hub lists "
                                                    + hub.stored("acme/tiny", "model.safetensors").oid):
            pull("acme/tiny", cache_dir=cache, endpoint=hub.url)
        storage = cache / "models--acme--tiny"
        snapshot = storage / "snapshots" / hub.head("acme/tiny")
        assert not (snapshot / "model.safetensors").exists()
        assert not (storage / "blobs" / hub.stored("acme/tiny", "model.safetensors").oid).exists()
        assert not (storage / "refs" / "main").exists()  # an offline pull will not meet the bad snapshot
    finally:
        obj.write_bytes(original)
    folder = pull("acme/tiny", cache_dir=cache, endpoint=hub.url)  # fixed on the server: pulls cleanly
    assert (folder / "model.safetensors").read_bytes() == original
    assert (cache / "models--acme--tiny" / "refs" / "main").read_text() == hub.head("acme/tiny")


def test_pull_refuses_a_cached_file_corrupted_after_download(hub, tmp_path, monkeypatch):
    isolate_client(monkeypatch, tmp_path)
    cache = tmp_path / "cache"
    folder = pull("acme/tiny", cache_dir=cache, endpoint=hub.url)
    blob = (folder / "config.json").resolve()
    blob.write_bytes(blob.read_bytes().replace(b'"num_classes": 10', b'"num_classes": 11'))
    with pytest.raises(HubIntegrityError, match="config.json: git-sha1"):
        pull("acme/tiny", cache_dir=cache, endpoint=hub.url)
    again = pull("acme/tiny", cache_dir=cache, endpoint=hub.url)  # evicted, so downloaded afresh
    assert json.loads((again / "config.json").read_text())["num_classes"] == 10
