"""Run by tests/test_sources_ddp.py under ``torch.distributed.run --nproc_per_node=2`` (gloo): which wds samples
does each process's training and evaluation loader (the package's, as the trainer builds them) yield?

argv: SHARD_DIR OUT_JSON. The shards' json sidecar ``idx`` (the sample's position in its split) is the target,
so the targets are the sample ids. Rank 0 writes ``{case: [ids of rank 0, ids of rank 1]}``.
"""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist

from timm_deit_distill.commands.args import parse_args
from timm_deit_distill.data import ViewSettings, build_eval_loader, build_train_loader, open_source
from timm_deit_distill.factory.settings import settings_from_options

DATA_CONFIG = dict(input_size=(1, 8, 8), mean=(0.0,), std=(1.0,), interpolation="nearest", crop_pct=1.0,
                   crop_mode="center")


def main() -> None:
    shard_dir, out = sys.argv[1], sys.argv[2]
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    rank, world = dist.get_rank(), dist.get_world_size()
    results = {}
    for workers in (0, 2):
        args = parse_args(["--dataset", "wds/digits", "--data-dir", shard_dir, "--target-key", "idx", "-b", "8",
                           "--workers", str(workers), "--seed", "3", "--num-classes", "160", "--in-chans", "1",
                           "--input-img-mode", "L"])
        settings = settings_from_options(args)
        train, val = open_source(settings.data, num_classes=160, batch_size=8, seed=3)
        view = ViewSettings.resolve(settings.augment, DATA_CONFIG, 160)
        loader = build_train_loader(train, view, settings.loader, rank=rank, world_size=world)
        for epoch in (0, 1):
            loader.set_epoch(epoch)
            ids = [int(t) for _, y, _ in loader for t in y]
            results[f"train workers {workers} epoch {epoch}"] = ids
        results[f"eval workers {workers}"] = [int(t) for _, y in build_eval_loader(
            val, DATA_CONFIG, settings.loader, rank=rank, world_size=world) for t in y]
    gathered = [None] * world
    dist.all_gather_object(gathered, results)
    if rank == 0:
        with open(out, "w") as f:
            json.dump({case: [g[case] for g in gathered] for case in results}, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
