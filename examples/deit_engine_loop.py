"""DeiT's engine loop: ``loss = criterion(samples, outputs, targets)``, the loss runs the teacher.

This is the shape of facebookresearch/deit's ``engine.train_one_epoch``; only the imports change.
Run: ``python examples/deit_engine_loop.py`` (a minute or two on a CPU).
"""

import _digits_setup as setup
import timm
import torch
import torch.nn as nn

import timm_deit_distill  # noqa: F401  (registers the distilled variants)
from timm_deit_distill import DistillationLoss, DistillationTeacher

args = setup.parse_args(__doc__.splitlines()[0])
model = timm.create_model(setup.STUDENT, num_classes=10, depth=4)  # 4 blocks: a one-minute example
model.set_distilled_training(True)  # training forward returns (cls_logits, dist_logits)
data_config = setup.student_data_config(model)
train_loader, val_loader = setup.digits_loaders(args.workdir, data_config, args.batch_size)

teacher = DistillationTeacher.create(
    setup.TEACHER, checkpoint_path=setup.digits_teacher(args.workdir, data_config, args.teacher_epochs),
    num_classes=10, data_mean=data_config["mean"], data_std=data_config["std"],
    input_size=data_config["input_size"])
# Measured before it teaches, through the loss's own path: refused (TeacherError) if near chance.
print(f"teacher val top-1: {teacher.check(val_loader).top1:.1f}%")
criterion = DistillationLoss(nn.CrossEntropyLoss(), teacher, "hard", alpha=0.5, tau=1.0)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-3, total_steps=args.steps, pct_start=0.1)

step = 0
while step < args.steps:
    model.train()
    for samples, targets in train_loader:
        outputs = model(samples)
        loss = criterion(samples, outputs, targets)  # DeiT's call
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        step += 1
        if step % 50 == 0:
            print(f"step {step}: loss {loss.item():.3f} (class head {criterion.last_base_loss.item():.3f}, "
                  f"distillation head {criterion.last_distill_loss.item():.3f})")
        if step == args.steps:
            break
print(f"student val top-1 (fused heads): {setup.accuracy(model, val_loader):.3f}")
