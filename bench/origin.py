"""Each recover method against its origin code: their loss and update, unmodified, on identical inputs.

Run::

    ddpipe bench origin --method sre2l --repo /path/to/SRe2L    # a clone or a bare git dir
    ddpipe bench origin --json                                  # every adapter: sre2l, cda, sre2l.tiny, cda.tiny, cda.in21k

For one method the check builds one set of inputs and gives it to both sides:

* the teacher: a seeded CNN with BatchNorm (``--teacher tiny``: two conv + BN layers; ``resnet18``:
  torchvision's), its BN running statistics and affine parameters drawn from the seed too, so the
  statistic term is far from zero; classes, image side and normalisation are what their script fixes
  (ImageNet-1K: 1000 classes, 224 px; Tiny-ImageNet: 200, 64 px; ImageNet-21K: 10,450, 224 px in [0, 1]);
* the synthetic batch: ddpipe's engine draws the initial noise (its seeded batch generator), and
  their ``torch.randn(...)`` call returns exactly that tensor;
* the augmentation draw: ddpipe's crop box, flip and jitter offsets of every step are recorded
  (wrappers around ``ddpipe.synth.augment``'s ``crop_params`` / ``_randint``; the flip is read from
  a copy of the generator's state) and replayed into their code: torchvision's
  ``RandomResizedCrop.get_params`` returns the recorded box, ``RandomHorizontalFlip`` flips when the
  record says so, their ``random.randint`` returns the recorded offsets. What they *ask* for is
  recorded too (the crop scale range: CDA's curriculum; the jitter bounds) and compared;
* the hyperparameters: their published command line (``recover.sh``, ``recover_tiny.sh``; CDA's
  README) parsed by their own ``parse_args``, with ``--batch-size`` set to ``--batch-size`` here,
  against ddpipe's recipe for the same setting (``sre2l.in1k``, ``cda.in1k``, ``sre2l.tiny``,
  ``cda.tiny``, ``cda.in21k``) with the same batch size.

Then it runs their ``get_images`` (SRe2L ``recover/data_synthesis.py`` and
``*small_dataset/recover_tiny.py``; CDA ``recover_cda_in1k.py``, ``recover_cda_tiny.py``,
``recover_cda_in21k.py``) and ddpipe's :meth:`ddpipe.synth.engine.Engine.optimise` for ``--steps``
updates and compares the loss at step 0 (and at every step), the gradient on the images at step 0,
the teacher's input at step 0 (the augmented batch), and the images after every step.

A row *matches* when the hyperparameters, the crop scale ranges and the jitter bounds are equal,
the loss and the gradient at step 0 agree to ``REL_TOL`` (relative), and the images after step 1
differ by no more than Adam's first update allows for that gradient difference
(``lr * |dgrad| / eps``: the update is ``lr * g / (|g| + eps)``). After that, float-sized
differences can grow: Adam moves every pixel by about ``lr`` whatever the size of its gradient, so a
pixel whose gradient is near zero moves one way or the other on a rounding difference, and the
next forward pass carries it on (ResNet-18's max-pool and ReLUs more than the two-layer CNN). So the
images after N steps are reported against ``IMAGE_TOL`` (``images_within_tol``) and against a
*floor*: ddpipe run again with its step-0 image gradient moved by +-the measured gradient
difference, which shows how far a difference of that size alone carries the images.

Their files are imported from a copy of the checkout (``git archive`` of a bare directory's HEAD)
with ``sys.path`` pointing at their folder, and run as they are. Around them, never inside them:
``torch.Tensor.cuda``, ``torch.nn.Module.cuda`` and ``Tensor.to("cuda")`` stay on the CPU;
``torch.Tensor.backward`` records the value of the first loss it is called on; a stand-in ``wandb``
module (CDA imports it); and in their module's namespace ``torch``, ``random`` and ``transforms``
are proxies that differ from the real modules only in ``randn``, ``randint`` and the two random
transforms above. Their loop covers all 1000 classes for thousands of iterations; the replay stops
it when the recorded draws run out (the images then hold ``--steps`` updates).

A family is one :class:`Adapter` in :data:`ADAPTERS` (:func:`register_adapter`): the repository
and files, the command line, the ddpipe recipe, the hyperparameters to compare and a ``run``
function for their side. ``--ddpipe-override r_bn=0.02`` changes ddpipe's recipe only (a control:
the check must then report a difference). Writes ``bench/results/origin-<time>.json``.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import importlib.util
import io
import json
import math
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import types
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any, Callable

from . import common
from ddpipe.config import check_int, config_to_dict, option
from ddpipe.errors import DDPipeError

DESCRIPTION = ("each recover method vs its origin code (their loss and update, unmodified, CPU shims): loss, image "
               "gradient and images after a few steps on identical inputs")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
COLUMNS = [
    ("method", "method", ""),
    ("recipe", "ddpipe recipe", ""),
    ("steps", "steps", "d"),
    ("loss", "loss step 0", ".6f"),
    ("loss_abs_diff", "loss |diff|", ".2e"),
    ("grad_max_abs", "max |grad|", ".2e"),
    ("grad_max_abs_diff", "grad max |diff|", ".2e"),
    ("input_max_abs_diff", "teacher input max |diff|", ".2e"),
    ("step1_diff", "images after step 1 max |diff|", ".2e"),
    ("images_max_abs_diff", "images after N max |diff|", ".2e"),
    ("images_within_tol", "N within 1e-4", ""),
    ("images_floor", "floor", ".2e"),
    ("scale_max_abs_diff", "crop scale max |diff|", ".2e"),
    ("hparams", "hyperparameters", ""),
    ("match", "match", ""),
]
# float tolerance of a match: relative to the size of the compared value (float32 sums in another order)
REL_TOL = 1e-5
IMAGE_TOL = 1e-4


class _Stop(Exception):
    """Raised inside either side's loop once the compared number of steps has run."""


