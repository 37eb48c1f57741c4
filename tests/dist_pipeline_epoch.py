"""Run under ``torchrun --nproc_per_node 2``: each rank loads its share of two epochs and relabels
its writer shards; rank 0 writes what every rank saw to ``OUT/result.json``.

Usage: dist_pipeline_epoch.py SOURCE.npz STORE OUT_DIR
"""

from __future__ import annotations

import json
import os
import sys

import torch.distributed as dist

from dist_pipeline_data import ToyTeacher
from ddpipe.pipeline import open_source, recipe
from ddpipe.pipeline.distributed import init_distributed
from ddpipe.pipeline.loader import LoaderConfig, make_loader
from ddpipe.pipeline.relabel import relabel, relabel_spec


def main() -> None:
    src_path, store, out = sys.argv[1:4]
    info = init_distributed("cpu", announce=False)
    rank, world = info.rank, info.world_size
    assert dist.get_backend() == "gloo" and world == 2
    source = open_source(src_path)
    kw = dict(channels=1, mean=(0.5,), std=(0.5,))
    loader = make_loader(source, store, LoaderConfig(num_workers=1, **kw), rank=rank, world_size=world)
    seen = {e: [[int(i) for i in m.sample_ids] for _, _, m in loader.epoch(e)] for e in (0, 1)}
    units = {e: [m.unit for _, _, m in loader.epoch(e)] for e in (0, 1)}
    # the DALI backend shards the same way (inline source here: spawned workers cost seconds per rank)
    dali = make_loader(source, store, LoaderConfig(backend="dali", num_workers=0, dali_parallel=False, **kw),
                       rank=rank, world_size=world)
    dali_units = [m.unit for _, _, m in dali.epoch(1)]
    dali.close()
    assert dali_units == units[1], (dali_units, units[1])
    # distributed relabel: each rank writes only its own writer shards
    r = relabel(os.path.join(out, "relabelled"), source, ToyTeacher(10),
                *relabel_spec(source, recipe("sre2l", output_size=(8, 8)), epochs=4, batch_size=50, num_classes=10, k=3),
                loader=LoaderConfig(num_workers=0, **kw), teacher_input="numpy", rank=rank, world_size=world)
    gathered = [None] * world
    dist.all_gather_object(gathered, {"rank": rank, "seen": seen, "units": units, "relabel_units": r["units_written"]})
    dist.barrier()
    if rank == 0:
        with open(os.path.join(out, "result.json"), "w") as f:
            json.dump(gathered, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
