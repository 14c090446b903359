"""The package's temporaries carry a name no user file has by accident, and the partial-file cleaners
(trainer, cache build) recognise exactly those; a write that must not replace a file never does."""

from __future__ import annotations

import errno
import os
import re

import pytest

from timm_deit_distill import atomic
from timm_deit_distill.atomic import atomic_link_or_copy, atomic_path, atomic_write_text


def test_a_temporary_is_named_as_the_cleaners_recognise_and_user_backups_are_not(tmp_path):
    from timm_deit_distill.run_folder import partial_files

    seen = []
    with atomic_path(tmp_path / "args.yaml") as tmp:
        seen.append(os.path.basename(tmp))
        assert [p.name for p in partial_files(tmp_path)] == seen  # a kill here leaves what a cleaner removes
    assert re.fullmatch(r"\.args\.yaml\.[a-z0-9_]{8}\.deit-distill\.tmp", seen[0])
    for name in (".args.yaml.mybackup.tmp", ".args.yaml.abcdefgh.tmp", ".args.yaml.abcdefgh.deit-distill.tmp.bak"):
        (tmp_path / name).write_text("a user's file")
    assert partial_files(tmp_path) == []


def test_link_or_copy_uses_the_same_names(tmp_path, monkeypatch):
    from timm_deit_distill.run_folder import partial_files

    (tmp_path / "checkpoint-1.pth.tar").write_bytes(b"weights")
    seen = []
    real_link = os.link

    def link(src, dst):
        seen.append([p.name for p in partial_files(tmp_path)] or [os.path.basename(dst)])
        return real_link(src, dst)

    monkeypatch.setattr(atomic.os, "link", link)
    atomic_link_or_copy(tmp_path / "checkpoint-1.pth.tar", tmp_path / "last.pth.tar")
    assert re.fullmatch(r"\.last\.pth\.tar\.[a-z0-9_]{8}\.deit-distill\.tmp", seen[0][0])
    assert (tmp_path / "last.pth.tar").read_bytes() == b"weights" and partial_files(tmp_path) == []


@pytest.mark.parametrize("links", [True, False], ids=["hard-links", "no-links"])
def test_a_write_without_replace_never_replaces_a_file(tmp_path, monkeypatch, links):
    if not links:
        def no_link(src, dst):
            raise OSError(errno.EPERM, "Operation not permitted")
        monkeypatch.setattr(atomic.os, "link", no_link)
    target = tmp_path / "eval.json"
    atomic_write_text(target, "first", replace=False)
    assert target.read_text() == "first"
    with pytest.raises(FileExistsError):
        atomic_write_text(target, "second", replace=False)
    assert target.read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.json"]  # no temporary left behind
    atomic_write_text(target, "third")  # the default replaces, as before
    assert target.read_text() == "third"
