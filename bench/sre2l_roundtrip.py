"""SRe2L's own scripts, unmodified, around ``ddpipe import sre2l`` and ``ddpipe export sre2l``.

Run::

    ddpipe bench sre2l-roundtrip --sre2l-repo /path/to/SRe2L   # a clone or a bare git dir

What it does, on the CPU, in a temporary directory:

1. makes a tiny ImageFolder (``--classes`` classes x ``--per-class`` synthetic 64 px images, plus a
   validation folder) and trains a tiny CNN teacher on it (a few seconds);
2. runs SRe2L's ``SRe2L/relabel/generate_soft_label.py`` (CutMix, ``--use-fp16``, ``-j 0``) to write
   a label folder, in a subprocess through :func:`run_their_script`;
3. ``ddpipe import sre2l`` of that folder, then compares every field of the store with ``torch.load``
   of every file, bit for bit and type for type, and the rows' images with the order SRe2L's own
   ``RandomSampler`` produced during the relabel (recorded, not replayed);
4. ``ddpipe export sre2l`` of the store into a second folder and compares it element by element
   with the original (and byte for byte);
5. runs SRe2L's ``SRe2L/validate/train_FKD.py`` twice with the same seed, on the original folder and
   on the export, and compares every logged metric and a hash of everything in the saved
   checkpoint (student weights, optimizer and scheduler state); as a control it trains once more
   on a copy of the export with one logit changed by one fp16 ulp, which must differ.

The files are run as they are (their sha256 is recorded with the commit). What the subprocess
changes around them, all in :func:`run_their_script`:

* ``torch.Tensor.cuda`` and ``torch.nn.Module.cuda`` return their object (CPU, no copy);
* ``torch.cuda.is_available()`` answers True to calls made from ``train_FKD.py``'s own code (its
  ``raise Exception("need gpu to train!")`` check) and the truth (False) to everybody else, so
  ``nn.DataParallel`` and the DataLoader take their CPU paths;
* ``torch.utils.data._utils.fetch._MapDatasetFetcher.fetch`` gets the change SRe2L's
  ``validate/README.md`` tells users to make in PyTorch's source (load the batch's mix and soft
  labels before fetching it, return them with the collated batch), written here from that text;
* a stand-in ``wandb`` module (login/init/log/finish) that records what ``wandb.log`` is given;
* two architectures added to ``torchvision.models``: ``ddpipe_teacher`` (``pretrained=True`` loads
  the teacher trained in step 1 from a local file) and ``ddpipe_student`` (``pretrained=False``: a
  fresh, seeded initialisation), since their scripts look models up in ``torchvision.models.__dict__``;
* ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` in the environment: their ``torch.load`` calls predate
  torch 2.6's ``weights_only=True`` default, which refuses the numpy int64 CutMix box they saved;
* one thread, ``torch.use_deterministic_algorithms(True)``, and ``random``/``numpy``/``torch`` seeded
  with ``--seed`` before their script starts (``train_FKD.py`` seeds nothing itself);
* ``RandomSampler.__iter__`` is wrapped to record the indices it yields (relabel only; the
  values and their order are unchanged);
* ``sys.argv``, ``sys.path`` (the script's folder first, as ``python script.py`` does) and the
  working directory (the script's folder: ``train_FKD.py`` imports ``relabel.utils_fkd`` via
  ``sys.path.append('..')``) are set as a command line would.

Writes ``bench/results/sre2l_roundtrip-<time>.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from io import BytesIO
from typing import Any

from . import common
from ddpipe.config import check_int, config_to_dict, option
from ddpipe.errors import DDPipeError

DESCRIPTION = "SRe2L's unmodified relabel and train_FKD.py around ddpipe import/export (CPU shims): bit equality and identical training"

REPO_ENV = "DDPIPE_SRE2L_REPO"
DEFAULT_REPO = "/work/.mirror/VILA-Lab+SRe2L/repo"
RELABEL_SCRIPT = "SRe2L/relabel/generate_soft_label.py"
TRAIN_SCRIPT = "SRe2L/validate/train_FKD.py"
# every file of theirs that runs: the two scripts and the modules they import
THEIR_FILES = (RELABEL_SCRIPT, "SRe2L/relabel/utils_fkd.py", "SRe2L/relabel/__init__.py",
               TRAIN_SCRIPT, "SRe2L/validate/utils.py")
IMAGE_SIDE = 64


@dataclass(frozen=True, kw_only=True)
class Config:
    """``ddpipe bench sre2l-roundtrip``'s settings."""

    sre2l_repo: str | None = option(
        None, help=f"SRe2L's repository: a clone or a bare git directory (default ${REPO_ENV}, else {DEFAULT_REPO})")
    classes: int = option(10, help="classes of the synthetic image set (default 10; at least 5: top-5 accuracy)")
    per_class: int = option(4, help="training images per class (default 4)")
    val_per_class: int = option(2, help="validation images per class (default 2)")
    batch_size: int = option(8, help="relabel and training batch size (default 8)")
    epochs: int = option(3, help="relabel epochs = training epochs (default 3)")
    seed: int = option(0, help="seed of the images, the teacher and both training runs (default 0)")
    control: bool = option(True, help="no control run on a folder with one logit changed by one ulp")
    workdir: str | None = option(None, help="where everything is written (default a temp dir)")
    keep_files: bool = option(False, help="do not delete the working directory")
    results_dir: str | None = option(None, help="where the results JSON goes (default bench/results under the current directory)")
    json: bool = option(False, help="print the result as one JSON object on stdout", cli=False)

    def __post_init__(self) -> None:
        check_int(DDPipeError, "classes", self.classes, min=5)
        for name in ("per_class", "val_per_class", "batch_size", "epochs"):
            check_int(DDPipeError, name, getattr(self, name), min=1)
        check_int(DDPipeError, "seed", self.seed, min=0)


