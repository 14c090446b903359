"""Publish distilled students on the Hugging Face Hub and fetch them back, verified.

:mod:`.export` writes the folder plain timm loads (``save_pretrained``), :mod:`.card` its model card,
:mod:`.transfer` pushes, pulls (checksums verified) and loads.
"""

from __future__ import annotations

from ..errors import HubAuthError, HubConnectionError, HubExportError, HubIntegrityError
from .export import CARD_NAME, CONFIG_NAME, WEIGHTS_NAME, plain_timm_architecture, save_pretrained
from .transfer import load_model, parse_repo_ref, pull, push_to_hub, resolve_token

__all__ = [
    "HubAuthError",
    "HubConnectionError",
    "HubExportError",
    "HubIntegrityError",
    "load_model",
    "parse_repo_ref",
    "plain_timm_architecture",
    "pull",
    "push_to_hub",
    "resolve_token",
    "save_pretrained",
    "CARD_NAME",
    "CONFIG_NAME",
    "WEIGHTS_NAME",
]
