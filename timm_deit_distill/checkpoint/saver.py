"""Writing training checkpoints: timm's CheckpointSaver, atomic, with the trainer's extra state and the RNG states
that exact resumption needs."""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from timm.utils import CheckpointSaver as TimmCheckpointSaver
from timm.utils.model import get_state_dict

from ..atomic import atomic_link_or_copy, atomic_path, disk_full
from ..errors import DiskFullError
from .reader import DIGEST_KEY, _tensors_in, tensor_digests

__all__ = ["CheckpointSaver", "rng_state", "set_rng_state"]


# --- RNG state -----------------------------------------------------------------------------------------------

def rng_state() -> dict[str, Any]:
    """This process's generator states as weights_only-loadable values (tensors, ints, tuples)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- saving --------------------------------------------------------------------------------------------------

class CheckpointSaver(TimmCheckpointSaver):
    """timm's CheckpointSaver (same files, history and ranking) with atomic replacement and extra state.

    timm's saver unlinks ``last``/``model_best`` before relinking them, so a kill at that moment loses
    the file; here every name is replaced atomically. ``extra_state()`` adds the trainer's keys to
    every file (see the module docstring).
    """

    def __init__(self, *args: Any, extra_state: Callable[[], dict[str, Any]] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.extra_state = extra_state
        self.last_epoch: int | None = None  # the epoch last.pth.tar holds, once this saver has written it
        self._epoch: int | None = None

    def save_checkpoint(self, epoch: int, metric: float | None = None) -> tuple[Any, Any]:
        """timm's ``save_checkpoint``; a full disk raises :class:`~timm_deit_distill.errors.DiskFullError` naming
        the epoch, the checkpoint's size and the space free (the files written before are intact)."""
        self._epoch = epoch
        try:
            return super().save_checkpoint(epoch, metric)
        except DiskFullError as e:
            raise disk_full(self.checkpoint_dir, f"the checkpoint of epoch {epoch}", e.needed, e.errno) from e

    def _replace(self, src: str, dst: str) -> None:
        os.replace(src, dst)
        if os.path.basename(dst) == f"last{self.extension}":
            self.last_epoch = self._epoch

    def _duplicate(self, src: str, dst: str) -> None:
        atomic_link_or_copy(src, dst)

    def state_for(self, epoch: int, metric: float | None = None) -> dict[str, Any]:
        """Everything a checkpoint file of ``epoch`` holds."""
        state: dict[str, Any] = {
            "epoch": epoch,
            "arch": self.args.model if self.args is not None else type(self.model).__name__.lower(),
            "state_dict": get_state_dict(self.model, self.unwrap_fn),
            "optimizer": self.optimizer.state_dict(),
            "version": 2,  # timm: the epoch stored is the one completed
        }
        if self.args is not None:
            state["args"] = self.args
        if self.amp_scaler is not None:
            state[self.amp_scaler.state_dict_key] = self.amp_scaler.state_dict()
        if self.model_ema is not None:
            state["state_dict_ema"] = get_state_dict(self.model_ema, self.unwrap_fn)
        if metric is not None:
            state["metric"] = metric
        state["saver"] = self.state_dict(epoch, metric)
        if self.extra_state is not None:
            state.update(self.extra_state())
        state[DIGEST_KEY] = {"sha256": tensor_digests(state)}  # checked on every read (read_checkpoint)
        return state

    def _save(self, save_path: str, epoch: int, metric: float | None = None) -> None:
        state = self.state_for(epoch, metric)
        # timm writes tmp.pth.tar then replaces `last` with it; the temp file itself is also written
        # atomically so a kill mid-write never leaves a half file under any name.
        # torch.save given a path names the zip's records after the file (here a random temporary name),
        # so two saves of the same state differed in bytes and sha256 -- and a cache refused a re-trained,
        # identical teacher. Given an open file it names them "archive": same state, same bytes.
        with atomic_path(save_path, size=self._size_estimate(state)) as tmp, open(tmp, "wb") as f:
            torch.save(state, f)

    def _size_estimate(self, state: dict[str, Any]) -> int:
        """About the bytes a checkpoint file of ``state`` takes: the previous one's size (the same tensors), else
        the bytes of its tensors (the zip's headers and the pickle add a little)."""
        tensors = sum(t.nelement() * t.element_size() for _, t in _tensors_in(state))
        try:
            return max(tensors, os.path.getsize(os.path.join(self.checkpoint_dir, f"last{self.extension}")))
        except OSError:
            return tensors