# --- their checkout ----------------------------------------------------------------------------------
def find_repo(path: str | None = None) -> str | None:
    """The SRe2L repository to use: ``path``, ``$DDPIPE_SRE2L_REPO`` or the default mirror, if it holds
    the scripts (a work tree, or a bare git directory that has them at HEAD); else None."""
    cand = path or os.environ.get(REPO_ENV) or DEFAULT_REPO
    if not cand or not os.path.isdir(cand):
        return None
    if os.path.isfile(os.path.join(cand, RELABEL_SCRIPT)):
        return cand
    if os.path.isfile(os.path.join(cand, "HEAD")) and os.path.isdir(os.path.join(cand, "objects")) and shutil.which("git"):
        ok = subprocess.run(["git", "--git-dir", cand, "cat-file", "-e", f"HEAD:{RELABEL_SCRIPT}"],
                            capture_output=True).returncode == 0
        return cand if ok else None
    return None


def checkout_sources(repo: str, dest: str) -> dict:
    """Their files under ``dest`` (copied from a work tree, or ``git archive`` of a bare directory's
    HEAD: read-only), with the commit and each file's sha256."""
    commit = None
    if os.path.isfile(os.path.join(repo, RELABEL_SCRIPT)):
        for rel in THEIR_FILES:
            os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
            shutil.copyfile(os.path.join(repo, rel), os.path.join(dest, rel))
        r = subprocess.run(["git", "-C", repo, "rev-parse", "HEAD"], capture_output=True, text=True)
        commit = r.stdout.strip() or None if r.returncode == 0 else None
        how = "copied from the work tree"
    else:
        data = subprocess.run(["git", "--git-dir", repo, "archive", "--format=tar", "HEAD", *THEIR_FILES],
                              capture_output=True, check=True).stdout
        with tarfile.open(fileobj=BytesIO(data)) as tf:
            tf.extractall(dest, filter="data")
        commit = subprocess.run(["git", "--git-dir", repo, "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
        how = "git archive HEAD of the bare repository"
    sha = {rel: hashlib.sha256(open(os.path.join(dest, rel), "rb").read()).hexdigest() for rel in THEIR_FILES}
    return {"repo": os.path.abspath(repo), "commit": commit, "how": how, "sha256": sha}


# --- images and the two networks ---------------------------------------------------------------------
def make_image_folder(root: str, classes: int, per_class: int, seed: int) -> None:
    """``root/class_XX/img_YYY.png``: per class a colour and a stripe pattern, plus noise."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:IMAGE_SIDE, 0:IMAGE_SIDE].astype(np.float32) / IMAGE_SIDE
    for c in range(classes):
        d = os.path.join(root, f"class_{c:02d}")
        os.makedirs(d, exist_ok=True)
        hue = np.array([np.cos(2 * np.pi * c / classes), np.cos(2 * np.pi * (c / classes + 1 / 3)),
                        np.cos(2 * np.pi * (c / classes + 2 / 3))], np.float32)
        angle = np.pi * c / classes
        for i in range(per_class):
            phase = rng.uniform(0, 2 * np.pi)
            stripes = np.sin(2 * np.pi * (2 + c % 3) * (np.cos(angle) * xx + np.sin(angle) * yy) + phase)
            img = 0.5 + 0.3 * hue[None, None, :] + 0.15 * stripes[..., None] + rng.normal(0, 0.08, (IMAGE_SIDE, IMAGE_SIDE, 3))
            Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(os.path.join(d, f"img_{i:03d}.png"))


def tiny_net(num_classes: int):
    """A two-convolution CNN with BatchNorm (both the teacher and the student)."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True),
        nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes),
    )