# --- what both sides get and give back --------------------------------------------------------------
@dataclass
class Case:
    """The identical inputs of one comparison."""

    teacher: Any  # nn.Module, never used directly: each side gets a deep copy
    init: Any  # the initial synthetic batch, normalised [B, C, H, W]
    labels: list[int]
    draws: list[dict]  # ddpipe's augmentation draw per step: crop (top, left, h, w), flip, jitter
    steps: int
    batch_size: int
    workdir: str
    antialias: str = "pinned"  # their RandomResizedCrop: "pinned" (antialias False, torchvision 0.14) | "installed"


@dataclass
class Side:
    """What one side computed: loss and image gradient at step 0, the teacher's input at step 0, the
    images after ``steps`` updates, and the per-step crop scale ranges and jitter bounds it asked for."""

    loss: float
    grad: Any
    teacher_input: Any
    images: Any
    losses: list[float] = field(default_factory=list)  # the loss at every step
    snapshots: list = field(default_factory=list)  # the images after 1, 2, ... steps
    scales: list[tuple[float, float]] = field(default_factory=list)
    jitter_bounds: list[tuple[int, int]] = field(default_factory=list)
    init: Any = None  # ddpipe's side: the initial batch it drew (the case's ``init``)
    hparams: dict = field(default_factory=dict)
    stdout: str = ""


@dataclass(frozen=True)
class Adapter:
    """One family's origin: where its code lives and how to run it on a :class:`Case`.

    Adding a family is one ``register_adapter(Adapter(...))``: its repository and the files that run,
    their published command line, the ddpipe recipe, the hyperparameter names on both sides and a
    ``run(adapter, case, folder) -> Side`` that calls their loss and update code on the case (with the
    shims of this module: :func:`their_module`, :func:`cpu_shims`, :func:`_replay_namespace`).
    """

    method: str  # ddpipe family name
    recipe: str  # the ddpipe recipe that claims to be this setting of theirs
    origin: str  # owner/name on GitHub
    script: str  # the file whose loss and update run, relative to the repository root
    files: tuple[str, ...]  # every file of theirs that runs (sha256 recorded)
    argv: tuple[str, ...]  # their published command line for that setting (without --batch-size)
    hparams: dict  # ddpipe config field (``r_bn`` = bn_stats' weight) -> their argparse name
    run: Callable[["Adapter", Case, str], Side]  # (adapter, case, folder of their files) -> their side
    deliberate: tuple[dict, ...] = ()  # differences ddpipe makes on purpose: {"what", "where"}
    default_repo: str = ""
    repo_env: str = ""
    # the geometry their file fixes (SRe2L's scripts: 1000 classes, 3 x 224 x 224, ImageNet normalisation)
    num_classes: int = 1000
    image_size: int = 224
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD


ADAPTERS: dict[str, Adapter] = {}


def register_adapter(adapter: Adapter) -> Adapter:
    """Add a family's adapter (one per ddpipe method family; a later registration replaces an earlier one)."""
    ADAPTERS[adapter.method] = adapter
    return adapter


def list_adapters() -> list[str]:
    return sorted(ADAPTERS)


# --- settings ----------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class Config:
    """``ddpipe bench origin``'s settings."""

    method: str = option("", help="what to check, comma-separated: a family (its ImageNet-1K recipe: sre2l, cda) or "
                                   "a recipe with an adapter (sre2l.tiny, cda.tiny, cda.in21k); default every registered adapter")
    repo: str | None = option(None, help="their repository: a clone or a bare git directory (default: the family's "
                                         "environment variable, e.g. $DDPIPE_SRE2L_REPO, else a local mirror)")
    steps: int = option(3, help="updates compared (default 3): images after this many steps")
    batch_size: int = option(10, help="synthetic images per batch on both sides (default 10: classes 0-9)")
    teacher: str = option("tiny", choices=("tiny", "resnet18"),
                          help="the shared teacher: tiny (two conv+BN layers, default) or resnet18 (torchvision's)")
    seed: int = option(0, help="seed of the teacher's weights and BN statistics and of ddpipe's draws (default 0)")
    torchvision: str = option("pinned", choices=("pinned", "installed"),
                              help="their RandomResizedCrop as under the torchvision their README pins (0.14.1: "
                                   "tensors resized without antialias; default) or the installed one's default "
                                   "(antialias since 0.17)")
    floor: bool = option(True, help="no floor run (ddpipe alone, its step-0 image gradient moved by +-the measured "
                                    "gradient difference: how far float noise alone carries the images after N steps)")
    ddpipe_override: str = option("", help="NAME=VALUE,... applied to ddpipe's recipe only (r_bn sets bn_stats' "
                                           "weight; any other RecoverConfig field): a control the check must catch")
    results_dir: str | None = option(None, help="where the results JSON goes (default bench/results under the current directory)")
    json: bool = option(False, help="print the result as one JSON object on stdout", cli=False)

    def __post_init__(self) -> None:
        check_int(DDPipeError, "steps", self.steps, min=1)
        check_int(DDPipeError, "batch_size", self.batch_size, min=1, max=1000)
        check_int(DDPipeError, "seed", self.seed, min=0)
        unknown = sorted(set(common.csv_list(self.method)) - set(ADAPTERS))
        if unknown:
            raise DDPipeError(f"no origin adapter for {unknown}; adapters: {', '.join(list_adapters())}")


