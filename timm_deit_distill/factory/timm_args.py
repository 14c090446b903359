"""The run's ``args.yaml`` as timm's train.py reads it: ``python train.py -c RUN/args.yaml``.

timm's train.py turns the YAML into its parser's defaults (``parser.set_defaults(**cfg)``): a key it has no flag
for is ignored, a key it has a flag for takes timm's meaning. So besides this package's own settings (which
``deit-distill train -c`` reads), ``args.yaml`` holds what timm needs to run the same thing:

* ``device``: the device the run used (timm's train.py does ``args.device.split(':')``: ``null`` stops it);
* ``num_classes``: the classes the run counted in its data (timm's train.py would build the model's default);
* ``device_modules``: this package, where the student or the teacher is one of its variants;
* timm's distillation keys (``kd_model_name``, ``kd_distill_type``, ``kd_token_distill_type``,
  ``kd_temperature``, ``task_loss_weight``, ``distill_loss_weight``), whenever timm's train.py can run the same
  distillation: DeiT's soft or hard distillation through the distillation token is timm's
  ``TokenDistillationTask``, with ``task_loss_weight = 1 - alpha`` and ``distill_loss_weight = alpha`` (both given:
  timm's independent weights), divided by the number of classes for DeiT's soft term (``'deit'`` reduction: the
  summed KL over ``B * C``, where timm's ``batchmean`` divides by ``B``). On a single-head student DeiT's soft
  distillation (both terms on the one head) is timm's ``LogitDistillationTask`` with the same weights; its hard
  one has no timm task. A timm-spelled run's options are timm's keys already. timm builds its teacher from the name
  alone, pretrained, at the student's input: a teacher from a checkpoint file, a target cache, or a teacher at
  another input size or normalisation than timm would give it cannot be written (the keys are left out and
  timm's train.py trains without a teacher: docs/training.md says which runs these are).

Reading the file back with ``deit-distill train -c``, the timm keys of a file this package wrote of a DeiT-spelled
run (``distill_type: soft|hard``) are the rendering of its ``distill_*`` settings: they are checked against them,
not read twice.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import UsageError

__all__ = ["TIMM_KD_KEYS", "timm_keys", "timm_distillation_keys", "timm_gap", "timm_device_modules", "check_own_record"]

#: timm train.py's distillation keys this package writes (timm's names, timm's meaning).
TIMM_KD_KEYS = ("kd_model_name", "kd_distill_type", "kd_token_distill_type", "kd_temperature",
                "task_loss_weight", "distill_loss_weight")


def timm_keys(settings: Any, *, device: str, num_classes: int, distilled: bool,
              teacher_description: Mapping[str, Any] | None,
              student_input_size: Sequence[int] | None) -> dict[str, Any]:
    """The keys timm's train.py needs from ``args.yaml`` to run what ``settings`` ran: the device type the run
    used, the number of classes (this package counts the data's; timm's train.py builds the model's default, 1000,
    and gives its teacher as many, its head dropped), this package among ``device_modules`` when a model is one of
    its variants (timm knows them only after importing it), and timm's distillation keys when timm can express the
    distillation (else none). ``distilled``: the student has a distillation head."""
    return {"device": device, "num_classes": int(num_classes),
            "device_modules": timm_device_modules(settings),
            **timm_distillation_keys(settings, num_classes=num_classes, distilled=distilled,
                                     teacher_description=teacher_description,
                                     student_input_size=student_input_size)}


def timm_device_modules(settings: Any) -> list[str] | None:
    """``--device-modules`` for timm's train.py: the run's own, and this package where the student or the teacher
    is a variant it registers (timm's train.py imports them before ``create_model``)."""
    from ..models.variants import PLUGIN_VARIANTS

    modules = list(settings.device.device_modules or [])
    names = (settings.student.model, settings.teacher.source)
    if any(name in PLUGIN_VARIANTS for name in names) and _PACKAGE not in modules:
        modules.append(_PACKAGE)
    return modules or None


_PACKAGE = __name__.split(".")[0]


def timm_distillation_keys(settings: Any, *, num_classes: int, distilled: bool,
                           teacher_description: Mapping[str, Any] | None,
                           student_input_size: Sequence[int] | None) -> dict[str, Any]:
    """timm's ``kd_*`` keys and loss weights for a DeiT-spelled run's distillation, or ``{}`` where timm's
    train.py cannot run it (see the module). A timm-spelled run's options are timm's keys already."""
    distill, teacher = settings.distill, settings.teacher
    if getattr(distill, "family", "deit") != "deit" or distill.type not in ("soft", "hard"):
        return {}
    if not distilled and distill.type == "hard":
        return {}  # timm's logit task (the one head) has a soft term only
    if not _timm_builds_the_teacher(settings, teacher_description, student_input_size):
        return {}
    scale = 1.0 / num_classes if distill.type == "soft" and distill.soft_reduction == "deit" else 1.0
    task = {"kd_distill_type": "token", "kd_token_distill_type": distill.type} if distilled else \
        {"kd_distill_type": "logit", "kd_loss_type": "kl"}
    return {"kd_model_name": teacher.source, **task, "kd_temperature": float(distill.tau),
            "task_loss_weight": 1.0 - float(distill.alpha), "distill_loss_weight": float(distill.alpha) * scale}


def timm_gap(settings: Any, *, distilled: bool, teacher_description: Mapping[str, Any] | None,
             student_input_size: Sequence[int] | None) -> str | None:
    """Why timm's train.py ``-c`` of this run's ``args.yaml`` would not distil as the run did (the file says so in
    a comment at its top), or None where it would (or the run has no teacher)."""
    distill, teacher = settings.distill, settings.teacher
    if distill.type in (None, "none"):
        return None
    unlabeled = getattr(settings, "unlabeled", None)
    if unlabeled is not None and unlabeled.active:
        return (f"this run also learned from unlabelled images ({unlabeled.source_name}), which timm's train.py "
                "cannot read: timm's train.py -c of this file trains on the labelled images only")
    timm_spelled = getattr(distill, "family", "deit") != "deit"
    if not timm_spelled and not distilled and distill.type == "hard":
        return ("DeiT's hard distillation on a single-head student has no timm task (timm's logit task is soft "
                "only): timm's train.py -c of this file trains without a teacher")
    if _timm_builds_the_teacher(settings, teacher_description, student_input_size):
        return None
    how = ("a target cache" if settings.distill_cache else "a checkpoint file" if teacher.checkpoint_path else
           "its own input size or normalisation")
    if timm_spelled:
        return (f"this run's teacher came from {how}; timm's train.py -c of this file builds kd_model_name "
                "pretrained, at the student's input, instead")
    return (f"this run's teacher came from {how}, which timm's train.py cannot build (it creates kd_model_name "
            "pretrained, at the student's input): its kd_model_name is null here, and timm's train.py -c of it "
            "trains without a teacher")


def _timm_builds_the_teacher(settings: Any, description: Mapping[str, Any] | None,
                             student_input_size: Sequence[int] | None) -> bool:
    """Whether ``create_model(kd_model_name, pretrained=True)`` fed the student's input is this run's teacher."""
    teacher = settings.teacher
    if settings.distill_cache or teacher.checkpoint_path or not teacher.source or description is None:
        return False
    if teacher.input_size is not None or teacher.mean is not None or teacher.std is not None:
        return False  # set for this package's teacher only; timm's follows its pretrained config
    ran_at = description.get("input_size")
    return ran_at is None or student_input_size is None or list(ran_at)[-2:] == list(student_input_size)[-2:]


def check_own_record(config: dict[str, Any], where: str) -> None:
    """Take timm's ``kd_*`` keys out of a ``-c`` file this package wrote of a DeiT-spelled run (it holds
    ``distill_type: soft|hard``), after checking that they still render its ``distill_*`` settings; a file edited
    in one place only is refused. A timm-spelled run's file (``distill_type: null``) is left as it is: its
    ``kd_*`` keys are its settings."""
    if config.get("distill_type") not in ("soft", "hard") or not config.get("kd_model_name"):
        return
    rendered = {k: config.pop(k) for k in TIMM_KD_KEYS if k in config}
    expected = {"kd_model_name": config.get("distill_teacher"), "kd_temperature": config.get("distill_tau"),
                "task_loss_weight": None if config.get("distill_alpha") is None else 1.0 - config["distill_alpha"]}
    if rendered.get("kd_distill_type") == "token":
        expected["kd_token_distill_type"] = config.get("distill_type")
    for key, want in expected.items():
        got = rendered.get(key)
        same = got == want if not isinstance(got, float) or want is None else math.isclose(got, want, abs_tol=1e-9)
        if not same:
            setting = {"kd_model_name": "distill_teacher", "kd_token_distill_type": "distill_type",
                       "kd_temperature": "distill_tau", "task_loss_weight": "distill_alpha"}[key]
            raise UsageError(
                f"{where}: {key} {got!r} disagrees with {setting} {config.get(setting)!r} in the same file (its "
                f"kd_* keys are what timm's train.py reads of its distill_* settings); change {setting} and "
                "delete the kd_* keys.")