def resnet18(num_classes: int):
    """torchvision's ResNet-18 (``ddpipe bench sre2l-compare``'s teacher and student)."""
    import torchvision

    return torchvision.models.resnet18(num_classes=num_classes)


# what a spec's ``arch`` names: the architecture of ``ddpipe_teacher`` / ``ddpipe_student`` in their scripts
ARCHES = {"tiny": tiny_net, "resnet18": resnet18}
# the environment their scripts run in (see the module docstring)
THEIR_ENV = {"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1", "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}


def train_teacher(train_dir: str, val_dir: str, num_classes: int, seed: int, path: str, steps: int = 120) -> float:
    """Train the teacher on 96 px random crops of the training images; save its state dict to ``path``;
    return its top-1 on the validation folder at 224 px (SRe2L's Resize(256) + CenterCrop(224))."""
    import torch
    import torchvision.transforms as T
    from torchvision.datasets import ImageFolder

    torch.manual_seed(seed)
    norm = T.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    ds = ImageFolder(train_dir, T.Compose([T.RandomResizedCrop(96, scale=(0.08, 1)), T.RandomHorizontalFlip(),
                                           T.ToTensor(), norm]))
    gen = torch.Generator().manual_seed(seed)
    dl = torch.utils.data.DataLoader(ds, batch_size=16, shuffle=True, generator=gen, num_workers=0)
    model = tiny_net(num_classes)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    model.train()
    step = 0
    while step < steps:
        for x, y in dl:
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if step >= steps:
                break
    torch.save(model.state_dict(), path)
    val = ImageFolder(val_dir, T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), norm]))
    model.eval()
    with torch.no_grad():
        x = torch.stack([val[i][0] for i in range(len(val))])
        y = torch.tensor([val[i][1] for i in range(len(val))])
        return float((model(x).argmax(1) == y).float().mean() * 100)