# --- their checkout ------------------------------------------------------------------------------------
def _is_bare(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "HEAD")) and os.path.isdir(os.path.join(path, "objects"))


def find_checkout(adapter: Adapter, path: str | None = None) -> tuple[str | None, str]:
    """``(repo, "")`` when ``path`` (else ``$<repo_env>``, else the default mirror) holds the adapter's
    files (a work tree, or a bare git directory with them at HEAD); else ``(None, reason)``."""
    cand = path or (os.environ.get(adapter.repo_env) if adapter.repo_env else None) or adapter.default_repo
    if not cand:
        return None, f"no checkout of {adapter.origin} given (--repo)"
    if not os.path.isdir(cand):
        return None, f"{cand} is not a directory (a checkout of {adapter.origin} is needed; --repo)"
    if all(os.path.isfile(os.path.join(cand, f)) for f in adapter.files):
        return cand, ""
    if _is_bare(cand) and shutil.which("git"):
        missing = [f for f in adapter.files if subprocess.run(["git", "--git-dir", cand, "cat-file", "-e", f"HEAD:{f}"],
                                                               capture_output=True).returncode != 0]
        if not missing:
            return cand, ""
        return None, f"{cand} is a git directory without {', '.join(missing)} at HEAD (not a {adapter.origin} tree)"
    return None, f"{cand} has no {adapter.script} (not a {adapter.origin} tree)"


def materialise(adapter: Adapter, repo: str, dest: str) -> dict:
    """Copy the adapter's files under ``dest`` (from a work tree, or ``git archive`` of HEAD); return the
    repository, its commit and each file's sha256."""
    if all(os.path.isfile(os.path.join(repo, f)) for f in adapter.files):
        for rel in adapter.files:
            os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
            shutil.copyfile(os.path.join(repo, rel), os.path.join(dest, rel))
        r = subprocess.run(["git", "-C", repo, "rev-parse", "HEAD"], capture_output=True, text=True)
        commit = (r.stdout.strip() or None) if r.returncode == 0 else None
    else:
        data = subprocess.run(["git", "--git-dir", repo, "archive", "--format=tar", "HEAD", *adapter.files],
                              capture_output=True, check=True).stdout
        with tarfile.open(fileobj=BytesIO(data)) as tf:
            tf.extractall(dest, filter="data")
        commit = subprocess.run(["git", "--git-dir", repo, "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
    sha = {rel: hashlib.sha256(open(os.path.join(dest, rel), "rb").read()).hexdigest() for rel in adapter.files}
    return {"repo": os.path.abspath(repo), "commit": commit, "sha256": sha}


# --- the shared teacher ----------------------------------------------------------------------------------
def make_teacher(arch: str, seed: int, num_classes: int = 1000):
    """A seeded teacher (``tiny``: the two-conv BN CNN of ``sre2l-roundtrip``; ``resnet18``) in eval mode,
    its BN running statistics and affine parameters redrawn from ``seed`` so every BN term is non-trivial."""
    import torch
    from torch import nn

    from .sre2l_roundtrip import ARCHES

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ARCHES[arch](num_classes)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(0.5 * torch.randn(n, generator=gen))
                m.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=gen))
                m.weight.copy_(0.5 + torch.rand(n, generator=gen))
                m.bias.copy_(0.1 * torch.randn(n, generator=gen))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


# --- ddpipe's side ---------------------------------------------------------------------------------------
def apply_override(cfg, text: str):
    """``cfg`` with ``NAME=VALUE,...`` applied (``r_bn`` -> the ``bn_stats`` weight; values typed like the field)."""
    if not text:
        return cfg
    changes: dict[str, Any] = {}
    loss = dict(cfg.loss)
    for item in common.csv_list(text):
        name, sep, value = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep:
            raise DDPipeError(f"--ddpipe-override takes NAME=VALUE items, got {item!r}")
        if name == "r_bn":
            loss["bn_stats"] = float(value)
            continue
        if name not in {f.name for f in dataclasses.fields(cfg)}:
            raise DDPipeError(f"--ddpipe-override: {cfg.recipe} has no field {name!r}")
        current = getattr(cfg, name)
        if isinstance(current, bool):
            changes[name] = value.strip().lower() in ("1", "true", "yes")
        elif isinstance(current, (int, float)) and not isinstance(current, bool):
            changes[name] = type(current)(float(value)) if isinstance(current, float) else int(value)
        else:
            changes[name] = value
    return dataclasses.replace(cfg, loss=loss, **changes)


