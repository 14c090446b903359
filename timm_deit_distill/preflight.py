"""Checks that refuse a training run before any work, with a message naming the problem and the fix."""

from __future__ import annotations

import difflib

import timm
from timm.models import get_pretrained_cfg_value, is_model, list_pretrained, split_model_name_tag

from .args import UsageError

__all__ = ["check_model_name", "fixed_input_size"]

_SOURCE_PREFIXES = ("hf-hub:", "local-dir:", "hf_hub:", "timm/")


def _suggest(name: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.6)
    return f" Did you mean {', '.join(close)}?" if close else ""


def check_model_name(name: str, flag: str) -> None:
    """Refuse a timm model name (optionally ``arch.tag``) that timm does not know, suggesting close matches.

    ``hf-hub:`` and ``local-dir:`` sources are not names and are left to the loader.
    """
    if name.startswith(_SOURCE_PREFIXES):
        return
    arch, tag = split_model_name_tag(name)
    if not is_model(arch):
        hint = _suggest(arch, timm.list_models())
        raise UsageError(f"{flag} {name!r} is not a timm model.{hint} List models with "
                         "`python -c \"import timm; print(timm.list_models('*deit*'))\"` (or `deit-distill models`).")
    if tag:
        tags = list_pretrained(f"{arch}.*")
        if name not in tags:
            listed = ", ".join(tags[:8]) or "none"
            raise UsageError(f"{flag} {name!r}: {arch} has no pretrained tag {tag!r}.{_suggest(name, tags)} "
                             f"Its tags: {listed}.")


def fixed_input_size(name: str) -> bool:
    """Whether the architecture is built for one input size (ViTs), so ``--img-size`` must reach the model."""
    if name.startswith(_SOURCE_PREFIXES):
        return False
    try:
        return bool(get_pretrained_cfg_value(name, "fixed_input_size"))
    except RuntimeError:
        return False
