"""Rank sharding under ``torchrun --nproc_per_node 2`` (gloo): the ranks' union is the epoch, once."""

from __future__ import annotations

import json
import os
import socket
import subprocess

import numpy as np
import pytest

from dist_pipeline_data import ToyTeacher, digits
from ddpipe.labelstore import open_store
from ddpipe.pipeline import ArraySource, recipe
from ddpipe.pipeline.loader import LoaderConfig, make_loader
from ddpipe.pipeline.relabel import relabel, relabel_spec

HERE = os.path.dirname(os.path.abspath(__file__))
KW = dict(channels=1, mean=(0.5,), std=(0.5,))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_two_ranks_cover_the_epoch_without_duplicates(tmp_path, python, subprocess_env):
    images, labels = digits()
    np.savez(tmp_path / "d.npz", images=images[:230], labels=labels[:230])
    src = ArraySource(images[:230], labels[:230])
    store = str(tmp_path / "s")
    relabel(store, src, ToyTeacher(10),
            *relabel_spec(src, recipe("sre2l", output_size=(8, 8)), epochs=2, batch_size=25, num_classes=10, k=3),
            loader=LoaderConfig(num_workers=0, **KW), teacher_input="numpy")
    cmd = [python, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), os.path.join(HERE, "dist_pipeline_epoch.py"),
           str(tmp_path / "d.npz"), store, str(tmp_path)]
    proc = subprocess.run(cmd, env=subprocess_env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = json.loads((tmp_path / "result.json").read_text())
    single = make_loader(src, store, num_workers=0, **KW)
    for e in ("0", "1"):
        ref = [m.sample_ids.tolist() for _, _, m in single.epoch(int(e))]
        per_rank = [r["seen"][e] for r in ranks]
        union = [i for batches in per_rank for b in batches for i in b]
        assert len(union) == len(set(union)) == 230  # no duplicates, nothing missing
        assert sorted(union) == sorted(i for b in ref for i in b)
        # the batches themselves are the single-process batches, dealt round-robin
        assert per_rank[0] == ref[0::2] and per_rank[1] == ref[1::2]
        assert not set(ranks[0]["units"][e]) & set(ranks[1]["units"][e])
    relabelled = open_store(str(tmp_path / "relabelled"))
    assert relabelled.complete and sum(r["relabel_units"] for r in ranks) == relabelled.num_units