def _keep_first(store: dict, key: str, t) -> None:
    """A hook's body: keep a copy of the first tensor seen under ``key``; return None (hooks that
    return a value replace the input or gradient)."""
    if key not in store:
        store[key] = t.detach().clone()


def _peek_flip(gen) -> bool:
    """The flip decision ddpipe's augmentation will take next: its next ``torch.rand`` from a copy of ``gen``."""
    import torch

    g = torch.Generator()
    g.set_state(gen.get_state())
    return torch.rand((), generator=g).item() < 0.5


@contextlib.contextmanager
def _recording_draws(draws: list):
    """Record every augmentation draw ddpipe's engine makes (crop box and scale, flip, jitter offsets and bounds)."""
    from ..synth import augment, engine

    plain_aug, plain_crop, plain_randint = engine.sre2l_augment, augment.crop_params, augment._randint
    inside = {"crop": False}

    def aug(x, gen, **kw):
        draws.append({"crop": None, "scale": None, "flip": False, "jitter": [], "jitter_bounds": []})
        if kw.get("flip", True) and not kw.get("random_crop", True):
            draws[-1]["flip"] = _peek_flip(gen)
        draws[-1]["flip_enabled"] = bool(kw.get("flip", True))
        return plain_aug(x, gen, **kw)

    def crop(gen, height, width, scale, *a, **k):
        inside["crop"] = True
        try:
            box = plain_crop(gen, height, width, scale, *a, **k)
        finally:
            inside["crop"] = False
        d = draws[-1]
        d["crop"], d["scale"] = tuple(int(v) for v in box), (float(scale[0]), float(scale[1]))
        d["flip"] = d.get("flip_enabled", True) and _peek_flip(gen)
        return box

    def randint(gen, lo, hi):
        v = plain_randint(gen, lo, hi)
        if not inside["crop"] and draws:
            draws[-1]["jitter"].append(int(v))
            draws[-1]["jitter_bounds"].append((int(lo), int(hi)))
        return v

    engine.sre2l_augment, augment.crop_params, augment._randint = aug, crop, randint
    try:
        yield draws
    finally:
        engine.sre2l_augment, augment.crop_params, augment._randint = plain_aug, plain_crop, plain_randint


def run_ddpipe(cfg, teacher, steps: int, adapter: Adapter, grad_noise: float = 0.0) -> tuple[Side, list[dict], list[int]]:
    """ddpipe's engine on its first batch for ``steps`` updates: (its side, the draws it made, the labels).

    ``grad_noise`` > 0 adds ``+-grad_noise`` (a seeded random sign per pixel) to the image gradient of
    step 0 only: the floor run, showing how far a float-sized gradient difference alone carries the
    images after ``steps`` updates."""
    import torch

    from ..synth.engine import Engine

    engine = Engine(cfg, teachers=[copy.deepcopy(teacher)], num_classes=adapter.num_classes, ipc=1,
                    mean=adapter.mean, std=adapter.std, input_size=adapter.image_size, in_chans=len(adapter.mean))
    engine.prepare()
    batch = engine.batches()[0]
    got: dict[str, Any] = {}
    plain_init, plain_loss = engine.init_images, engine._loss

    def init_images(b, gen):
        x = plain_init(b, gen)
        got["init"] = x.detach().clone()
        return x

    def loss(step, ti, recorders):
        if "x" not in got:  # the leaf being optimised (no DELT rounds: x_syn is x itself)
            got["x"], got["input"] = step.x_syn, step.x.detach().clone()
            step.x_syn.register_hook(lambda g: _keep_first(got, "grad", g))
            if grad_noise:
                def perturb(g):
                    if got.get("perturbed"):
                        return None
                    got["perturbed"] = True
                    sign = torch.randint(0, 2, g.shape, generator=torch.Generator().manual_seed(12345)) * 2 - 1
                    return g + grad_noise * sign.to(g.dtype)

                step.x_syn.register_hook(perturb)
        return plain_loss(step, ti, recorders)

    history: list[dict] = []

    def on_step(values: dict) -> None:
        history.append(values)
        got.setdefault("snapshots", []).append(got["x"].detach().clone())
        if len(history) == steps:
            got["images"] = got["x"].detach().clone()
            raise _Stop

    engine.init_images, engine._loss = init_images, loss
    draws: list[dict] = []
    with _recording_draws(draws):
        try:
            engine.optimise(batch, 0, on_step)
        except _Stop:
            pass
    if "images" not in got:
        raise DDPipeError(f"{cfg.recipe} ran fewer than {steps} iterations")
    side = Side(loss=float(history[0]["total"]), grad=got["grad"], teacher_input=got["input"], images=got["images"],
                losses=[float(h["total"]) for h in history], snapshots=got["snapshots"],
                scales=[d["scale"] for d in draws], jitter_bounds=[tuple(b) for d in draws for b in d["jitter_bounds"]],
                init=got["init"])
    return side, draws[:steps], list(batch.classes)


# --- their side: shims around their files -------------------------------------------------------------
class _Proxy(types.ModuleType):
    """A module that is ``real`` except for the attributes given."""

    def __init__(self, real, **override):
        super().__init__(real.__name__)
        self._real = real
        self.__dict__.update(override)

    def __getattr__(self, name):
        return getattr(self._real, name)