# --- the subprocess that runs their file -------------------------------------------------------------
def run_their_script(spec_path: str) -> None:
    """Run one of SRe2L's scripts, unmodified, on the CPU (entry point of the subprocess).

    ``spec``: ``script`` (absolute path), ``argv`` (their flags), ``seed``, ``num_classes``,
    ``arch`` (a key of :data:`ARCHES`, default ``tiny``), ``teacher`` (state-dict path), ``capture`` (JSON written at the end: ``wandb.log`` calls and the
    sampler's index orders). The shims are listed in the module docstring.
    """
    import random
    import runpy
    import types

    with open(spec_path) as f:
        spec = json.load(f)
    script = os.path.abspath(spec["script"])
    script_dir = os.path.dirname(script)

    import numpy as np
    import torch
    import torchvision.models
    from torch.utils.data import RandomSampler
    from torch.utils.data._utils import fetch as fetch_mod

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    random.seed(spec["seed"])
    np.random.seed(spec["seed"])
    torch.manual_seed(spec["seed"])

    # .cuda() stays on the CPU
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.nn.Module.cuda = lambda self, *a, **k: self

    # torch.cuda.is_available(): True to their script's own frames only
    real_available = torch.cuda.is_available

    def is_available() -> bool:
        caller = sys._getframe(1).f_code.co_filename
        return os.path.abspath(caller) == script or real_available()

    torch.cuda.is_available = is_available

    # the fetcher change SRe2L's validate/README.md asks for in PyTorch's source
    plain_fetch = fetch_mod._MapDatasetFetcher.fetch

    def fetch(self, possibly_batched_index):
        if getattr(self.dataset, "mode", None) != "fkd_load":
            return plain_fetch(self, possibly_batched_index)
        mix_index, mix_lam, mix_bbox, soft_label = self.dataset.load_batch_config(possibly_batched_index[0])
        return plain_fetch(self, possibly_batched_index), mix_index.cpu(), mix_lam, mix_bbox, soft_label.cpu()

    fetch_mod._MapDatasetFetcher.fetch = fetch

    # wandb stand-in
    logged: list = []
    wandb = types.ModuleType("wandb")
    wandb.login = lambda *a, **k: True
    wandb.init = lambda *a, **k: None
    wandb.log = lambda data, *a, **k: logged.append(dict(data))
    wandb.finish = lambda *a, **k: None
    sys.modules["wandb"] = wandb

    # the two architectures, looked up in torchvision.models.__dict__ by their scripts
    net = ARCHES[spec.get("arch", "tiny")]

    def ddpipe_teacher(pretrained: bool = False, **kw):
        model = net(spec["num_classes"])
        if pretrained:
            model.load_state_dict(torch.load(spec["teacher"], map_location="cpu", weights_only=True))
        return model

    def ddpipe_student(pretrained: bool = False, **kw):
        if pretrained:
            raise RuntimeError("ddpipe_student has no pretrained weights")
        return net(spec["num_classes"])

    torchvision.models.ddpipe_teacher = ddpipe_teacher
    torchvision.models.ddpipe_student = ddpipe_student

    # record the sampler's orders (values and order unchanged)
    orders: list = []
    if spec.get("record_sampler"):
        plain_iter = RandomSampler.__iter__

        def recording_iter(self):
            seen: list = []
            orders.append(seen)
            for i in plain_iter(self):
                seen.append(int(i))
                yield i

        RandomSampler.__iter__ = recording_iter

    sys.argv = [script, *spec["argv"]]
    sys.path.insert(0, script_dir)
    os.chdir(script_dir)
    try:
        runpy.run_path(script, run_name="__main__")
    finally:
        with open(spec["capture"], "w") as f:
            json.dump({"wandb_log": logged, "sampler_orders": orders}, f)


@dataclass(frozen=True)
class TheirRun:
    """What one run of SRe2L's script left: its wandb log lines, the sampler's orders (when recorded),
    its wall seconds and its stdout."""

    wandb_log: list
    sampler_orders: list
    seconds: float
    stdout: str


