"""Checkpoints written the way timm's train.py and facebookresearch/deit's main.py write theirs.

timm's train.py saves with timm's own ``CheckpointSaver`` (the training task's eval model under ``state_dict``, its
EMA under ``state_dict_ema``) and stores its ``argparse.Namespace`` of every flag under ``args``; DeiT's main.py
saves a dict with ``model``, ``optimizer``, ``lr_scheduler``, ``epoch``, ``model_ema``, ``scaler`` and its
``args``. The flag defaults below are those programs' own (timm: train.py at commit aa4b5850, the 172 flags of its
parser, ``-c`` aside; DeiT: main.py's ``get_args_parser``); the models are built, and the values the programs set
while running are set, as they do it.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

import timm_deit_distill  # noqa: F401  (registers the variants the tests train)

TIMM_TRAIN_DEFAULTS: dict[str, Any] = {
    'data': None, 'data_dir': None, 'dataset': '', 'train_split': 'train', 'val_split': 'validation',
    'train_num_samples': None, 'val_num_samples': None, 'dataset_download': False, 'class_map': '',
    'input_img_mode': None, 'input_key': None, 'target_key': None, 'dataset_trust_remote_code': False,
    'model': 'resnet50', 'pretrained': False, 'pretrained_path': None, 'initial_checkpoint': '', 'resume': '',
    'no_resume_opt': False, 'num_classes': None, 'gp': None, 'img_size': None, 'in_chans': None,
    'input_size': None, 'crop_pct': None, 'mean': None, 'std': None, 'interpolation': '', 'batch_size': 128,
    'validation_batch_size': None, 'channels_last': False, 'fuser': '', 'grad_accum_steps': 1,
    'grad_checkpointing': False, 'fast_norm': False, 'model_kwargs': {}, 'head_init_scale': None,
    'head_init_bias': None, 'torchcompile_mode': None, 'torchscript': False, 'torchcompile': None,
    'device': 'cuda', 'amp': False, 'amp_dtype': 'float16', 'model_dtype': None, 'no_ddp_bb': False,
    'synchronize_step': False, 'local_rank': 0, 'device_modules': None, 'opt': 'sgd', 'opt_eps': None,
    'opt_betas': None, 'momentum': 0.9, 'weight_decay': 2e-05, 'clip_grad': None, 'clip_mode': 'norm',
    'layer_decay': None, 'layer_decay_min_scale': 0, 'layer_decay_no_opt_scale': None, 'opt_kwargs': {},
    'sched': 'cosine', 'sched_on_updates': False, 'lr': None, 'lr_base': 0.1, 'lr_base_size': 256,
    'lr_base_scale': '', 'lr_noise': None, 'lr_noise_pct': 0.67, 'lr_noise_std': 1.0, 'lr_cycle_mul': 1.0,
    'lr_cycle_decay': 0.5, 'lr_cycle_limit': 1, 'lr_k_decay': 1.0, 'warmup_lr': 1e-05, 'min_lr': 0,
    'epochs': 300, 'epoch_repeats': 0.0, 'start_epoch': None, 'decay_milestones': [90, 180, 270],
    'decay_epochs': 90, 'warmup_epochs': 5, 'warmup_prefix': False, 'cooldown_epochs': 0,
    'patience_epochs': 10, 'decay_rate': 0.1, 'no_aug': False, 'train_crop_mode': None, 'scale': [0.08, 1.0],
    'ratio': [0.75, 1.3333333333333333], 'hflip': 0.5, 'vflip': 0.0, 'color_jitter': 0.4,
    'color_jitter_prob': None, 'grayscale_prob': None, 'gaussian_blur_prob': None, 'aa': None,
    'aug_repeats': 0, 'aug_splits': 0, 'jsd_loss': False, 'bce_loss': False, 'bce_sum': False,
    'bce_target_thresh': None, 'bce_pos_weight': None, 'reprob': 0.0, 'remode': 'pixel', 'recount': 1,
    'resplit': False, 'mixup': 0.0, 'cutmix': 0.0, 'cutmix_minmax': None, 'mixup_prob': 1.0,
    'mixup_switch_prob': 0.5, 'mixup_mode': 'batch', 'mixup_off_epoch': 0, 'smoothing': 0.1,
    'train_interpolation': 'random', 'drop': 0.0, 'drop_connect': None, 'drop_path': None, 'drop_block': None,
    'bn_momentum': None, 'bn_eps': None, 'sync_bn': False, 'dist_bn': 'reduce', 'split_bn': False,
    'model_ema': False, 'model_ema_force_cpu': False, 'model_ema_decay': 0.9998, 'model_ema_warmup': False,
    'seed': 42, 'worker_seeding': 'all', 'log_interval': 50, 'val_interval': 1, 'recovery_interval': 0,
    'checkpoint_hist': 10, 'workers': 4, 'save_images': False, 'pin_mem': False, 'no_prefetcher': False,
    'output': '', 'experiment': '', 'eval_metric': 'top1', 'tta': 0, 'use_multi_epochs_loader': False,
    'log_wandb': False, 'wandb_project': None, 'wandb_tags': [], 'wandb_resume_id': '',
    'train_img_sizes': None, 'train_batch_sizes': None, 'train_size_probs': None,
    'train_size_schedule': 'constant', 'train_size_schedule_spread': 0.65, 'train_size_random_mix': 0.1,
    'train_batches_per_epoch': None, 'variable_batch_loss_scale': 'none', 'naflex_loader': False,
    'naflex_train_seq_lens': [128, 256, 576, 784, 1024], 'naflex_max_seq_len': 576, 'naflex_patch_sizes': None,
    'naflex_patch_size_probs': None, 'naflex_loss_scale': 'linear', 'naflex_patchify_channels_first': False,
    'kd_model_name': None, 'kd_distill_type': 'logit', 'kd_loss_type': 'kl', 'distill_loss_weight': None,
    'task_loss_weight': None, 'kd_temperature': 4.0, 'kd_student_feature_dim': None,
    'kd_teacher_feature_dim': None, 'kd_token_distill_type': 'soft',}

DEIT_MAIN_DEFAULTS: dict[str, Any] = {
    'batch_size': 64, 'epochs': 300, 'model': 'deit_base_patch16_224', 'input_size': 224, 'drop': 0.0,
    'drop_path': 0.1, 'model_ema': True, 'model_ema_decay': 0.99996, 'model_ema_force_cpu': False, 'opt': 'adamw',
    'opt_eps': 1e-08, 'opt_betas': None, 'clip_grad': None, 'momentum': 0.9, 'weight_decay': 0.05,
    'sched': 'cosine', 'lr': 0.0005, 'lr_noise': None, 'lr_noise_pct': 0.67, 'lr_noise_std': 1.0,
    'warmup_lr': 1e-06, 'min_lr': 1e-05, 'decay_epochs': 30, 'warmup_epochs': 5, 'cooldown_epochs': 10,
    'patience_epochs': 10, 'decay_rate': 0.1, 'color_jitter': 0.4, 'aa': 'rand-m9-mstd0.5-inc1', 'smoothing': 0.1,
    'train_interpolation': 'bicubic', 'repeated_aug': True, 'reprob': 0.25, 'remode': 'pixel', 'recount': 1,
    'resplit': False, 'mixup': 0.8, 'cutmix': 1.0, 'cutmix_minmax': None, 'mixup_prob': 1.0,
    'mixup_switch_prob': 0.5, 'mixup_mode': 'batch', 'teacher_model': 'regnety_160', 'teacher_path': '',
    'distillation_type': 'none', 'distillation_alpha': 0.5, 'distillation_tau': 1.0, 'finetune': '',
    'data_path': '/datasets01/imagenet_full_size/061417/', 'data_set': 'IMNET', 'inat_category': 'name',
    'output_dir': '', 'device': 'cuda', 'seed': 0, 'resume': '', 'start_epoch': 0, 'eval': False,
    'dist_eval': False, 'num_workers': 10, 'pin_mem': True, 'world_size': 1, 'dist_url': 'env://',
}


def timm_train_args(**flags: Any) -> argparse.Namespace:
    """timm train.py's namespace: its defaults, ``flags`` (dest names), and what it sets while running on one
    process (the device, world size and rank; ``prefetcher``)."""
    args = argparse.Namespace(**{**TIMM_TRAIN_DEFAULTS, **flags})
    args.prefetcher = not args.no_prefetcher
    args.distributed, args.world_size, args.rank, args.local_rank, args.device = False, 1, 0, 0, "cpu"
    return args


def _resolve_lr(args: argparse.Namespace) -> None:
    """train.py's learning rate from --lr-base at one process's batch (it sets --lr-base-scale when not given)."""
    if not args.lr:
        ratio = args.batch_size * args.world_size * args.grad_accum_steps / args.lr_base_size
        if not args.lr_base_scale:
            args.lr_base_scale = "sqrt" if any(o in args.opt.lower() for o in ("ada", "lamb")) else "linear"
        args.lr = args.lr_base * (ratio ** 0.5 if args.lr_base_scale == "sqrt" else ratio)


def timm_train_checkpoint(folder: Path, *, teacher: nn.Module | None = None, seed: int = 0, epoch: int = 0,
                          summary: list[dict[str, float]] | None = None,
                          **flags: Any) -> tuple[Path, dict[str, torch.Tensor]]:
    """``folder/last.pth.tar`` as timm's train.py leaves it after ``epoch``, and the student's weights in it.

    The student is built as train.py builds it (``create_model`` with the data flags' ``in_chans``, ``num_classes``,
    the drop rates, ``global_pool`` and ``**model_kwargs``), its task is train.py's (``TokenDistillationTask`` for
    ``kd_model_name`` with ``kd_distill_type='token'``, ``LogitDistillationTask`` with ``'logit'``, else
    ``ClassificationTask``; the ``teacher`` module stands
    in for the one train.py would create from ``kd_model_name``: it is not saved) and timm's ``CheckpointSaver``
    writes the file. ``summary``: its rows (timm's ``update_summary`` dicts, ``epoch`` first), written as train.py
    writes ``summary.csv``, beside the ``args.yaml`` of its flags as given (train.py's ``args_text``)."""
    import csv

    import yaml
    from timm.optim import create_optimizer_v2, optimizer_kwargs
    from timm.task import ClassificationTask, LogitDistillationTask, TokenDistillationTask
    from timm.utils import CheckpointSaver

    args = timm_train_args(**flags)
    args_text = yaml.safe_dump({**TIMM_TRAIN_DEFAULTS, **flags}, default_flow_style=False)
    _resolve_lr(args)
    in_chans = args.in_chans if args.in_chans is not None else (args.input_size[0] if args.input_size else 3)
    torch.manual_seed(seed)
    model = timm.create_model(args.model, pretrained=args.pretrained, in_chans=in_chans, num_classes=args.num_classes,
                              drop_rate=args.drop, drop_path_rate=args.drop_path, drop_block_rate=args.drop_block,
                              global_pool=args.gp, bn_momentum=args.bn_momentum, bn_eps=args.bn_eps,
                              scriptable=args.torchscript, checkpoint_path=args.initial_checkpoint,
                              **args.model_kwargs)
    if args.num_classes is None:
        args.num_classes = model.num_classes
    if args.kd_model_name is not None and args.kd_distill_type == "logit":
        assert teacher is not None
        task = LogitDistillationTask(student_model=model, teacher_model=teacher, criterion=nn.CrossEntropyLoss(),
                                     loss_type=args.kd_loss_type, distill_loss_weight=args.distill_loss_weight,
                                     task_loss_weight=args.task_loss_weight, temperature=args.kd_temperature)
    elif args.kd_model_name is not None:
        assert args.kd_distill_type == "token" and teacher is not None
        task = TokenDistillationTask(student_model=model, teacher_model=teacher, criterion=nn.CrossEntropyLoss(),
                                     distill_type=args.kd_token_distill_type,
                                     distill_loss_weight=args.distill_loss_weight,
                                     task_loss_weight=args.task_loss_weight, temperature=args.kd_temperature)
    else:
        task = ClassificationTask(model=model, criterion=nn.CrossEntropyLoss())
    optimizer = create_optimizer_v2(task.get_trainable_module(), **optimizer_kwargs(cfg=args), **args.opt_kwargs)
    if args.model_ema:
        task.setup_ema(decay=args.model_ema_decay, use_warmup=args.model_ema_warmup)
    folder.mkdir(parents=True, exist_ok=True)
    saver = CheckpointSaver(model=task.get_trainable_module(), optimizer=optimizer, args=args, amp_scaler=None,
                            checkpoint_dir=str(folder), recovery_dir=str(folder), decreasing=False,
                            max_history=args.checkpoint_hist, task=task)
    saver.save_checkpoint(epoch, metric=50.0)
    if summary is not None:
        (folder / "args.yaml").write_text(args_text)
        with open(folder / "summary.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(summary[0]))
            writer.writeheader()
            writer.writerows(summary)
    return folder / "last.pth.tar", {k: v.clone() for k, v in model.state_dict().items()}


def deit_main_checkpoint(folder: Path, *, nb_classes: int, seed: int = 0, epoch: int = 0,
                         **flags: Any) -> tuple[Path, dict[str, torch.Tensor]]:
    """``folder/checkpoint.pth`` as DeiT's main.py writes it after ``epoch``, and the weights under ``model``.

    main.py sets ``args.nb_classes`` from the dataset and scales ``args.lr`` by the batch; it builds
    ``create_model(args.model, num_classes=args.nb_classes, drop rates)``, an EMA copy, the optimizer, the schedule
    and a loss scaler, and saves them all with its ``args``."""
    from timm.optim import create_optimizer_v2, optimizer_kwargs
    from timm.scheduler import create_scheduler
    from timm.utils import ModelEmaV3, NativeScaler, get_state_dict

    args = argparse.Namespace(**{**DEIT_MAIN_DEFAULTS, **flags})
    args.distributed, args.nb_classes = False, nb_classes
    torch.manual_seed(seed)
    model = timm.create_model(args.model, pretrained=False, num_classes=args.nb_classes, drop_rate=args.drop,
                              drop_path_rate=args.drop_path, drop_block_rate=None)
    model_ema = ModelEmaV3(model, decay=args.model_ema_decay) if args.model_ema else None
    args.lr = args.lr * args.batch_size / 512.0
    optimizer = create_optimizer_v2(model, **optimizer_kwargs(cfg=args))
    lr_scheduler, _ = create_scheduler(args, optimizer)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "checkpoint.pth"
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "lr_scheduler": lr_scheduler.state_dict(), "epoch": epoch, "model_ema": get_state_dict(model_ema),
                "scaler": NativeScaler(device="cpu").state_dict(), "args": args}, path)
    return path, {k: v.clone() for k, v in model.state_dict().items()}