@contextlib.contextmanager
def cpu_shims(record: dict):
    """``.cuda()`` / ``.to("cuda")`` stay on the CPU; ``Tensor.backward`` records the first loss value in
    ``record["loss"]``. Everything is restored on exit."""
    import torch

    plain = (torch.Tensor.cuda, torch.nn.Module.cuda, torch.Tensor.to, torch.Tensor.backward)
    plain_to, plain_backward = plain[2], plain[3]

    def is_cuda(d) -> bool:
        return (isinstance(d, str) and d.startswith("cuda")) or (isinstance(d, torch.device) and d.type == "cuda")

    def to(self, *args, **kwargs):
        if args and is_cuda(args[0]):
            args = args[1:]
        if is_cuda(kwargs.get("device")):
            kwargs.pop("device")
        return plain_to(self, *args, **kwargs) if args or kwargs else self

    def backward(self, *args, **kwargs):
        record.setdefault("losses", []).append(float(self.detach()))
        return plain_backward(self, *args, **kwargs)

    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.nn.Module.cuda = lambda self, *a, **k: self
    torch.Tensor.to = to
    torch.Tensor.backward = backward
    try:
        yield
    finally:
        torch.Tensor.cuda, torch.nn.Module.cuda, torch.Tensor.to, torch.Tensor.backward = plain


@contextlib.contextmanager
def their_module(path: str, name: str, local: tuple[str, ...] = ("utils",)):
    """Import their file ``path`` as a fresh module, its folder first on ``sys.path`` (as ``python file.py``
    does) and a stand-in ``wandb``; ``sys.modules`` entries of their ``local`` imports and ``wandb`` are
    put back afterwards."""
    folder = os.path.dirname(os.path.abspath(path))
    keys = (*local, "wandb")
    saved = {k: sys.modules.pop(k, None) for k in keys}
    wandb = types.ModuleType("wandb")
    wandb.login = wandb.init = wandb.log = wandb.finish = lambda *a, **k: None
    wandb.api = types.SimpleNamespace(api_key="")
    sys.modules["wandb"] = wandb
    sys.path.insert(0, folder)
    try:
        spec = importlib.util.spec_from_file_location(f"_ddpipe_origin_{name}", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.path.remove(folder)
        for k in keys:
            sys.modules.pop(k, None)
            if saved[k] is not None:
                sys.modules[k] = saved[k]


def _replay_namespace(mod, case: Case, got: dict) -> None:
    """Point ``torch``, ``random`` and ``transforms`` of their module at proxies that return the case's
    initial batch and replay its draws, recording what their code asks for."""
    import random as random_mod

    import torch
    from torchvision import transforms
    from torchvision.transforms import functional as TF

    state = {"step": -1, "jitter": 0}
    got.update(scales=[], jitter_bounds=[])

    def randn(*size, requires_grad=False, device=None, dtype=None, **kw):
        shape = tuple(size[0]) if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)) else tuple(size)
        if "inputs" in got:
            raise DDPipeError("their code drew a second synthetic batch before the compared steps ended")
        if shape != tuple(case.init.shape):
            raise DDPipeError(f"their synthetic batch has shape {shape}, the case's {tuple(case.init.shape)}")
        x = case.init.clone().to(dtype or torch.float32).requires_grad_(requires_grad)
        x.register_hook(lambda g: _keep_first(got, "grad", g))
        got["inputs"] = x
        return x

    class ReplayCrop(transforms.RandomResizedCrop):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            if case.antialias == "pinned":  # torchvision 0.14.1 (CDA/README.md): tensors resized without antialias
                self.antialias = False

        def get_params(self, img, scale, ratio):  # noqa: D102 - called as self.get_params(img, scale, ratio)
            state["step"] += 1
            if state["step"] >= 1:  # their images after state["step"] updates
                got.setdefault("snapshots", []).append(got["inputs"].detach().clone())
            state["jitter"] = 0
            if state["step"] >= len(case.draws):
                raise _Stop
            got["scales"].append((float(scale[0]), float(scale[1])))
            return case.draws[state["step"]]["crop"]

    class ReplayFlip(transforms.RandomHorizontalFlip):
        def forward(self, img):
            return TF.hflip(img) if case.draws[state["step"]]["flip"] else img

    def randint(a, b):
        got["jitter_bounds"].append((int(a), int(b)))
        d = case.draws[state["step"]]["jitter"]
        v = d[state["jitter"]]
        state["jitter"] += 1
        return v

    mod.torch = _Proxy(torch, randn=randn)
    mod.random = _Proxy(random_mod, randint=randint)
    mod.transforms = _Proxy(transforms, RandomResizedCrop=ReplayCrop, RandomHorizontalFlip=ReplayFlip)