def _their_run(name: str, work: str, script: str, argv: list, seed: int, num_classes: int, teacher: str,
               record_sampler: bool = False) -> TheirRun:
    spec = {"script": script, "argv": argv, "seed": seed, "num_classes": num_classes, "teacher": teacher,
            "capture": os.path.join(work, f"{name}.capture.json"), "record_sampler": record_sampler}
    spec_path = os.path.join(work, f"{name}.spec.json")
    with open(spec_path, "w") as f:
        json.dump(spec, f, indent=1)
    env = dict(os.environ, **THEIR_ENV)
    cmd = [sys.executable, "-c", "import sys; from ddpipe.bench.sre2l_roundtrip import run_their_script; "
                                 "run_their_script(sys.argv[1])", spec_path]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    with open(os.path.join(work, f"{name}.log"), "w") as f:
        f.write(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    if proc.returncode != 0:
        raise DDPipeError(f"SRe2L's {os.path.basename(script)} ({name}) failed with exit status {proc.returncode}:\n"
                          f"{proc.stderr[-4000:]}")
    with open(spec["capture"]) as f:
        cap = json.load(f)
    return TheirRun(wandb_log=cap["wandb_log"], sampler_orders=cap["sampler_orders"], seconds=seconds,
                    stdout=proc.stdout)


# --- comparisons -------------------------------------------------------------------------------------
def _batch_files(folder: str) -> list[tuple[int, int, str]]:
    out = []
    for ed in os.listdir(folder):
        e = int(ed.split("_")[1])
        for bf in os.listdir(os.path.join(folder, ed)):
            out.append((e, int(bf.split("_")[1].split(".")[0]), os.path.join(folder, ed, bf)))
    return sorted(out)


def _same(a: Any, b: Any) -> bool:
    """Equal in type and in every bit (tensors: dtype, shape, bytes; floats: their bits)."""
    import numpy as np
    import torch

    if type(a) is not type(b):
        return False
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and a.contiguous().numpy().tobytes() == b.contiguous().numpy().tobytes()
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, float):
        return a.hex() == b.hex()
    if isinstance(a, np.generic):
        return a.dtype == b.dtype and a.tobytes() == b.tobytes()
    return a == b


def compare_import(store: str, folder: str, sampler_orders: list, batch_size: int) -> dict:
    """Every field of every unit of ``store`` against ``torch.load`` of ``folder``'s files; the rows'
    images against the order SRe2L's RandomSampler yielded during the relabel."""
    import numpy as np
    import torch

    from ..labelstore import open_store

    r = open_store(store)
    units = {(u.epoch, u.batch): u for u in r.iter_units()}
    files = _batch_files(folder)
    mismatches: list[str] = []
    checked = 0

    def check(ok: bool, what: str) -> None:
        nonlocal checked
        checked += 1
        if not ok:
            mismatches.append(what)

    check(set(units) == {(e, b) for e, b, _ in files}, "units = files")
    check(r.spec.value_kind == "logits" and r.spec.k == r.spec.num_classes, "lossless logit store")
    for e, b, path in files:
        f = torch.load(path, weights_only=False)
        u = units.get((e, b))
        tag = f"epoch_{e}/batch_{b}"
        if u is None or not (isinstance(f, list) and len(f) == 6):
            check(False, f"{tag}: unit or list shape")
            continue
        coords, flips, mix_index, lam, box, logits = f
        check(coords.dtype == torch.float32 and u.crops.dtype == np.float32
              and u.crops.tobytes() == coords.numpy().tobytes(), f"{tag}: crop coords")
        check(flips.dtype == torch.bool and np.array_equal(np.asarray(u.flips, bool), flips.numpy()), f"{tag}: flips")
        check(mix_index.dtype == torch.int64 and u.mix_kind == "cutmix"
              and np.array_equal(np.asarray(u.mix_perm, np.int64), mix_index.numpy()), f"{tag}: mix index")
        check(type(lam) is float and float(u.mix_lambda).hex() == lam.hex(), f"{tag}: lambda")
        check(isinstance(box, list) and len(box) == 4 and all(type(v) is np.int64 for v in box)
              and [int(v) for v in u.mix_box] == [int(v) for v in box], f"{tag}: cutmix box")
        dense = np.zeros(tuple(logits.shape), np.float16)
        np.put_along_axis(dense, np.asarray(u.topk_logits[0]), np.asarray(u.topk_logits[1]).astype(np.float16), axis=1)
        check(logits.dtype == torch.float16 and dense.view(np.uint16).tobytes() == logits.numpy().view(np.uint16).tobytes(),
              f"{tag}: fp16 logits")
        # the images of the rows: SRe2L's own sampler order of epoch e, batch b
        order = sampler_orders[e] if e < len(sampler_orders) else []
        want = order[b * batch_size:(b + 1) * batch_size]
        check(list(map(int, u.sample_ids)) == want, f"{tag}: images (sample ids vs the relabel's sampler)")
    return {"files": len(files), "checks": checked, "mismatches": mismatches, "identical": not mismatches}


