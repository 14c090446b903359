"""push --to-dir and pull --out never replace a user's files unless asked; they say what they wrote."""

from __future__ import annotations

import pytest
from hub_checkpoints import write_run
from hub_standin import isolate_client
from test_hub_pull import build_hf_cache

from timm_deit_distill.commands import hub as hub_cli
from timm_deit_distill.errors import OutputExistsError
from timm_deit_distill.hub import pull, save_pretrained

pytestmark = pytest.mark.filterwarnings("ignore:Use .content=<...>. to upload raw bytes:DeprecationWarning")

MINE = "# my own notes\n"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return write_run(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
    folder = save_pretrained(run.checkpoint, tmp_path_factory.mktemp("export") / "out", use_ema=True)
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def _users_folder(path):
    path.mkdir()
    (path / "README.md").write_text(MINE)
    (path / "notes.txt").write_text(MINE)
    return path


def test_push_to_dir_refuses_a_folder_holding_files_naming_those_it_would_replace(run, tmp_path, capsys):
    out = _users_folder(tmp_path / "mine")
    assert hub_cli.main(["push", str(run.checkpoint), "--no-ema", "--to-dir", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is not empty" in err and "--overwrite" in err
    assert "would replace README.md" in err and "notes.txt" in err.split("would replace")[0]
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "notes.txt"]  # nothing written
    assert (out / "README.md").read_text() == MINE
    with pytest.raises(OutputExistsError, match="README.md"):
        save_pretrained(run.checkpoint, out, use_ema=False)


def test_push_to_dir_into_a_run_folder_says_what_is_true_and_overwrite_keeps_the_run(run, tmp_path, capsys):
    """A run folder holds no file an export writes: the refusal said "none of them would be replaced. Give a new or
    empty folder", contradicting itself. It says why it refuses (the export would be mixed in with the run) and
    what --overwrite then does."""
    import shutil

    folder = tmp_path / "run"
    shutil.copytree(run.checkpoint.parent, folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert hub_cli.main(["push", str(folder / run.checkpoint.name), "--no-ema", "--to-dir", str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "none of them would be replaced" not in err, err
    assert f"{folder} is a `deit-distill train` run folder (it holds " in err
    assert ("no file there would be replaced, but the files written (README.md, config.json, model.safetensors) "
            "would be mixed in among them") in err
    assert f"fix: give a new or empty folder (e.g. {folder}-export), or pass --overwrite" in err
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # nothing written
    # what the refusal says --overwrite does: the three files written, the run's own kept
    assert hub_cli.main(["push", str(folder / run.checkpoint.name), "--no-ema", "--to-dir", str(folder),
                         "--overwrite"]) == 0
    after = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert set(after) == set(before) | {"README.md", "config.json", "model.safetensors"}
    assert all(after[name] == data for name, data in before.items())


def test_push_to_dir_overwrite_replaces_only_the_exports_files_and_lists_only_them(run, tmp_path, capsys):
    out = _users_folder(tmp_path / "mine")
    assert hub_cli.main(["push", str(run.checkpoint), "--no-ema", "--to-dir", str(out), "--overwrite"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}: README.md, config.json, model.safetensors (" in printed and "notes.txt" not in printed
    assert (out / "notes.txt").read_text() == MINE  # the user's other file is kept
    assert (out / "README.md").read_text() != MINE  # the card, as asked
    # a new or empty folder needs no flag
    (tmp_path / "empty").mkdir()
    assert hub_cli.main(["push", str(run.checkpoint), "--no-ema", "--to-dir", str(tmp_path / "empty")]) == 0


def test_push_to_dir_with_repo_id_says_nothing_is_uploaded(run, tmp_path, capsys):
    assert hub_cli.main(["push", str(run.checkpoint), "--no-ema", "--to-dir", str(tmp_path / "o"),
                         "--repo-id", "acme/named"]) == 0
    err = capsys.readouterr().err
    assert "--repo-id acme/named only names the model in the card" in err and "nothing was uploaded" in err
    assert "acme/named" in (tmp_path / "o" / "README.md").read_text()
    assert hub_cli.main(["push", str(run.checkpoint), "--no-ema", "--to-dir", str(tmp_path / "p")]) == 0
    assert "uploaded" not in capsys.readouterr().err  # no note without --repo-id


def test_pull_out_refuses_a_folder_holding_files_before_any_request(exported, tmp_path, monkeypatch, capsys):
    isolate_client(monkeypatch, tmp_path, offline=True)
    cache = tmp_path / "cache"
    build_hf_cache(cache, "acme/cached", exported)
    out = _users_folder(tmp_path / "mine")
    assert hub_cli.main(["pull", "acme/cached", "--cache-dir", str(cache), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "would replace README.md" in err and "--overwrite" in err
    assert (out / "README.md").read_text() == MINE and sorted(p.name for p in out.iterdir()) == ["README.md",
                                                                                                 "notes.txt"]
    with pytest.raises(OutputExistsError):
        pull("acme/cached", cache_dir=cache, out_dir=out)


def test_pull_out_overwrite_copies_the_repos_files_keeps_others_and_lists_only_the_pulled(exported, tmp_path,
                                                                                          monkeypatch, capsys):
    isolate_client(monkeypatch, tmp_path, offline=True)
    cache = tmp_path / "cache"
    build_hf_cache(cache, "acme/cached", exported)
    out = _users_folder(tmp_path / "mine")
    assert hub_cli.main(["pull", "acme/cached", "--cache-dir", str(cache), "--out", str(out), "--overwrite"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(out)
    assert "verified 3 files (README.md, config.json, model.safetensors)" in captured.err
    assert "notes.txt" not in captured.err
    assert (out / "notes.txt").read_text() == MINE
    assert {name: (out / name).read_bytes() for name in exported} == exported
    assert pull("acme/cached", cache_dir=cache, out_dir=out, overwrite=True) == out