def run_get_images(adapter: Adapter, case: Case, src: str) -> Side:
    """SRe2L-style scripts (SRe2L, CDA): their ``parse_args`` on the published command line, then their
    ``get_images(args, teacher, None, 0)`` on a deep copy of the teacher wrapped as their ``main_syn``
    does (``nn.DataParallel``, eval, frozen), stopped when the recorded draws run out."""
    from torch import nn

    got: dict[str, Any] = {}
    record: dict[str, Any] = {}
    teacher = nn.DataParallel(copy.deepcopy(case.teacher))
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad = False
    teacher.register_forward_pre_hook(lambda m, inp: _keep_first(got, "input", inp[0]))
    argv = [adapter.script, *adapter.argv, "--batch-size", str(case.batch_size),
            "--syn-data-path", os.path.join(case.workdir, f"{adapter.method}_syn")]
    saved_argv = sys.argv
    printed = io.StringIO()
    with (their_module(os.path.join(src, adapter.script), adapter.method) as mod, cpu_shims(record),
          contextlib.redirect_stdout(printed)):
        _replay_namespace(mod, case, got)
        sys.argv = argv
        try:
            args = mod.parse_args()
        finally:
            sys.argv = saved_argv
        try:
            mod.get_images(args, teacher, None, 0)
        except _Stop:
            pass
    if "inputs" not in got or not record.get("losses"):
        raise DDPipeError(f"their {adapter.script} did not reach the compared steps")
    if len(got["scales"]) < case.steps:
        raise DDPipeError(f"their {adapter.script} stopped after {len(got['scales'])} of {case.steps} steps")
    return Side(loss=record["losses"][0], grad=got["grad"], teacher_input=got["input"],
                images=got["inputs"].detach().clone(), losses=record["losses"], snapshots=got["snapshots"],
                scales=got["scales"], jitter_bounds=got["jitter_bounds"], hparams=dict(vars(args)),
                stdout=printed.getvalue())


# --- the families ------------------------------------------------------------------------------------------
SRE2L_REPO = "/work/.mirror/VILA-Lab+SRe2L/repo"
SRE2L_ENV = "DDPIPE_SRE2L_REPO"
_RNG_NOTE = {
    "what": "random stream: ddpipe draws the initial noise, crop box, flip and jitter from one seeded torch.Generator "
            "per batch; theirs come from the global torch RNG (noise, RandomResizedCrop, RandomHorizontalFlip) and "
            "Python's random (jitter)",
    "where": "synth/engine.py Engine.batch_generator, synth/augment.py",
    "size": "same distributions, different numbers; here ddpipe's draws are replayed into their code, so it does "
            "not enter the diffs",
}
_BATCH_NOTE = {
    "what": "batch size: this check uses --batch-size images (classes 0..B-1) on both sides instead of their 100",
    "where": "bench/origin.py (a setting of the check, not of ddpipe)",
    "size": "none: both sides get the same B",
}

register_adapter(Adapter(
    method="sre2l", recipe="sre2l.in1k", origin="VILA-Lab/SRe2L", script="SRe2L/recover/data_synthesis.py",
    files=("SRe2L/recover/data_synthesis.py", "SRe2L/recover/utils.py"),
    # SRe2L/recover/recover.sh
    argv=("--arch-name", "resnet18", "--exp-name", "ddpipe_origin", "--lr", "0.25", "--iteration", "4000",
          "--l2-scale", "0", "--tv-l2", "0", "--r-bn", "0.01"),
    hparams={"lr": "lr", "iterations": "iteration", "jitter": "jitter", "r_bn": "r_bn",
             "first_bn_multiplier": "first_bn_multiplier"},
    run=run_get_images,
    deliberate=(_RNG_NOTE, _BATCH_NOTE, {
        "what": "tv_l2 and l2_scale terms are not implemented (0 in recover.sh and every released script)",
        "where": "synth/sre2l.py",
        "size": "none at the published settings: their terms are multiplied by 0",
    }),
    default_repo=SRE2L_REPO, repo_env=SRE2L_ENV,
))

register_adapter(Adapter(
    method="cda", recipe="cda.in1k", origin="VILA-Lab/SRe2L", script="CDA/recover_cda_in1k.py",
    files=("CDA/recover_cda_in1k.py", "CDA/utils.py"),
    # CDA/README.md, ImageNet-1K
    argv=("--arch-name", "resnet18", "--exp-name", "ddpipe_origin", "--lr", "0.25", "--r-bn", "0.01",
          "--iteration", "4000", "--easy2hard-mode", "cosine", "--milestone", "1"),
    hparams={"lr": "lr", "iterations": "iteration", "jitter": "jitter", "r_bn": "r_bn",
             "first_bn_multiplier": "first_bn_multiplier", "milestone": "milestone"},
    run=run_get_images,
    deliberate=(_RNG_NOTE, _BATCH_NOTE),
    default_repo=SRE2L_REPO, repo_env=SRE2L_ENV,
))


register_adapter(Adapter(
    method="cda.in21k", recipe="cda.in21k", origin="VILA-Lab/SRe2L", script="CDA/recover_cda_in21k.py",
    files=("CDA/recover_cda_in21k.py", "CDA/utils.py"),
    # CDA/README.md, ImageNet-21K (10,450 classes, images in [0, 1] without normalisation)
    argv=("--arch-name", "resnet18", "--exp-name", "ddpipe_origin", "--lr", "0.05", "--r-bn", "0.25",
          "--iteration", "2000", "--easy2hard-mode", "cosine", "--milestone", "1"),
    hparams={"lr": "lr", "iterations": "iteration", "jitter": "jitter", "r_bn": "r_bn",
             "first_bn_multiplier": "first_bn_multiplier", "milestone": "milestone"},
    run=run_get_images,
    deliberate=(_RNG_NOTE, _BATCH_NOTE),
    default_repo=SRE2L_REPO, repo_env=SRE2L_ENV, num_classes=10450, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
))