def compare_folders(a: str, b: str) -> dict:
    """Two SRe2L folders: the same entries, every list element equal in type and bits, and bytes."""
    import torch

    fa, fb = _batch_files(a), _batch_files(b)
    extra = sorted(set(os.listdir(a)) ^ set(os.listdir(b)))
    same_names = [(e, x) for e, x, _ in fa] == [(e, x) for e, x, _ in fb] and not extra
    differing, same_bytes = [], 0
    for (e, x, pa), (_e, _x, pb) in zip(fa, fb):
        if not _same(torch.load(pa, weights_only=False), torch.load(pb, weights_only=False)):
            differing.append(f"epoch_{e}/batch_{x}")
        same_bytes += open(pa, "rb").read() == open(pb, "rb").read()
    return {"files": len(fa), "same_names": same_names, "differing": differing,
            "identical": same_names and not differing, "byte_identical_files": same_bytes}


def _hash_obj(h, obj: Any) -> None:
    import torch

    if isinstance(obj, torch.Tensor):
        h.update(f"T{obj.dtype}{tuple(obj.shape)}".encode())
        h.update(obj.detach().contiguous().numpy().tobytes())
    elif isinstance(obj, dict):
        h.update(b"{")
        for k in obj:
            h.update(repr(k).encode())
            _hash_obj(h, obj[k])
        h.update(b"}")
    elif isinstance(obj, (list, tuple)):
        h.update(b"[")
        for v in obj:
            _hash_obj(h, v)
        h.update(b"]")
    elif isinstance(obj, float):
        h.update(obj.hex().encode())
    else:
        h.update(repr(obj).encode())


def checkpoint_digest(path: str) -> str:
    """sha256 of everything in a ``train_FKD.py`` checkpoint (weights, BN buffers, optimizer and
    scheduler state, epoch, best_acc1), independent of the zip container's layout."""
    import torch

    h = hashlib.sha256()
    _hash_obj(h, torch.load(path, map_location="cpu", weights_only=False))
    return h.hexdigest()


def _train_summary(cap: TheirRun, out_dir: str) -> dict:
    logs = cap.wandb_log
    last = logs[-1] if logs else {}
    return {
        "seconds": cap.seconds,
        "epochs_logged": len(logs),
        "train_loss": last.get("train/loss"),
        "train_top1": last.get("train/Top1"),
        "val_top1": last.get("val/top1"),
        "val_loss": last.get("val/loss"),
        "checkpoint_sha256": checkpoint_digest(os.path.join(out_dir, "checkpoint.pth.tar")),
        "wandb_log": logs,
    }


