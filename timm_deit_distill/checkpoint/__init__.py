"""Training checkpoints in timm's CheckpointSaver format, written atomically, resumable exactly.

Each file holds timm's keys (``epoch``, ``arch``, ``state_dict``, ``optimizer``, ``version``, ``args``,
``metric``, ``state_dict_ema``, ``amp_scaler``, ``saver``), so timm's ``load_checkpoint`` and
``resume_checkpoint`` read it, plus:

* ``deit_distill``: plain-JSON metadata to rebuild and describe the student (model, model_kwargs,
  pretrained_cfg, label_names, distill settings, recipe, ema) and to check a resume against the run
  (seed, data: the training set's fingerprint, world_size, resumed: the settings each resume changed), written
  and read as a :class:`RunMetadata`;
* ``scheduler``, ``num_updates``, ``rng`` (every rank's Python/NumPy/torch/CUDA generator states) and
  ``summary`` (the per-epoch rows so far): what ``--resume`` needs to continue bit for bit;
* ``deit_distill_digest``: the sha256 of the tensors of each entry that holds any (``state_dict``,
  ``state_dict_ema``, ``optimizer``, ``rng``, ...), checked by :func:`read_checkpoint` on every read: torch.load
  does not check the zip's CRC32 of a tensor's record, so a flipped bit would load as a slightly different weight.

The student only: the teacher is never saved.

The modules: ``reader`` (reading any checkpoint file, its damage checks), ``weights`` (the raw/EMA rule),
``metadata`` (:class:`RunMetadata`: the ``deit_distill`` record, and the one reader of what a checkpoint of this
package, of timm's train.py or of facebookresearch/deit says about its run), ``saver`` (writing, RNG states),
``resume`` (resuming, comparing runs), ``rebuild`` (the student back as a model).
"""

from __future__ import annotations

from ..errors import CheckpointError
from .metadata import NOT_RECORDED, Distillation, RunMetadata, read_run_metadata
from .reader import (
    DIGEST_KEY,
    check_checkpoint_file,
    load_training_checkpoint,
    read_checkpoint,
    tensor_digests,
)
from .rebuild import create_model_from_checkpoint, model_from_checkpoint
from .resume import (
    ResumeComparison,
    ResumeState,
    checkpoint_epoch,
    compare_resume,
    load_scheduler_state,
    load_task_state,
    resume,
    scheduler_state,
)
from .saver import CheckpointSaver, rng_state, set_rng_state
from .weights import EMA_KEYS, RAW_KEYS, select_weights

__all__ = [
    "CheckpointSaver", "load_training_checkpoint", "rng_state", "set_rng_state", "ResumeState", "resume",
    "checkpoint_epoch", "compare_resume", "ResumeComparison", "create_model_from_checkpoint",
    "model_from_checkpoint", "CheckpointError", "read_checkpoint", "check_checkpoint_file", "select_weights",
    "RAW_KEYS", "EMA_KEYS", "scheduler_state", "load_scheduler_state", "DIGEST_KEY", "tensor_digests",
    "RunMetadata", "Distillation", "NOT_RECORDED", "read_run_metadata", "load_task_state",
]
