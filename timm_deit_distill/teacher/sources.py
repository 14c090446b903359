"""Where a teacher comes from: a timm name (with or without a pretrained tag), ``hf-hub:``, ``local-dir:``,
an ``nn.Module`` or a checkpoint file, each read through the package's one checkpoint reader, and the facts its
weights record about themselves (the input size they were trained at, their class names)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from ..errors import TeacherError

if TYPE_CHECKING:
    from ..checkpoint import RunMetadata

__all__ = ["load_teacher_checkpoint", "build_model", "state_dict_sha256", "SOURCE_PREFIXES"]

#: Teacher (and model) sources that are not a timm model name, by prefix: timm resolves each one itself
#: (``hf-hub:ORG/NAME``, ``local-dir:PATH``, the legacy ``hf_hub:``, and ``timm/NAME`` Hub ids). A name with
#: one of them is not checked against timm's registry; a new source is one entry here.
SOURCE_PREFIXES = ("hf-hub:", "local-dir:", "hf_hub:", "timm/")

_logger = logging.getLogger(__name__)

# What a checkpoint or config says about the weights themselves (see _recorded_input_hw).
_WEIGHT_FACTS = ("input_hw", "input_hw_source", "label_names")
_HUB_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors",
                     "open_clip_pytorch_model.bin")


def load_teacher_checkpoint(
    path: str | os.PathLike[str], *, use_ema: bool | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read weights from a timm training checkpoint, a facebookresearch/deit checkpoint (``{'model': ...}``),
    a plain state dict or a safetensors file, through the package's one reader, weights policy and metadata
    reader (:func:`timm_deit_distill.checkpoint.read_checkpoint` / ``select_weights`` / ``RunMetadata``).

    Returns ``(state_dict, info)``; ``info`` has ``weights`` ('raw', 'ema' or 'plain') and, when the
    checkpoint records them, ``arch``, ``model_kwargs`` (this package's, or timm train.py's ``--model-kwargs``
    with its classes, channels and pooling), ``pretrained_cfg``, ``label_names`` and ``input_hw`` (with
    ``input_hw_source``). When the checkpoint holds both raw and EMA weights, ``use_ema`` must say which. A file
    that cannot be used raises :class:`~timm_deit_distill.checkpoint.CheckpointError` saying what is wrong with it.
    """
    from ..checkpoint import RunMetadata, read_checkpoint, select_weights

    checkpoint = read_checkpoint(path, what="teacher checkpoint")
    state, weights = select_weights(checkpoint, use_ema=use_ema, name=f"teacher checkpoint {Path(path)}",
                                    flags=("--teacher-ema", "--no-teacher-ema"))
    info: dict[str, Any] = {"weights": weights}
    if weights == "plain":
        return state, info
    metadata = RunMetadata.from_checkpoint(checkpoint)
    if metadata.model:
        info["arch"] = metadata.model
    if metadata.model_kwargs:
        info["model_kwargs"] = dict(metadata.model_kwargs)
    if metadata.pretrained_cfg:
        info["pretrained_cfg"] = dict(metadata.pretrained_cfg)
    if metadata.label_names:
        info["label_names"] = [str(n) for n in metadata.label_names]
    hw, where = _recorded_input_hw(metadata)
    if hw is not None:
        info["input_hw"], info["input_hw_source"] = list(hw), f"recorded in its checkpoint ({where})"
    return state, info


def _hw(size: Any) -> tuple[int, int] | None:
    """(H, W) from an int, (H, W) or (C, H, W); None for anything else."""
    if isinstance(size, bool):
        return None
    if isinstance(size, int):
        return (size, size) if size > 0 else None
    if isinstance(size, (list, tuple)) and len(size) in (2, 3) and all(isinstance(v, int) and v > 0 for v in size):
        return int(size[-2]), int(size[-1])
    return None


def _recorded_input_hw(metadata: RunMetadata) -> tuple[tuple[int, int] | None, str | None]:
    """The input size a training checkpoint's weights were trained at, and where it was read.

    What its :class:`~timm_deit_distill.checkpoint.RunMetadata` records: this package's
    ``deit_distill.pretrained_cfg.input_size``; timm train.py's ``args.input_size`` (C, H, W), else
    ``args.img_size``; facebookresearch/deit's ``args.input_size``, an int. Else the default pretrained config
    of the model it names, which is what timm's ``resolve_data_config`` trained at.
    """
    if metadata.input_hw is not None:
        return metadata.input_hw, metadata.input_hw_source
    arch = metadata.model
    if isinstance(arch, str) and arch:
        from timm.models import get_pretrained_cfg

        try:
            cfg = get_pretrained_cfg(arch)
        except RuntimeError:  # an unknown pretrained tag
            cfg = None
        hw = _hw(tuple(cfg.input_size)) if cfg is not None and cfg.input_size else None
        if hw is not None:
            return hw, f"args.model {arch!r}'s default input size, which timm's train.py trains at"
    return None, None


