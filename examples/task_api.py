"""timm's Task API: ``result = task(input, target)``, as timm's train.py drives a ``TrainingTask``.

``DeiTDistillationTask`` trains the student (``task.trainable_module``) with DeiT's loss; the teacher
stays frozen in eval and out of checkpoints, which hold the student alone.
Run: ``python examples/task_api.py``.
"""

import _digits_setup as setup
import timm
import torch
from timm.optim import create_optimizer_v2

import timm_deit_distill  # noqa: F401  (registers the distilled variants)
from timm_deit_distill import DeiTDistillationTask

args = setup.parse_args(__doc__.splitlines()[0])
student = timm.create_model(setup.STUDENT, num_classes=10, depth=4)  # 4 blocks: a one-minute example
data_config = setup.student_data_config(student)
train_loader, val_loader = setup.digits_loaders(args.workdir, data_config, args.batch_size)

task = DeiTDistillationTask(
    student, setup.TEACHER, distillation_type="hard", alpha=0.5,
    teacher_kwargs={"checkpoint_path": setup.digits_teacher(args.workdir, data_config, args.teacher_epochs)})
print(f"teacher val top-1: {task.teacher.check(val_loader).top1:.1f}%")  # refused if near chance
optimizer = create_optimizer_v2(task.trainable_module, "adamw", lr=1e-3, weight_decay=0.05)
schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-3, total_steps=args.steps, pct_start=0.1)

step = 0
while step < args.steps:
    task.train()
    for images, labels in train_loader:
        result = task(images, labels)
        optimizer.zero_grad()
        result["loss"].backward()
        optimizer.step()
        schedule.step()
        step += 1
        if step % 50 == 0:
            print(f"step {step}: loss {result['loss'].item():.3f} (task {result['task_loss'].item():.3f}, "
                  f"distill {result['distill_loss'].item():.3f})")
        if step == args.steps:
            break
print(f"student val top-1 (fused heads): {setup.accuracy(task.get_eval_model(), val_loader):.3f}")
print("checkpoint keys:", list(task.get_checkpoint_state()), "- the student's state only")
