"""The same work through SRe2L's own scripts and through ddpipe: relabel and student training, timed.

Run::

    ddpipe bench sre2l-compare --sre2l-repo /path/to/SRe2L   # a clone or a bare git dir
    ddpipe bench sre2l-compare --quick                        # a few images, one repeat (the test)

On the CPU, in a temporary directory (``--workdir`` to keep it somewhere):

1. **Images**: ``--classes`` x ``--per-class`` 224 px JPEGs written the way SRe2L's
   ``recover/data_synthesis.py`` writes its images (``new{c:03d}/class{c:03d}_id{i:03d}.jpg``, Pillow's
   ``save`` with no options, i.e. JPEG quality 75). Content: Fashion-MNIST training images of class
   ``c % 10``, upsampled bicubically to 224 px, coloured per class over a textured background
   (low-frequency colour noise, a grating and fine noise), so that the JPEGs have realistic sizes
   (the mean is reported). A validation folder of ``--val-images`` images (one per class folder) is
   made the same way; ddpipe reads it as ``imagefolder:<root>`` whose ``train/`` holds 1,000 class
   folders, so its student has ImageNet's 1,000 outputs like SRe2L's.
2. **Networks**: torchvision ResNet-18 with 1,000 outputs for the teacher (seeded random weights, one
   state-dict file both systems load) and the student. The cost is what is measured, not accuracy.
3. **Each phase three ways**, each with 0 and 2 worker processes, interleaved (the order rotates every
   repeat), ``--repeats`` times (median): SRe2L's ``relabel/generate_soft_label.py`` and
   ``validate/train_FKD.py`` with their recipe (CutMix, ``--use-fp16``, crops 0.08-1, 224 px, ``-T 20``,
   AdamW, cosine; ``--grad-accum``: their gradient accumulation, default 1); ``ddpipe relabel`` / ``ddpipe train`` through their library
   calls with the default loader (``torch``); and with ``--fast-loader`` (``batched``; on this CPU it
   beat ``dali``: see the README). ddpipe keeps its defaults otherwise (top-10 probabilities, fp16).
   Plus the pruned case, ddpipe only (SRe2L has no such mode): ``keep`` planned before relabel
   (``--keep``, default 1/40), then training on that store, with the fast loader and no workers.
4. **Fidelity**: ``ddpipe verify --teacher`` (:func:`ddpipe.evaluate.verify.run`) re-runs the teacher on
   ``--verify-units`` units of ddpipe's store, and again with zero tolerance beyond the codec's own
   rounding (``rtol = atol = 0``).

Every run is a child process (``child_main``) with one torch thread (``OMP_NUM_THREADS=1``), the same
environment for both systems, and the same clocks installed before anything runs:

* **model time**: ``torchvision.models.resnet.ResNet.forward`` (every call: the teacher in relabel; the
  student's training forwards *and* its validation forwards in train, in both systems alike; the
  validation set is the same ``--val-images`` images for both, validated after every epoch by ddpipe
  (``val_every=1``) and by SRe2L at epoch 0, every tenth and the last, i.e. alike up to 2 epochs), ``torch.autograd.backward`` (what
  ``loss.backward()`` calls) and the optimizer's step (torch's global step pre/post hooks);
* **wall time**: from just before SRe2L's script / ddpipe's ``run(config)`` starts to its end, inside the
  child. Interpreter start-up and the libraries the phase imports (``STARTUP_IMPORTS``: torch,
  torchvision, PIL with the image plugins its first open loads, and for ddpipe its own modules,
  zarr, and for training tensorstore and the torchvision transforms its dataset loader builds;
  measured as the modules new in ``sys.modules`` after a run) are imported before the clock starts
  and reported apart as ``import_s``;
* **time outside the models per sample**: (wall - model time) / samples. With no workers everything
  is on one timeline, so this is all of the system's own overhead (decode, crop, mix, labels, files);
* **samples**: relabel: images shown to the teacher (SRe2L: rows of its forwards; ddpipe:
  ``images_labelled``, which leaves out the one blank probe batch a teacher gets when opened); train:
  rows of the student's forwards in training mode;
* **setup / loop / teardown**: ``setup_s`` runs from the start to the first forward of more than one
  image (a teacher's one-image probe does not count), ``teardown_s`` from the end of the last model
  call to the end; ``loop_outside_ms_per_sample`` is the loop's time outside the models per sample;
* **peak RSS**: the parent samples ``/proc/<pid>/statm`` of the child and all its descendants (worker
  processes) every 50 ms and keeps the largest sum (shared pages count once per process, alike for both);
* **bytes written**: the size of the label folder / store (relabel) or of the output directory (train:
  checkpoints) after the run.

SRe2L's files run unmodified under the shims of :func:`ddpipe.bench.sre2l_roundtrip.run_their_script`,
with ResNet-18 as their ``ddpipe_teacher`` / ``ddpipe_student`` (the spec's ``arch``), and one addition
here: ``multiprocessing.set_start_method`` (``train_FKD.py`` asks for ``spawn``)
keeps Linux's ``fork``, so the fetcher change their README makes in PyTorch's source (hence in every
process) reaches the DataLoader workers. Fork starts workers faster than spawn would, which favours
SRe2L's wall time with workers.

Rows: ``{phase, system, loader, workers, samples, wall_s, model_s, outside_model_s_per_sample,
bytes_written, peak_rss_mb}`` plus ``keep``, ``samples_per_s``, the model clocks and every repeat's
values; each number is the median over repeats. Writes ``bench/results/sre2l-compare-<time>.json``.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from . import common
from .sre2l_roundtrip import (DEFAULT_REPO, RELABEL_SCRIPT, REPO_ENV, THEIR_ENV, TRAIN_SCRIPT, checkout_sources, find_repo,
                              resnet18)
from ddpipe._format import keep_fraction
from ddpipe.config import check_int, config_to_dict, option
from ddpipe.errors import DDPipeError

DESCRIPTION = "SRe2L's relabel and train_FKD.py vs ddpipe relabel/train on 224 px JPEGs: time outside the models, bytes, RSS"

NUM_CLASSES = 1000  # ImageNet's: the teacher's and the student's outputs
WORKERS = (0, 2)
LOADERS = ("torch", "dali", "batched")
TEMPERATURE = 20.0
ROW_KEYS = ("phase", "system", "loader", "workers", "samples", "wall_s", "model_s", "outside_model_s_per_sample",
            "bytes_written", "peak_rss_mb")
QUICK = {"classes": 4, "per_class": 2, "val_images": 2, "batch_size": 4, "epochs": 1, "repeats": 1,
         "image_side": 64, "verify_units": 2}


@dataclass(frozen=True, kw_only=True)
class Config:
    """``ddpipe bench sre2l-compare``'s settings."""

    sre2l_repo: str | None = option(
        None, help=f"SRe2L's repository: a clone or a bare git directory (default ${REPO_ENV}, else {DEFAULT_REPO})")
    classes: int = option(60, help="classes of the image set (default 60: with 2 per class and 2 epochs, 240 "
                                   "samples per row, about 30 minutes for the whole run on 2 shared cores)")
    per_class: int = option(2, help="images per class (default 2)")
    val_images: int = option(10, help="validation images, one per class folder (default 10)")
    batch_size: int = option(24, help="relabel = training batch size (default 24: 5 batches per epoch, "
                                      "like SRe2L's 1024 on 5,000 images)")
    grad_accum: int = option(1, help="train_FKD.py's --gradient-accumulation-steps (default 1: both systems pass "
                                     "the same whole batch through the student; their train_FKD.sh uses 2 to fit "
                                     "a small GPU, which halves the activation memory)")
    epochs: int = option(2, help="relabel epochs = training epochs (default 2)")
    repeats: int = option(3, help="runs of every row; the table shows medians (default 3)")
    fast_loader: str = option("batched", choices=LOADERS, help="ddpipe's second loader (default batched)")
    keep: float = option(1 / 40, parse=keep_fraction,
                         help="the pruned case's kept fraction: 0.025, 1/40 or 40x (default 1/40)")
    image_side: int = option(224, help="side of the JPEGs (default 224, SRe2L's)")
    verify_units: int = option(4, help="units of ddpipe's store the teacher re-runs (default 4)")
    seed: int = option(0, help="seed of the images and the networks (default 0)")
    quick: bool = option(False, help="4 classes x 2 images of 64 px, batch 4, one epoch, one repeat (the test)")
    workdir: str | None = option(None, help="where everything is written (default a temp dir)")
    keep_files: bool = option(False, help="do not delete the working directory")
    results_dir: str | None = option(None, help="where the results JSON goes (default bench/results under the current directory)")
    json: bool = option(False, help="print the result as one JSON object on stdout", cli=False)

    def __post_init__(self) -> None:
        for name in ("classes", "per_class", "val_images", "epochs", "repeats", "image_side", "verify_units"):
            check_int(DDPipeError, name, getattr(self, name), min=1)
        check_int(DDPipeError, "batch_size", self.batch_size, min=2)
        check_int(DDPipeError, "grad_accum", self.grad_accum, min=1)
        if self.batch_size % self.grad_accum:
            raise DDPipeError(f"batch_size ({self.batch_size}) must be a multiple of grad_accum ({self.grad_accum}): "
                              "train_FKD.py asserts it")
        check_int(DDPipeError, "seed", self.seed, min=0)