TINY_MEAN = (0.4802, 0.4481, 0.3975)  # their utils' clip_tiny / tiny_clip
TINY_STD = (0.2302, 0.2265, 0.2262)

register_adapter(Adapter(
    method="sre2l.tiny", recipe="sre2l.tiny", origin="VILA-Lab/SRe2L", script="SRe2L/*small_dataset/recover_tiny.py",
    files=("SRe2L/*small_dataset/recover_tiny.py", "SRe2L/*small_dataset/utils.py"),
    # SRe2L/*small_dataset/recover_tiny.sh
    argv=("--arch-name", "resnet18", "--exp-name", "ddpipe_origin", "--lr", "0.1", "--r-bn", "1", "--iteration", "4000"),
    hparams={"lr": "lr", "iterations": "iteration", "jitter": "jitter", "r_bn": "r_bn",
             "first_bn_multiplier": "first_bn_multiplier"},
    run=run_get_images,
    deliberate=(_RNG_NOTE, _BATCH_NOTE),
    default_repo=SRE2L_REPO, repo_env=SRE2L_ENV, num_classes=200, image_size=64, mean=TINY_MEAN, std=TINY_STD,
))

register_adapter(Adapter(
    method="cda.tiny", recipe="cda.tiny", origin="VILA-Lab/SRe2L", script="CDA/recover_cda_tiny.py",
    files=("CDA/recover_cda_tiny.py", "CDA/utils.py"),
    # CDA/README.md, Tiny-ImageNet
    argv=("--arch-name", "resnet18", "--exp-name", "ddpipe_origin", "--lr", "0.4", "--r-bn", "0.05",
          "--iteration", "4000", "--easy2hard-mode", "cosine", "--milestone", "1"),
    hparams={"lr": "lr", "iterations": "iteration", "jitter": "jitter", "r_bn": "r_bn",
             "first_bn_multiplier": "first_bn_multiplier", "milestone": "milestone"},
    run=run_get_images,
    deliberate=(_RNG_NOTE, _BATCH_NOTE),
    default_repo=SRE2L_REPO, repo_env=SRE2L_ENV, num_classes=200, image_size=64, mean=TINY_MEAN, std=TINY_STD,
))


# --- one comparison -------------------------------------------------------------------------------------------
def _max_abs(a, b) -> float:
    if a.shape != b.shape:
        return math.inf
    return float((a.float() - b.float()).abs().max())


def antialias_gap(case: Case) -> float:
    """Max |difference| between torchvision's tensor resize with and without antialias on the case's crops
    (ddpipe's ``F.interpolate`` equals the latter bit for bit): what the installed torchvision's default
    would change in the batch the teacher sees."""
    from torchvision.transforms import functional as TF

    side = case.init.shape[-1]
    gap = 0.0
    for d in case.draws:
        top, left, h, w = d["crop"]
        a = TF.resized_crop(case.init, top, left, h, w, [side, side], antialias=True)
        b = TF.resized_crop(case.init, top, left, h, w, [side, side], antialias=False)
        gap = max(gap, float((a - b).abs().max()))
    return gap


def compare_hparams(adapter: Adapter, cfg, theirs: dict) -> list[dict]:
    """Mismatches between ddpipe's config and their parsed arguments over the adapter's mapping."""
    out = []
    for ours, their_name in adapter.hparams.items():
        mine = cfg.loss.get("bn_stats") if ours == "r_bn" else getattr(cfg, ours)
        other = theirs.get(their_name)
        if other is None or not math.isclose(float(mine), float(other), rel_tol=1e-12, abs_tol=0.0):
            out.append({"ddpipe": ours, "value": mine, "theirs": their_name, "their_value": other})
    return out