def _classes_in_state_dict(state_dict: Mapping[str, torch.Tensor], classifier: str | Sequence[str] | None) -> int | None:
    names = (classifier,) if isinstance(classifier, str) else tuple(classifier or ())
    for name in names:
        for suffix in (".weight", ".bias"):
            tensor = state_dict.get(name + suffix)
            if tensor is not None and tensor.dim() >= 1:
                return int(tensor.shape[0])
    return None


def _load_weights(model: nn.Module, state_dict: dict[str, torch.Tensor], origin: str) -> None:
    """Strict load; on failure retry through the model module's own ``checkpoint_filter_fn`` (timm's
    converter for foreign layouts, e.g. original DeiT/JAX checkpoints)."""
    try:
        model.load_state_dict(state_dict, strict=True)
        return
    except RuntimeError as first_error:
        filter_fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
        if filter_fn is not None:
            try:
                model.load_state_dict(filter_fn(state_dict, model), strict=True)
                return
            except Exception:  # noqa: BLE001 - report the first, unfiltered error below
                pass
        message = str(first_error).split("\n")
        raise TeacherError(
            f"The weights in {origin} do not fit {type(model).__name__}: {' '.join(message[:3])[:600]} "
            "Check that the teacher's architecture name matches the checkpoint (a timm training checkpoint "
            "records it under 'arch').") from first_error