# --- the images, the teacher ------------------------------------------------------------------------
def class_folder(c: int) -> str:
    return f"new{c:03d}"


def make_jpegs(root: str, classes: int, per_class: int, side: int, seed: int, first: int = 0) -> list[str]:
    """``root/new{c:03d}/class{c:03d}_id{i:03d}.jpg`` as SRe2L's recover saves them (Pillow defaults:
    quality 75): Fashion-MNIST garments of class ``c % 10`` (image ``first + ...`` of that class),
    bicubically upsampled to ``side`` px, coloured per class over a textured background."""
    import numpy as np
    from PIL import Image

    from ..evaluate.datasets import load_fashion_mnist

    train = load_fashion_mnist().train
    by_class = [np.flatnonzero(train.labels == k) for k in range(10)]
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / side
    paths = []
    for c in range(classes):
        d = os.path.join(root, class_folder(c))
        os.makedirs(d, exist_ok=True)
        hue = 2 * np.pi * c / classes
        fg = 0.55 + 0.4 * np.cos(hue + np.array([0, 2 * np.pi / 3, 4 * np.pi / 3], np.float32))
        for i in range(per_class):
            pick = by_class[c % 10][(first + c // 10 * per_class + i) % len(by_class[c % 10])]
            garment = Image.fromarray(train.images[pick, :, :, 0]).resize((side, side), Image.BICUBIC)
            mask = np.asarray(garment, np.float32)[..., None] / 255
            coarse = rng.random((3, 8, 8)).astype(np.float32)  # low-frequency colour field
            bg = np.stack([np.asarray(Image.fromarray((ch * 255).astype(np.uint8)).resize((side, side), Image.BICUBIC),
                                      np.float32) / 255 for ch in coarse], -1)
            angle, freq = rng.uniform(0, np.pi), rng.uniform(6, 20)
            grating = 0.12 * np.sin(2 * np.pi * freq * (np.cos(angle) * xx + np.sin(angle) * yy))[..., None]
            img = (1 - mask) * (0.25 + 0.5 * bg + grating) + mask * fg * (0.6 + 0.4 * mask)
            img = img + rng.normal(0, 0.07, img.shape)  # ~15 kB: SRe2L IPC50, 0.75 GB / 50,000
            path = os.path.join(d, f"class{c:03d}_id{i:03d}.jpg")
            Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(path)
            paths.append(path)
    return paths


def make_validation_root(root: str, val_images: int, side: int, seed: int) -> tuple[str, str]:
    """``root/val``: ``val_images`` class folders of one JPEG each (SRe2L's ``--val-dir``), and
    ``root/train``: the 1,000 class folders ddpipe's ``imagefolder:<root>`` takes its classes from (one
    image in the first, since a dataset needs a training image). Returns (the root, its val folder)."""
    val = os.path.join(root, "val")
    make_jpegs(val, val_images, 1, side, seed, first=5000)
    for c in range(NUM_CLASSES):
        os.makedirs(os.path.join(root, "train", class_folder(c)), exist_ok=True)
    src = os.path.join(val, class_folder(0), "class000_id000.jpg")
    shutil.copyfile(src, os.path.join(root, "train", class_folder(0), "class000_id000.jpg"))
    return root, val


def make_teacher(path: str, seed: int) -> None:
    """A seeded, randomly initialised ResNet-18 state dict (what both systems load)."""
    import torch

    torch.manual_seed(seed)
    torch.save(resnet18(NUM_CLASSES).state_dict(), path)


# --- the child process: one run of one system, under the clocks ----------------------------------------
class ModelClock:
    """Seconds inside the models: ResNet forwards, autograd backward passes and optimizer steps."""

    def __init__(self) -> None:
        self.forward_s = self.backward_s = self.step_s = 0.0
        self.forward_calls = self.train_rows = self.eval_rows = 0
        self._step_t0 = None
        # the loop: from the first forward of more than one image (not a teacher's one-image probe) to
        # the end of the last model call, and the model seconds spent before it began
        self.loop_start: float | None = None
        self.loop_end: float | None = None
        self.model_before_loop = 0.0

    @property
    def model_s(self) -> float:
        return self.forward_s + self.backward_s + self.step_s

    def _begin(self, t0: float, rows: int) -> None:
        if self.loop_start is None and rows > 1:
            self.loop_start, self.model_before_loop = t0, self.model_s

    def install(self) -> None:
        import torch
        from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
        from torchvision.models.resnet import ResNet

        clock, plain_forward, plain_backward = self, ResNet.forward, torch.autograd.backward

        def forward(module, x):
            t0 = time.perf_counter()
            clock._begin(t0, int(x.shape[0]))
            try:
                return plain_forward(module, x)
            finally:
                clock.loop_end = time.perf_counter()
                clock.forward_s += clock.loop_end - t0
                clock.forward_calls += 1
                if module.training:
                    clock.train_rows += int(x.shape[0])
                else:
                    clock.eval_rows += int(x.shape[0])

        def backward(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return plain_backward(*args, **kwargs)
            finally:
                clock.loop_end = time.perf_counter()
                clock.backward_s += clock.loop_end - t0

        def step_pre(*_args):
            clock._step_t0 = time.perf_counter()

        def step_post(*_args):
            if clock._step_t0 is not None:
                clock.loop_end = time.perf_counter()
                clock.step_s += clock.loop_end - clock._step_t0
                clock._step_t0 = None

        ResNet.forward = forward
        torch.autograd.backward = backward
        register_optimizer_step_pre_hook(step_pre)
        register_optimizer_step_post_hook(step_post)

    def to_dict(self, t_start: float, t_end: float) -> dict:
        """The clocks, and the run split at the loop: ``setup_s`` (start to the loop's first forward),
        ``loop_outside_s`` (the loop's seconds outside the models) and ``teardown_s`` (after the last model call)."""
        start = self.loop_start if self.loop_start is not None else t_end
        end = self.loop_end if self.loop_end is not None else t_end
        return {"forward_s": self.forward_s, "backward_s": self.backward_s, "step_s": self.step_s,
                "model_s": self.model_s, "forward_calls": self.forward_calls,
                "train_rows": self.train_rows, "eval_rows": self.eval_rows,
                "setup_s": start - t_start, "teardown_s": t_end - end,
                "loop_outside_s": (end - start) - (self.model_s - self.model_before_loop)}


# what each system's code imports for a phase (measured: the modules new in sys.modules after a run),
# imported before its clock starts (``import_s``, reported apart): start-up, not work per sample
# (the JPEG plugins PIL loads on its first open are loaded for both systems alike)
_PIL = ("PIL.Image", "PIL.JpegImagePlugin", "PIL.PngImagePlugin", "PIL.BmpImagePlugin", "PIL.GifImagePlugin",
        "PIL.PpmImagePlugin")
_DDPIPE_IMPORTS = ("torchvision.transforms", "ddpipe.evaluate.relabel", "ddpipe.evaluate.student",
                   "ddpipe.evaluate.train", "ddpipe.evaluate.loop", "ddpipe.evaluate.train_batches",
                   "ddpipe.evaluate.teacher", "ddpipe.evaluate.checkpoint", "ddpipe.evaluate.models",
                   "ddpipe.evaluate.datasets", "ddpipe.pipeline", "ddpipe.pipeline.loader", "ddpipe.pipeline.relabel",
                   "ddpipe.pipeline.batched", "ddpipe.pipeline.cache", "ddpipe.labelstore", "zarr", "numcodecs",
                   "torch.utils.serialization", "multiprocessing.synchronize") + _PIL
STARTUP_IMPORTS = {
    ("sre2l", "relabel"): ("torch.distributed", "torch.multiprocessing", "torchvision.transforms", "tqdm") + _PIL,
    ("sre2l", "train"): ("torch.distributed", "torch.multiprocessing", "torchvision.transforms", "torchvision.datasets")
                        + _PIL,
    ("ddpipe", "relabel"): _DDPIPE_IMPORTS,
    # the store reader's fast backend (when installed); the torchvision transforms ddpipe's dataset loader builds
    ("ddpipe", "train"): _DDPIPE_IMPORTS + ("tensorstore", "torchvision.transforms.v2"),
}


def startup_imports(system: str, phase: str) -> float:
    """Import what ``system``'s ``phase`` imports (optional libraries when installed); the seconds it took."""
    import importlib

    t0 = time.perf_counter()
    for name in STARTUP_IMPORTS[system, phase]:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    return time.perf_counter() - t0


def child_main(spec_path: str) -> None:
    """Entry point of a child process: run one system's phase as ``spec`` says, under :class:`ModelClock`,
    and write ``{wall_s, import_s, clock, result}`` to ``spec['timing']``."""
    with open(spec_path) as f:
        spec = json.load(f)
    t0 = time.perf_counter()
    import torch
    import torchvision  # noqa: F401  imported before the clock starts, in both systems

    import_s = time.perf_counter() - t0 + startup_imports(spec["system"], spec["phase"])
    clock = ModelClock()
    clock.install()
    result: dict = {}
    if spec["system"] == "sre2l":
        import multiprocessing

        from . import sre2l_roundtrip

        multiprocessing.set_start_method = lambda method, force=False: None  # keep fork (module docstring)
        t0 = time.perf_counter()
        sre2l_roundtrip.run_their_script(spec["their_spec"])
        t1 = time.perf_counter()
    else:
        torch.set_num_threads(1)
        torch.use_deterministic_algorithms(True)  # as run_their_script does for SRe2L
        if spec["phase"] == "relabel":
            from ..evaluate.relabel import RelabelConfig, run
            config = RelabelConfig(**spec["config"])
        else:
            from ..evaluate.student import TrainConfig, run
            config = TrainConfig(**spec["config"])
        t0 = time.perf_counter()
        res = run(config)
        t1 = time.perf_counter()
        if spec["phase"] == "relabel":
            result = {"images_labelled": res.images_labelled, "units": res.units}
        else:
            result = {"epochs_done": res.epochs_done, "label_bytes": res.label_bytes,
                      "label_seconds": res.label_seconds, "final": res.final}
    with open(spec["timing"], "w") as f:
        json.dump({"wall_s": t1 - t0, "import_s": import_s, "clock": clock.to_dict(t0, t1), "result": result}, f)


def run_child(work: str, name: str, spec: dict) -> dict:
    """Run :func:`child_main` on ``spec`` in a subprocess; its timing, with the peak RSS of its process
    tree (sampled every 50 ms) as ``peak_rss_mb``."""
    spec = dict(spec, timing=os.path.join(work, f"{name}.timing.json"))
    spec_path = os.path.join(work, f"{name}.spec.json")
    with open(spec_path, "w") as f:
        json.dump(spec, f, indent=1)
    env = dict(os.environ, **THEIR_ENV)  # the same environment for both systems
    cmd = [sys.executable, "-c", "import sys; from ddpipe.bench.sre2l_compare import child_main; child_main(sys.argv[1])",
           spec_path]
    log_path = os.path.join(work, f"{name}.log")
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        _, peak = common.wait_sampling_rss(proc, every=0.05)
    if proc.returncode != 0:
        with open(log_path) as f:
            tail = f.read()[-3000:]
        raise DDPipeError(f"{name} failed with exit status {proc.returncode} (log {log_path}):\n{tail}")
    with open(spec["timing"]) as f:
        timing = json.load(f)
    return dict(timing, peak_rss_mb=peak / 1e6)


def du(path: str) -> int:
    """Bytes of the files under ``path`` (or of the file)."""
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(r, f)) for r, _d, fs in os.walk(path) for f in fs)


# --- one run of each kind -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """One row: a phase through one system, loader and worker count (``keep``: the pruned case)."""

    phase: str
    system: str
    loader: str
    workers: int
    keep: float | None = None

    @property
    def key(self) -> str:
        tag = f"-keep{self.keep:g}" if self.keep else ""
        return f"{self.phase}-{self.system}-{self.loader}-j{self.workers}{tag}"


class Bench:
    """The prepared inputs and the runs of one benchmark."""

    def __init__(self, args, work: str, src: str, train_dir: str, data_root: str, val_dir: str, teacher: str):
        self.args, self.work, self.src = args, work, src
        self.train_dir, self.data_root, self.val_dir, self.teacher = train_dir, data_root, val_dir, teacher

    def _their(self, script: str, argv: list, name: str) -> dict:
        their = {"script": os.path.join(self.src, script), "argv": argv, "seed": self.args.seed,
                 "num_classes": NUM_CLASSES, "arch": "resnet18", "teacher": self.teacher,
                 "capture": os.path.join(self.work, f"{name}.capture.json"), "record_sampler": False}
        path = os.path.join(self.work, f"{name}.their.json")
        with open(path, "w") as f:
            json.dump(their, f, indent=1)
        return {"their_spec": path}

    def relabel(self, case: Case, out: str, name: str) -> dict:
        a = self.args
        if case.system == "sre2l":
            argv = ["--data", self.train_dir, "-a", "ddpipe_teacher", "-b", str(a.batch_size), "-j", str(case.workers),
                    "--epochs", str(a.epochs), "--seed", str(a.seed), "--fkd-seed", "42", "--input-size", "224",
                    "--min-scale-crops", "0.08", "--max-scale-crops", "1", "--use-fp16", "--fkd-path", out,
                    "--mode", "fkd_save", "--mix-type", "cutmix"]
            spec = self._their(RELABEL_SCRIPT, argv, name)
        else:
            spec = {"config": dict(images=self.train_dir, teacher=[self.teacher], model="resnet18",
                                   num_classes=NUM_CLASSES, input_size=224, out=out, epochs=a.epochs,
                                   batch_size=a.batch_size, schedule="sre2l", mix="cutmix", min_scale=0.08,
                                   value_codec="fp16", temperature=TEMPERATURE, seed=42, keep=case.keep,
                                   loader=case.loader, workers=case.workers, device="cpu", threads=1, progress=False)}
        t = run_child(self.work, name, dict(spec, system=case.system, phase="relabel"))
        samples = t["clock"]["eval_rows"] if case.system == "sre2l" else t["result"]["images_labelled"]
        return dict(t, samples=samples, bytes_written=du(out))

    def train(self, case: Case, labels: str, out: str, name: str) -> dict:
        a = self.args
        if case.system == "sre2l":
            argv = ["--batch-size", str(a.batch_size), "--gradient-accumulation-steps", str(a.grad_accum),
                    "--epochs", str(a.epochs),
                    "-j", str(case.workers), "--train-dir", self.train_dir, "--val-dir", self.val_dir,
                    "--output-dir", out, "--model", "ddpipe_student", "--cos", "-T", f"{TEMPERATURE:g}",
                    "--mix-type", "cutmix", "--fkd-path", labels.rstrip("/") + "/", "--wandb-project", "ddpipe-compare"]
            spec = self._their(TRAIN_SCRIPT, argv, name)
        else:
            spec = {"config": dict(images=self.train_dir, out=out, dataset=f"imagefolder:{self.data_root}", labels=labels,
                                   model="resnet18", seed=a.seed, val_every=1, loader=case.loader, workers=case.workers,
                                   device="cpu", threads=1, progress=False, overwrite=True)}
        t = run_child(self.work, name, dict(spec, system=case.system, phase="train"))
        return dict(t, samples=t["clock"]["train_rows"], bytes_written=du(out))


def cases(fast: str, keep: float) -> tuple[list[Case], list[Case]]:
    """The relabel and train rows, in their first repeat's order."""
    per_phase = []
    for phase in ("relabel", "train"):
        rows = [Case(phase, system, loader, w) for w in WORKERS
                for system, loader in (("sre2l", "torch"), ("ddpipe", "torch"), ("ddpipe", fast))]
        rows.append(Case(phase, "ddpipe", fast, 0, keep))
        per_phase.append(rows)
    return per_phase[0], per_phase[1]


def _median(values: list) -> float:
    return float(statistics.median(values))


def summarise(case: Case, runs: list[dict]) -> dict:
    """One row: every number the median of its repeats (outside-model time per repeat, then the median)."""
    outside = [(r["wall_s"] - r["clock"]["model_s"]) / max(1, r["samples"]) for r in runs]
    row = {
        "phase": case.phase, "system": case.system,
        "loader": "their DataLoader" if case.system == "sre2l" else case.loader,
        "workers": case.workers, "keep": case.keep,
        "samples": runs[0]["samples"],
        "wall_s": _median([r["wall_s"] for r in runs]),
        "model_s": _median([r["clock"]["model_s"] for r in runs]),
        "outside_model_s_per_sample": _median(outside),
        "bytes_written": int(_median([r["bytes_written"] for r in runs])),
        "peak_rss_mb": _median([r["peak_rss_mb"] for r in runs]),
    }
    row["samples_per_s"] = row["samples"] / row["wall_s"] if row["wall_s"] else None
    row["outside_model_ms_per_sample"] = row["outside_model_s_per_sample"] * 1e3
    for k in ("forward_s", "backward_s", "step_s", "setup_s", "teardown_s"):
        row[k] = _median([r["clock"][k] for r in runs])
    row["import_s"] = _median([r["import_s"] for r in runs])
    row["loop_outside_ms_per_sample"] = _median([r["clock"]["loop_outside_s"] / max(1, r["samples"]) for r in runs]) * 1e3
    row["repeats"] = [{"wall_s": r["wall_s"], "model_s": r["clock"]["model_s"], "samples": r["samples"],
                       "peak_rss_mb": r["peak_rss_mb"], "bytes_written": r["bytes_written"],
                       "result": r.get("result")} for r in runs]
    return row


def targets(rows: list[dict], fast: str) -> dict:
    """The issue's targets, from the rows: outside-model time (0 workers) <= 1/3 of SRe2L's, wall time
    lower at equal workers, peak RSS not higher; each for ddpipe's default and fast loader."""
    def find(phase, system, loader, workers):
        return next((r for r in rows if r["phase"] == phase and r["system"] == system and r["workers"] == workers
                     and (system == "sre2l" or r["loader"] == loader) and not r["keep"]), None)

    out: dict = {}
    for phase in ("relabel", "train"):
        for loader in ("torch", fast):
            key = f"{phase}/{loader}"
            theirs0, ours0 = find(phase, "sre2l", None, 0), find(phase, "ddpipe", loader, 0)
            if theirs0 is None or ours0 is None:
                continue
            ratio = ours0["outside_model_s_per_sample"] / theirs0["outside_model_s_per_sample"] \
                if theirs0["outside_model_s_per_sample"] > 0 else None
            entry = {"outside_ratio_0_workers": ratio, "outside_met": ratio is not None and ratio <= 1 / 3}
            for w in WORKERS:
                t, o = find(phase, "sre2l", None, w), find(phase, "ddpipe", loader, w)
                if t is None or o is None:
                    continue
                entry[f"wall_ratio_{w}_workers"] = o["wall_s"] / t["wall_s"]
                entry[f"wall_met_{w}_workers"] = o["wall_s"] < t["wall_s"]
                entry[f"rss_ratio_{w}_workers"] = o["peak_rss_mb"] / t["peak_rss_mb"]
                entry[f"rss_met_{w}_workers"] = o["peak_rss_mb"] <= t["peak_rss_mb"]
            out[key] = entry
    return out


def fidelity(store: str, images: str, teacher: str, units: int) -> dict:
    """``ddpipe verify --teacher`` on ``units`` random units of ``store`` (the library call), and the same
    re-run with no tolerance beyond the codec's rounding."""
    from ..evaluate.check_teacher import check_teacher
    from ..evaluate.verify import VerifyConfig, run as verify

    facts = dict(model="resnet18", num_classes=NUM_CLASSES, input_size=224)
    res = verify(VerifyConfig(store=store, teacher=(teacher,), images=images, sample=units, device="cpu",
                              progress=False, **facts))
    exact = check_teacher(store, [teacher], images, sample=units, rtol=0.0, atol=0.0, **facts)
    tc = res.teacher_check
    return {"ok": res.ok, "store_ok": res.store_ok, "units": res.units, "checked_units": tc.checked_units,
            "samples_checked": tc.samples_checked, "hash_matches": tc.hash_matches, "teacher_ok": tc.ok,
            "max_excess": tc.max_excess, "tolerance": tc.tolerance,
            "exact": {"ok": exact.ok, "samples_checked": exact.samples_checked, "max_excess": exact.max_excess,
                      "mismatches": exact.mismatches, "tolerance": exact.tolerance}}


# --- the benchmark --------------------------------------------------------------------------------------
COLUMNS = [("phase", "phase", ""), ("system", "system", ""), ("loader", "loader", ""), ("workers", "j", "d"),
           ("keep", "keep", ".3g"), ("samples", "samples", "d"), ("wall_s", "wall s", ".1f"), ("model_s", "model s", ".1f"),
           ("outside_model_ms_per_sample", "outside ms/sample", ".2f"), ("setup_s", "setup s", ".2f"),
           ("loop_outside_ms_per_sample", "loop ms/sample", ".2f"), ("teardown_s", "teardown s", ".2f"),
           ("samples_per_s", "samples/s", ".2f"),
           ("bytes_written", "bytes", ",d"), ("peak_rss_mb", "peak RSS MB", ".0f")]


def run(config: Config) -> int:
    import torch

    args = common.resolved_args(config, QUICK)
    if args.val_images > args.classes:
        raise DDPipeError(f"val_images ({args.val_images}) must be <= classes ({args.classes}): one per class folder")
    out = common.table_stream(config.json)
    repo = find_repo(args.sre2l_repo)
    if repo is None:
        raise DDPipeError(f"no SRe2L checkout with {RELABEL_SCRIPT} at {args.sre2l_repo or os.environ.get(REPO_ENV) or DEFAULT_REPO}; "
                          f"pass --sre2l-repo or set ${REPO_ENV}")
    work = config.workdir or tempfile.mkdtemp(prefix="ddpipe-sre2l-compare-")
    os.makedirs(work, exist_ok=True)
    t_start, load_start = time.perf_counter(), os.getloadavg()
    try:
        src = os.path.join(work, "sre2l")
        sources = checkout_sources(repo, src)
        train_dir = os.path.join(work, "images")
        jpegs = make_jpegs(train_dir, args.classes, args.per_class, args.image_side, args.seed)
        data_root, val_dir = make_validation_root(os.path.join(work, "real"), args.val_images, args.image_side, args.seed + 1)
        teacher = os.path.join(work, "teacher.pt")
        make_teacher(teacher, args.seed)
        images = {"count": len(jpegs), "side": args.image_side, "format": "JPEG, Pillow defaults (quality 75)",
                  "mean_bytes": sum(map(os.path.getsize, jpegs)) / len(jpegs),
                  "content": "Fashion-MNIST garments upsampled, coloured per class, on textured backgrounds",
                  "val_images": args.val_images}
        print(f"sre2l-compare: {len(jpegs)} JPEGs of {args.image_side} px (mean {images['mean_bytes'] / 1e3:.1f} kB), "
              f"{args.epochs} epoch(s) of batch {args.batch_size}, {args.repeats} repeat(s), workdir {work}", file=sys.stderr)

        bench = Bench(args, work, src, train_dir, data_root, val_dir, teacher)
        relabel_cases, train_cases = cases(args.fast_loader, args.keep)
        runs: dict[Case, list] = {c: [] for c in relabel_cases + train_cases}
        for rep in range(args.repeats):
            rot = lambda xs: xs[rep % len(xs):] + xs[:rep % len(xs)]  # noqa: E731
            labels: dict[Case, str] = {}
            for case in rot(relabel_cases):
                name = f"r{rep}-{case.key}"
                dest = os.path.join(work, name + (".zarr" if case.system == "ddpipe" else ""))
                print(f"  {name}", file=sys.stderr)
                runs[case].append(bench.relabel(case, dest, name))
                labels[case] = dest
            # the labels each training reads: SRe2L's folder, ddpipe's store (torch loader), the pruned store
            source = {"sre2l": labels[Case("relabel", "sre2l", "torch", 0)],
                      "ddpipe": labels[Case("relabel", "ddpipe", "torch", 0)],
                      "pruned": labels[relabel_cases[-1]]}
            for case in rot(train_cases):
                name = f"r{rep}-{case.key}"
                dest = os.path.join(work, name)
                print(f"  {name}", file=sys.stderr)
                src_labels = source["pruned" if case.keep else case.system]
                runs[case].append(bench.train(case, src_labels, dest, name))
                shutil.rmtree(dest, ignore_errors=True)  # checkpoints: ~135 MB each
            last_store = source["ddpipe"]
            for case, path in labels.items():
                if rep + 1 < args.repeats or path != last_store:
                    shutil.rmtree(path, ignore_errors=True)
        fid = fidelity(last_store, train_dir, teacher, args.verify_units)
    finally:
        if not config.keep_files and config.workdir is None:
            shutil.rmtree(work, ignore_errors=True)

    rows = [summarise(c, runs[c]) for c in relabel_cases + train_cases]
    goals = targets(rows, args.fast_loader)
    print(common.format_table(rows, COLUMNS), file=out)
    print(f"fidelity: verify --teacher on {len(fid['checked_units'])} of {fid['units']} units "
          f"({fid['samples_checked']} samples): {'ok' if fid['ok'] else 'FAILED'}; with rtol = atol = 0: "
          f"{'ok' if fid['exact']['ok'] else 'differs'} (max excess {fid['exact']['max_excess']:.3g})", file=out)
    for key, g in goals.items():
        ratio = g.get("outside_ratio_0_workers")
        walls = ", ".join(f"j{w} {g[f'wall_ratio_{w}_workers']:.2f}" for w in WORKERS if f"wall_ratio_{w}_workers" in g)
        rss = ", ".join(f"j{w} {g[f'rss_ratio_{w}_workers']:.2f}" for w in WORKERS if f"rss_ratio_{w}_workers" in g)
        print(f"{key}: outside-model ddpipe/SRe2L (j0) {ratio:.2f} (target <= 0.33), wall {walls} (< 1), "
              f"peak RSS {rss} (<= 1)", file=out)
    payload = {
        "benchmark": "sre2l-compare",
        "config": config_to_dict(config),
        "settings": {k: getattr(args, k) for k in ("classes", "per_class", "val_images", "batch_size", "grad_accum", "epochs",
                                                   "repeats", "fast_loader", "keep", "image_side", "verify_units", "seed")},
        "machine": common.machine_info(),
        "load_average": {"start": load_start, "end": os.getloadavg()},  # 1, 5 and 15 minutes
        "torch": torch.__version__,
        "threads": "1 torch thread per process (OMP_NUM_THREADS=1); workers are extra processes (torch loader, "
                   "SRe2L) or threads (batched)",
        "sre2l": sources,
        "images": images,
        "rows": rows,
        "targets": goals,
        "fidelity": fid,
        "seconds": time.perf_counter() - t_start,
    }
    path = common.write_results("sre2l-compare", payload, config.results_dir)
    print(f"results: {path}", file=out)
    if config.json:
        print(json.dumps(payload, default=common.json_default))
    return 0 if fid["ok"] else 1