def check_method(adapter: Adapter, repo: str, config: Config, workdir: str) -> dict:
    """Run both sides on one case; the row (see the module docstring) plus details."""
    from ..synth import create_method

    sources = materialise(adapter, repo, os.path.join(workdir, "src"))
    cfg = apply_override(create_method(adapter.recipe, batch_size=config.batch_size), config.ddpipe_override)
    teacher = make_teacher(config.teacher, config.seed, adapter.num_classes)
    t0 = time.perf_counter()
    ours, draws, labels = run_ddpipe(cfg, teacher, config.steps, adapter)
    ours_s = time.perf_counter() - t0
    case = Case(teacher=teacher, init=ours.init, labels=labels, draws=draws, steps=config.steps,
                batch_size=config.batch_size, workdir=workdir, antialias=config.torchvision)
    t0 = time.perf_counter()
    theirs = adapter.run(adapter, case, os.path.join(workdir, "src"))
    theirs_s = time.perf_counter() - t0
    hp = compare_hparams(adapter, cfg, theirs.hparams)
    gap = antialias_gap(case)
    grad_diff = _max_abs(ours.grad, theirs.grad)
    floor = None
    if config.floor and grad_diff > 0:
        noisy, _, _ = run_ddpipe(cfg, teacher, config.steps, adapter, grad_noise=grad_diff)
        floor = _max_abs(ours.images, noisy.images)
    scale_diff = (max(abs(a - b) for s, t in zip(ours.scales, theirs.scales) for a, b in zip(s, t))
                  if len(theirs.scales) >= config.steps else math.inf)
    jitter_same = ours.jitter_bounds == theirs.jitter_bounds[:len(ours.jitter_bounds)]
    per_step = [_max_abs(a, b) for a, b in zip(ours.snapshots, theirs.snapshots)]
    # Adam's first update is lr * g / (|g| + eps): a gradient difference d moves a pixel by at most lr * d / eps
    # (clamping cannot widen it); float rounding of the update itself adds well under 1e-6
    step1_bound = float(cfg.lr) * grad_diff / float(cfg.eps) + 1e-6 if cfg.optimizer == "adam" else IMAGE_TOL
    row = {
        "method": adapter.method,
        "recipe": cfg.recipe,
        "repo": sources["repo"],
        "commit": sources["commit"],
        "script": adapter.script,
        "steps": config.steps,
        "loss": ours.loss,
        "their_loss": theirs.loss,
        "loss_abs_diff": abs(ours.loss - theirs.loss),
        "grad_max_abs": float(theirs.grad.abs().max()),
        "grad_max_abs_diff": grad_diff,
        "input_max_abs_diff": _max_abs(ours.teacher_input, theirs.teacher_input),
        "images_max_abs_diff": _max_abs(ours.images, theirs.images),
        "images_max_abs_diff_per_step": per_step,
        "step1_diff": per_step[0] if per_step else None,
        "step1_bound": step1_bound,
        "images_floor": floor,
        "losses": ours.losses,
        "their_losses": theirs.losses[:len(ours.losses)],
        "loss_max_abs_diff_all_steps": max(abs(a - b) for a, b in zip(ours.losses, theirs.losses)),
        "images_differing": int(((ours.images - theirs.images).abs() > IMAGE_TOL).sum())
        if ours.images.shape == theirs.images.shape else None,
        "scale_max_abs_diff": scale_diff,
        "jitter_bounds_equal": jitter_same,
        "hparam_mismatches": hp,
        "hparams": "equal" if not hp else "DIFFER: " + ", ".join(f"{m['ddpipe']} {m['value']} vs {m['their_value']}"
                                                                 for m in hp),
        "deliberate": [dict(d) for d in adapter.deliberate] + [{
            "what": "resize of the crop: bilinear without antialias (F.interpolate), as torchvision 0.14.1 (pinned in "
                    "CDA/README.md) resized tensors; torchvision >= 0.17 antialiases by default",
            "where": "synth/augment.py sre2l_augment",
            "size": f"{gap:.2e} max |diff| of the augmented batch on these draws under the installed torchvision's "
                    f"default (0 with antialias off); compared here with their crop "
                    f"{'pinned to antialias off' if config.torchvision == 'pinned' else 'as installed'}",
            "measured": gap,
        }],
        "ddpipe_override": config.ddpipe_override or None,
        "seconds": {"ddpipe": round(ours_s, 3), "theirs": round(theirs_s, 3)},
        "sha256": sources["sha256"],
        "draws": draws,
        "their_stdout": theirs.stdout,
    }
    row["images_within_tol"] = row["images_max_abs_diff"] <= IMAGE_TOL
    row["match"] = bool(
        not hp and jitter_same and scale_diff <= 1e-9
        and row["loss_abs_diff"] <= REL_TOL * max(1.0, abs(theirs.loss))
        and grad_diff <= REL_TOL * max(row["grad_max_abs"], 1e-12)
        and len(per_step) == config.steps and per_step[0] <= step1_bound
    )
    return row


def run(config: Config) -> int:
    import torch

    out = common.table_stream(config.json)
    rows: list[dict] = []
    skipped: list[dict] = []
    t_start = time.perf_counter()
    for name in common.csv_list(config.method) or list(ADAPTERS):
        adapter = ADAPTERS[name]
        repo, reason = find_checkout(adapter, config.repo)
        if repo is None:
            skipped.append({"method": name, "reason": reason})
            print(f"origin {name}: skipped: {reason}", file=out)
            continue
        work = tempfile.mkdtemp(prefix=f"ddpipe-origin-{name}-")
        try:
            with torch.random.fork_rng(devices=[]):
                rows.append(check_method(adapter, repo, config, work))
        finally:
            shutil.rmtree(work, ignore_errors=True)
    payload = {
        "benchmark": "origin",
        "config": config_to_dict(config),
        "machine": common.machine_info(),
        "torch": torch.__version__,
        "rows": rows,
        "skipped": skipped,
        "ok": bool(rows) and all(r["match"] for r in rows),
        "seconds": time.perf_counter() - t_start,
    }
    if rows:
        print(common.format_table(rows, COLUMNS), file=out)
        for r in rows:
            for d in r["deliberate"]:
                print(f"  {r['method']} deliberate: {d['what']} ({d['where']}): {d['size']}", file=out)
        path = common.write_results("origin", payload, config.results_dir)
        print(f"results: {path}", file=out)
    if config.json:
        print(json.dumps(payload, default=common.json_default))
    if not rows:
        return 0  # every method skipped, each with its reason
    return 0 if payload["ok"] else 1