def state_dict_sha256(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def build_model(
    source: str | nn.Module | None,
    *,
    checkpoint_path: str | os.PathLike[str] | None,
    use_ema: bool | None,
    pretrained: bool,
    model_kwargs: dict[str, Any],
) -> tuple[nn.Module, dict[str, Any]]:
    import timm
    from timm.models import parse_model_name, split_model_name_tag

    if use_ema is not None and checkpoint_path is None and not (isinstance(source, str) and os.path.isfile(source)):
        raise TeacherError("use_ema chooses between a checkpoint's raw and EMA weights; pass checkpoint_path too.")
    if isinstance(source, (str, os.PathLike)) and os.path.isfile(source):
        if checkpoint_path is not None:
            raise TeacherError(f"Both source={source!r} and checkpoint_path are files; pass one.")
        source, checkpoint_path = None, source

    if isinstance(source, nn.Module):
        meta: dict[str, Any] = {"name": type(source).__name__}
        cfg = getattr(source, "pretrained_cfg", None) or {}
        meta["name"] = cfg.get("architecture") or meta["name"]
        if checkpoint_path is not None:
            state, info = load_teacher_checkpoint(checkpoint_path, use_ema=use_ema)
            _load_weights(source, state, str(checkpoint_path))
            meta.update(file=str(Path(checkpoint_path).resolve()), weights=info["weights"])
            meta.update({k: info[k] for k in _WEIGHT_FACTS if k in info})
        # Without a checkpoint the module's pretrained_cfg describes its architecture's default weights,
        # not necessarily these: its input size is not taken as the one these weights were trained at.
        return source, meta

    if source is None:
        if checkpoint_path is None:
            raise TeacherError("No teacher given: pass a model name, hf-hub:/local-dir: id, module or checkpoint.")
        state, info = load_teacher_checkpoint(checkpoint_path, use_ema=use_ema)
        arch = info.get("arch")
        if not arch:
            raise TeacherError(
                f"{checkpoint_path} does not record its architecture: pass the teacher's timm model name "
                "as well (e.g. --distill-teacher regnety_160 --distill-teacher-path FILE).")
        return _model_from_state(arch, state, info, checkpoint_path, model_kwargs)

    if not isinstance(source, str):
        raise TeacherError(f"Unsupported teacher source {type(source).__name__}: pass a name, path or nn.Module.")

    hub_source, model_id = parse_model_name(source)
    if hub_source in ("hf-hub", "local-dir"):
        if checkpoint_path is not None:
            raise TeacherError(f"{source} brings its own weights; checkpoint_path goes with a timm model name.")
        if hub_source == "local-dir" and not (Path(model_id) / "config.json").is_file():
            raise TeacherError(f"{model_id} has no config.json: a local-dir: teacher is a folder written by "
                               "timm.models.save_for_hf (or `deit-distill pull`).")
        if "num_classes" in model_kwargs:
            raise TeacherError("num_classes cannot be overridden for a hub teacher: it would discard its head.")
        try:
            model = timm.create_model(source, pretrained=True, **model_kwargs)
        except Exception as e:
            raise TeacherError(f"Could not load teacher {source}: {e}") from e
        cfg = model.pretrained_cfg
        meta = {"name": cfg.get("architecture"), "tag": None, "weights": "pretrained"}
        if hub_source == "hf-hub":
            meta["hub_id"] = model_id
            meta["file"] = _hub_cached_file(model_id)
        else:
            meta["file"] = _local_weights_file(Path(model_id))
        meta.update(_config_json_facts(hub_source, model_id))
        return model, meta

    arch, tag = split_model_name_tag(source)
    if not timm.is_model(arch):
        raise TeacherError(
            f"Unknown teacher {source!r}: not a timm model name (see timm.list_models()), an existing file, "
            "'hf-hub:ORG/NAME' or 'local-dir:PATH'. Plugin architectures need their module imported first.")
    if checkpoint_path is not None:
        state, info = load_teacher_checkpoint(checkpoint_path, use_ema=use_ema)
        _check_recorded_arch(source, info.get("arch"), checkpoint_path)
        return _model_from_state(source, state, info, checkpoint_path, model_kwargs)
    if pretrained and "num_classes" in model_kwargs:
        raise TeacherError(
            "num_classes cannot be set for pretrained teacher weights: timm would discard the trained head. "
            "Pass a checkpoint trained on your classes, or pretrained=False for random weights.")
    try:
        model = timm.create_model(source, pretrained=pretrained, **model_kwargs)
    except Exception as e:
        raise TeacherError(
            f"Could not create teacher {source!r} with pretrained={pretrained}: {e}. Without network access, "
            "pass local weights: checkpoint_path=FILE (command line: --distill-teacher-path FILE), or "
            "'local-dir:PATH', or a Hub cache filled beforehand.") from e
    meta = {"name": arch, "tag": (model.pretrained_cfg.get("tag") if pretrained else None),
            "weights": "pretrained" if pretrained else "random"}
    if pretrained and model.pretrained_cfg.get("hf_hub_id"):
        meta["hub_id"] = model.pretrained_cfg["hf_hub_id"]
        meta["file"] = _hub_cached_file(model.pretrained_cfg["hf_hub_id"])
    if pretrained:  # the tag's config describes exactly these weights
        meta.update(_pretrained_cfg_facts(model.pretrained_cfg, f"its pretrained config ({source})"))
    if not pretrained:
        _logger.warning("Teacher %s has random weights (pretrained=False): fine for timing, useless for training.",
                        source)
    return model, meta


def _check_recorded_arch(source: str, recorded: Any, path: str | os.PathLike[str]) -> None:
    """Refuse a teacher name whose architecture is not the one its checkpoint records (a trainer's ``--model``).

    The file's architecture arguments (a DeiT student's ``img_size``, ``depth``...) would otherwise be passed to
    another architecture's constructor (a TypeError), or its weights fail to fit with a misleading reason. A
    recorded name timm does not know here (a class name, a plugin not imported, an ``hf-hub:`` id) is not
    compared: loading the weights checks those.
    """
    import timm
    from timm.models import split_model_name_tag

    if not isinstance(recorded, str) or not recorded:
        return
    recorded_arch, given_arch = split_model_name_tag(recorded)[0], split_model_name_tag(source)[0]
    if recorded_arch == given_arch or not timm.is_model(recorded_arch):
        return
    raise TeacherError(
        f"the teacher is named {source!r}, but its checkpoint {path} records the architecture {recorded!r} (the "
        f"model it was trained as); fix: name that architecture (--distill-teacher {recorded}), or give the "
        "checkpoint alone (--distill-teacher-path without --distill-teacher): it names its architecture itself.")


def _model_from_state(
    arch: str, state: dict[str, torch.Tensor], info: dict[str, Any], path: str | os.PathLike[str],
    model_kwargs: dict[str, Any],
) -> tuple[nn.Module, dict[str, Any]]:
    import timm
    from timm.models import get_pretrained_cfg, split_model_name_tag

    name, tag = split_model_name_tag(arch)
    if not timm.is_model(name):
        raise TeacherError(f"{path} was trained with architecture {arch!r}, which timm does not know here: "
                           "import the module that registers it, or pass a known model name.")
    cfg = get_pretrained_cfg(arch) if tag else get_pretrained_cfg(name)
    kwargs = {**info.get("model_kwargs", {}), **model_kwargs}
    classes = _classes_in_state_dict(state, getattr(cfg, "classifier", None))
    if classes is None:
        # Unknown head name in the registry: build once to ask the model where its classifier is.
        probe = timm.create_model(name, pretrained=False, **kwargs)
        classes = _classes_in_state_dict(state, (probe.pretrained_cfg or {}).get("classifier"))
    if classes is None:
        raise TeacherError(f"{path} holds no classifier weights for {name}: a teacher needs its trained head.")
    kwargs["num_classes"] = classes
    model = timm.create_model(name, pretrained=False, **kwargs)
    _load_weights(model, state, str(path))
    meta = {"name": name, "tag": tag or None, "file": str(Path(path).resolve()), "weights": info["weights"]}
    if info.get("pretrained_cfg"):
        meta["pretrained_cfg"] = info["pretrained_cfg"]
    meta.update({k: info[k] for k in _WEIGHT_FACTS if k in info})
    return model, meta


def _pretrained_cfg_facts(cfg: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Input size and label names from a pretrained config that describes the weights themselves.

    ``input_size`` is preferred to ``test_input_size``: the teacher labels training views, and
    ``input_size`` is the size it saw in training (``test_input_size`` is a larger evaluation size that
    pays off on centre crops only, at a higher cost); ``test_input_size`` is used when it is all there is.
    """
    facts: dict[str, Any] = {}
    for key in ("input_size", "test_input_size"):
        hw = _hw(tuple(cfg[key]) if isinstance(cfg.get(key), (list, tuple)) else cfg.get(key))
        if hw is not None:
            facts["input_hw"], facts["input_hw_source"] = list(hw), f"{where}: {key}"
            break
    names = _label_list(cfg.get("label_names"))
    if names:
        facts["label_names"] = names
    return facts


def _label_list(names: Any) -> list[str] | None:
    """timm's ``label_names``: a list, or a dict ``{index: name}`` (string keys after JSON); None with gaps."""
    if isinstance(names, Mapping):
        try:
            by_index = {int(k): str(v) for k, v in names.items()}
        except (TypeError, ValueError):
            return None
        return [by_index[i] for i in range(len(by_index))] if set(by_index) == set(range(len(by_index))) else None
    if isinstance(names, (list, tuple)):
        return [str(n) for n in names]
    return None


def _config_json_facts(hub_source: str, model_id: str) -> dict[str, Any]:
    """:func:`_pretrained_cfg_facts` of the ``config.json`` as written, read directly: timm's own parser and
    its dataclass fill a missing ``input_size`` with 224, which must not read as the size of these weights."""
    from huggingface_hub import hf_hub_download

    try:
        if hub_source == "local-dir":
            path = Path(model_id) / "config.json"
        else:  # the file timm's hf-hub: loading just fetched (ORG/NAME[@REVISION], as timm splits it)
            repo_id, _, revision = model_id.partition("@")
            path = Path(hf_hub_download(repo_id, "config.json", revision=revision or None))
        raw = json.loads(path.read_text(encoding="utf-8"))
    except Exception as e:  # noqa: BLE001 - the model loaded; its size just stays unknown
        _logger.debug("Could not re-read the config.json of %s: %s", model_id, e)
        return {}
    cfg = dict(raw.get("pretrained_cfg") or {}) if "pretrained_cfg" in raw else dict(raw)  # timm's legacy layout
    labels = raw.get("label_names") or cfg.get("label_names") or cfg.get("labels")
    cfg["label_names"] = labels
    return _pretrained_cfg_facts(cfg, f"its pretrained config ({hub_source}:{model_id} config.json)")


def _hub_cached_file(repo_id: str) -> str | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover
        return None
    repo_id = repo_id.split("@")[0]
    for filename in _HUB_WEIGHT_FILES:
        found = try_to_load_from_cache(repo_id, filename)
        if isinstance(found, str):
            return found
    return None


def _local_weights_file(folder: Path) -> str | None:
    for filename in _HUB_WEIGHT_FILES:
        if (folder / filename).is_file():
            return str((folder / filename).resolve())
    for ext in (".safetensors", ".pth", ".pth.tar", ".bin"):  # timm's own fallback order
        files = sorted(folder.glob(f"*{ext}"))
        if files:
            return str(files[0].resolve())
    return None
