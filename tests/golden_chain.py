"""A small digits chain through the ``ddpipe`` CLI at fixed seeds, and the sha256 of what it produced.

squeeze -> recover (sre2l, a few steps) -> relabel -> prune -> train. The hashes cover the values
(not the file bytes) of the teacher's and the student's weights, the recovered images and every data
array of the label stores, so a refactor that keeps behaviour keeps them. ``python tests/golden_chain.py
DIR`` prints them as JSON (how the constants in test_golden.py were recorded).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys

import numpy as np

# the store's data arrays (format 2); commit records and other bookkeeping may change without changing labels
DATA_ARRAYS = ("label_index", "label_value", "sample_crop", "sample_cutout", "sample_cutout_fill", "sample_flip",
               "sample_id", "unit_batch", "unit_count", "unit_epoch", "unit_mix_box", "unit_mix_kind",
               "unit_mix_lambda", "unit_mix_perm")


def _digest(arrays) -> str:
    h = hashlib.sha256()
    for name, a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{name}:{a.dtype.str}:{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def weights_hash(path: str) -> str:
    import torch

    obj = torch.load(path, map_location="cpu", weights_only=False)
    sd = obj.get("model", obj.get("state_dict", obj))
    return _digest((k, v.detach().cpu().numpy()) for k, v in sorted(sd.items()) if hasattr(v, "detach"))


def store_hash(path: str) -> str:
    import zarr

    g = zarr.open_group(path, mode="r")
    names = sorted(n for n in g.array_keys() if n in DATA_ARRAYS)
    assert names == sorted(DATA_ARRAYS), f"{path}: data arrays {names}"
    return _digest((n, g[n][...]) for n in names)


def images_hash(folder: str) -> str:
    from PIL import Image

    files = sorted(os.path.join(r, f) for r, _, fs in os.walk(folder) for f in fs if f.endswith(".png"))
    return _digest((os.path.relpath(f, folder), np.asarray(Image.open(f))) for f in files)


def run_chain(root: str) -> dict:
    import contextlib
    import io

    from ddpipe.cli import main as cli_main

    def main(argv):  # the phases' JSON results are not this script's output
        with contextlib.redirect_stdout(io.StringIO()):
            return cli_main(argv)

    q = ["--no-progress", "--json", "--threads", "1"]
    t = os.path.join(root, "teacher")
    assert main(["squeeze", "--dataset", "digits", "--epochs", "2", "--out", t, *q]) == 0
    teacher = os.path.join(t, "teacher.pt")
    imgs = os.path.join(root, "images")
    assert main(["recover", "--method", "sre2l", "--teacher", teacher, "--dataset", "digits", "--ipc", "2",
                 "--iterations", "3", "--out", imgs, *q]) == 0
    store = os.path.join(root, "labels.zarr")
    assert main(["relabel", "--images", imgs, "--teacher", teacher, "--out", store, "--epochs", "3",
                 "--batch-size", "8", "--topk", "3", "-T", "4", "--no-progress", "--json", "-j", "0"]) == 0
    pruned = os.path.join(root, "pruned.zarr")
    assert main(["prune", store, "--keep", "0.5", "--out", pruned, "--json"]) == 0
    s = os.path.join(root, "student")
    assert main(["train", "--images", imgs, "--labels", pruned, "--dataset", "digits", "--out", s, "-j", "0",
                 *q]) == 0
    return {
        "teacher": weights_hash(teacher),
        "images": images_hash(imgs),
        "store": store_hash(store),
        "pruned": store_hash(pruned),
        "student": weights_hash(os.path.join(s, "student.pt")),
    }


if __name__ == "__main__":
    out = run_chain(sys.argv[1])
    print(json.dumps(out, indent=1))
