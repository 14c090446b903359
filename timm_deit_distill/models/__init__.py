"""The distilled DeiT family in timm's registry.

:mod:`.variants` names the variants and their architecture args; :mod:`.deit` registers them with timm
(importing this package does).
"""

from __future__ import annotations

from . import deit  # noqa: F401  (registers the variants with timm)
from .variants import CANONICAL_VARIANTS, DISTILLED_VARIANTS, PLUGIN_VARIANTS, VARIANT_ARGS, timm_equivalent

__all__ = ["DISTILLED_VARIANTS", "PLUGIN_VARIANTS", "CANONICAL_VARIANTS", "VARIANT_ARGS", "timm_equivalent"]
