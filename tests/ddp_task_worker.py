"""Run by tests/test_task.py under ``torch.distributed.run --nproc_per_node=2`` (gloo): DeiTDistillationTask after
``prepare_distributed`` with a teacher whose path is measured (precision 'auto') by ``select_teacher_path``.

Process 0 measures for real; process 1's ``select_path`` raises if called. argv: OUT_JSON; process 0 writes
``{"paths": [path of process 0, path of process 1], "reasons": [...]}``.
"""

from __future__ import annotations

import json
import sys

import timm
import torch
import torch.distributed as dist

from timm_deit_distill.task import DeiTDistillationTask


def main() -> None:
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    rank = dist.get_rank()
    torch.manual_seed(0)
    student = timm.create_model("deit_tiny_distilled_patch16_224", img_size=32, patch_size=8, depth=1, num_classes=10)
    teacher = timm.create_model("resnet10t", num_classes=10).eval()
    task = DeiTDistillationTask(student, teacher, distillation_type="hard").prepare_distributed()
    assert task.teacher.path is None  # still to be measured
    if rank == 1:
        def measured_here(*args, **kwargs):
            raise AssertionError("process 1 measured the teacher's paths itself")

        task.teacher.select_path = measured_here
    g = torch.Generator().manual_seed(rank)
    x, y = torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 10, (8,), generator=g)
    task.select_teacher_path([(x, y)], steps=2)  # the explicit measurement: process 0's, followed by process 1
    task.train()
    for _ in range(2):
        task(x, y)["loss"].backward()
    seen = [None, None]
    dist.all_gather_object(seen, (str(task.teacher.path), task.teacher.path_choice.reason))
    if rank == 0:
        with open(sys.argv[1], "w") as f:
            json.dump({"paths": [s[0] for s in seen], "reasons": [s[1] for s in seen]}, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
