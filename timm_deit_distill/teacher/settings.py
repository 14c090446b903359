"""What a teacher is built from and checked with: :class:`TeacherSettings`."""

from __future__ import annotations

from dataclasses import dataclass

from .paths import MIN_AGREEMENT

__all__ = ["TeacherSettings"]


@dataclass(frozen=True)
class TeacherSettings:
    """Which teacher to build, how it runs, and how it is checked before it teaches.

    The command line's teacher flags, typed (the parsers hold the defaults): ``source`` is what
    :meth:`DistillationTeacher.create` takes (a timm name, ``hf-hub:``, ``local-dir:``; None: the checkpoint's
    recorded architecture), ``checkpoint_path`` its weights, ``use_ema`` the raw/EMA choice, ``input_size`` the
    size it runs at (N, H W or C H W; None: its own), ``precision`` and ``compile`` ('auto': chosen by
    measurement, see :meth:`DistillationTeacher.select_path`, which accepts a faster path only when its argmax
    agrees with eager fp32 on ``min_agreement`` of the images) and ``channels_last`` (None: channels_last for
    convnets). ``check`` runs :meth:`DistillationTeacher.check` on ``check_images`` validation images against
    ``min_top1`` (None: automatic). ``mean`` / ``std``: the normalisation the teacher was trained with
    (None: the one its weights record, else the data pipeline's).
    """

    source: str | None
    checkpoint_path: str | None
    use_ema: bool | None
    input_size: tuple[int, ...] | None
    precision: str
    channels_last: bool | None
    check: bool
    check_images: int
    min_top1: float | None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    compile: str = "auto"
    min_agreement: float = MIN_AGREEMENT

    @property
    def given(self) -> bool:
        """Whether a teacher is given at all (a name or a checkpoint)."""
        return bool(self.source or self.checkpoint_path)