def _perturb_one_logit(src: str, dst: str) -> str:
    """A copy of ``src`` with logit [0, 0] of epoch_0/batch_0 moved by one fp16 ulp."""
    import torch

    shutil.copytree(src, dst)
    path = os.path.join(dst, "epoch_0", "batch_0.tar")
    f = torch.load(path, weights_only=False)
    bits = f[5].view(torch.int16)
    bits[0, 0] += 1
    torch.save(f, path)
    return "epoch_0/batch_0.tar: logits[0, 0] + 1 ulp"


# --- the benchmark -----------------------------------------------------------------------------------
def run(config: Config) -> int:
    from ..pipeline.interop import ExportConfig, ImportConfig, run_export, run_import

    out = common.table_stream(config.json)
    repo = find_repo(config.sre2l_repo)
    if repo is None:
        raise DDPipeError(f"no SRe2L checkout with {RELABEL_SCRIPT} at {config.sre2l_repo or os.environ.get(REPO_ENV) or DEFAULT_REPO}; "
                          f"pass --sre2l-repo or set ${REPO_ENV}")
    work = config.workdir or tempfile.mkdtemp(prefix="ddpipe-sre2l-roundtrip-")
    os.makedirs(work, exist_ok=True)
    t_start = time.perf_counter()
    try:
        src = os.path.join(work, "sre2l")
        sources = checkout_sources(repo, src)
        relabel_py, train_py = os.path.join(src, RELABEL_SCRIPT), os.path.join(src, TRAIN_SCRIPT)

        train_dir, val_dir = os.path.join(work, "images", "train"), os.path.join(work, "images", "val")
        make_image_folder(train_dir, config.classes, config.per_class, config.seed)
        make_image_folder(val_dir, config.classes, config.val_per_class, config.seed + 1)
        teacher = os.path.join(work, "teacher.pt")
        teacher_top1 = train_teacher(train_dir, val_dir, config.classes, config.seed, teacher)

        # 1. their relabel
        labels = os.path.join(work, "labels_sre2l")
        relabel_argv = ["--data", train_dir, "-a", "ddpipe_teacher", "-b", str(config.batch_size), "-j", "0",
                        "--epochs", str(config.epochs), "--seed", str(config.seed), "--fkd-seed", "42",
                        "--input-size", "224", "--min-scale-crops", "0.08", "--max-scale-crops", "1",
                        "--use-fp16", "--fkd-path", labels, "--mode", "fkd_save", "--mix-type", "cutmix"]
        rel = _their_run("relabel", work, relabel_py, relabel_argv, config.seed, config.classes, teacher,
                         record_sampler=True)

        # 2. ddpipe import, compared with torch.load of their files
        store = os.path.join(work, "imported.zarr")
        t0 = time.perf_counter()
        imp = run_import(ImportConfig(format="sre2l", src=labels, images=train_dir, out=store, progress=False))
        import_s = time.perf_counter() - t0
        imp_cmp = compare_import(store, labels, rel.sampler_orders, config.batch_size)

        # 3. ddpipe export, compared with the original folder
        exported = os.path.join(work, "labels_export")
        run_export(ExportConfig(format="sre2l", store=store, out=exported, progress=False))
        exp_cmp = compare_folders(labels, exported)

        # 4. their train_FKD.py on both folders (and the control)
        def train(name: str, folder: str) -> dict:
            out_dir = os.path.join(work, f"train_{name}")
            argv = ["--batch-size", str(config.batch_size), "--gradient-accumulation-steps", "2",
                    "--epochs", str(config.epochs), "-j", "0", "--train-dir", train_dir, "--val-dir", val_dir,
                    "--output-dir", out_dir, "--model", "ddpipe_student", "--cos", "-T", "20",
                    "--adamw-lr", "0.01", "--mix-type", "cutmix", "--fkd-path", folder.rstrip("/") + "/",
                    "--wandb-project", "ddpipe-roundtrip"]
            cap = _their_run(f"train_{name}", work, train_py, argv, config.seed, config.classes, teacher)
            return _train_summary(cap, out_dir) | {"argv": argv}

        tr_orig = train("original", labels)
        tr_exp = train("export", exported)
        same_training = (tr_orig["checkpoint_sha256"] == tr_exp["checkpoint_sha256"]
                         and json.dumps(tr_orig["wandb_log"]) == json.dumps(tr_exp["wandb_log"]))
        control = None
        if config.control:
            change = _perturb_one_logit(exported, os.path.join(work, "labels_control"))
            tr_ctl = train("control", os.path.join(work, "labels_control"))
            control = {"change": change, "checkpoint_sha256": tr_ctl["checkpoint_sha256"],
                       "val_top1": tr_ctl["val_top1"], "train_loss": tr_ctl["train_loss"],
                       "differs": tr_ctl["checkpoint_sha256"] != tr_orig["checkpoint_sha256"]}
    finally:
        if not config.keep_files and config.workdir is None:
            shutil.rmtree(work, ignore_errors=True)

    import torch

    rows = [
        {"step": "relabel: their generate_soft_label.py", "result": f"{exp_cmp['files']} files",
         "detail": f"{config.epochs} epochs x {-(-config.classes * config.per_class // config.batch_size)} batches, "
                   f"teacher val top-1 {teacher_top1:.1f}%, {rel.seconds:.1f} s"},
        {"step": "import: every field vs torch.load", "result": "bit for bit" if imp_cmp["identical"] else "DIFFERS",
         "detail": f"{imp_cmp['checks']} checks, rows' images = their sampler's order; lossy={imp.lossy}"},
        {"step": "export vs original folder", "result": "identical" if exp_cmp["identical"] else "DIFFERS",
         "detail": f"every element, types included; {exp_cmp['byte_identical_files']}/{exp_cmp['files']} files byte-identical"},
        {"step": "train_FKD.py on the original", "result": f"val top-1 {tr_orig['val_top1']:.2f}%",
         "detail": f"loss {tr_orig['train_loss']:.6f}, ckpt {tr_orig['checkpoint_sha256'][:16]}"},
        {"step": "train_FKD.py on the export", "result": f"val top-1 {tr_exp['val_top1']:.2f}%",
         "detail": f"loss {tr_exp['train_loss']:.6f}, ckpt {tr_exp['checkpoint_sha256'][:16]}"},
        {"step": "training identical", "result": "yes" if same_training else "NO",
         "detail": "every wandb.log value and the checkpoint's weights/optimizer/scheduler hash"},
    ]
    if control is not None:
        rows.append({"step": "control: one logit + 1 ulp", "result": "differs" if control["differs"] else "SAME",
                     "detail": f"val top-1 {control['val_top1']:.2f}%, ckpt {control['checkpoint_sha256'][:16]}"})
    print(common.format_table(rows, [("step", "step", ""), ("result", "result", ""), ("detail", "detail", "")]),
          file=out)
    ok = imp_cmp["identical"] and exp_cmp["identical"] and same_training and (control is None or control["differs"])
    payload = {
        "benchmark": "sre2l_roundtrip",
        "config": config_to_dict(config),
        "machine": common.machine_info(),
        "torch": torch.__version__,
        "sre2l": sources,
        "teacher_val_top1": teacher_top1,
        "relabel": {"argv": relabel_argv, "seconds": rel.seconds, "sampler_orders": rel.sampler_orders},
        "import": {"seconds": import_s, "result": imp.to_dict(), "comparison": imp_cmp},
        "export": exp_cmp,
        "train_original": tr_orig,
        "train_export": tr_exp,
        "training_identical": same_training,
        "control": control,
        "ok": ok,
        "seconds": time.perf_counter() - t_start,
        "rows": rows,
    }
    path = common.write_results("sre2l_roundtrip", payload, config.results_dir)
    print(f"results: {path}", file=out)
    if config.json:
        print(json.dumps(payload, default=common.json_default))
    return 0 if ok else 1
