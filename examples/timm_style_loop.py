"""A timm-style loop: ``loss = loss_fn(model(input), target)`` with the teacher inside the model.

``DistilledStudent`` returns the student's two heads and the teacher's logits in training, the fused
logits in eval, and saves only the student, so the checkpoint loads into a plain timm model.
Run: ``python examples/timm_style_loop.py``.
"""

import _digits_setup as setup
import timm
import torch
from timm.loss import LabelSmoothingCrossEntropy
from timm.optim import create_optimizer_v2

import timm_deit_distill  # noqa: F401  (registers the distilled variants)
from timm_deit_distill import DistillationLoss, DistilledStudent

args = setup.parse_args(__doc__.splitlines()[0])
student = timm.create_model(setup.STUDENT, num_classes=10, depth=4)  # 4 blocks: a one-minute example
data_config = setup.student_data_config(student)
train_loader, val_loader = setup.digits_loaders(args.workdir, data_config, args.batch_size)

# The teacher is built for the student's classes and normalisation from a name plus its weights.
model = DistilledStudent(student, setup.TEACHER, teacher_kwargs={
    "checkpoint_path": setup.digits_teacher(args.workdir, data_config, args.teacher_epochs)})
print(f"teacher val top-1: {model.teacher.check(val_loader).top1:.1f}%")  # refused if near chance
loss_fn = DistillationLoss(LabelSmoothingCrossEntropy(0.1), None, "soft", alpha=0.5, tau=1.0)
optimizer = create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05)  # sees only the student
schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-3, total_steps=args.steps, pct_start=0.1)

step = 0
while step < args.steps:
    model.train()
    for images, labels in train_loader:
        loss = loss_fn(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        step += 1
        if step % 50 == 0:
            print(f"step {step}: loss {loss.item():.3f}")
        if step == args.steps:
            break
print(f"student val top-1 (fused heads): {setup.accuracy(model, val_loader):.3f}")

checkpoint = f"{args.workdir}/timm_style_student.pth"
torch.save(model.state_dict(), checkpoint)  # the student's keys only
plain = timm.create_model(setup.STUDENT, num_classes=10, depth=4)
plain.load_state_dict(torch.load(checkpoint, weights_only=True))
print(f"reloaded as a plain timm model: val top-1 {setup.accuracy(plain, val_loader):.3f}")
