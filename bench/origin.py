"""Each recover method against its origin code: their loss and update, unmodified, on identical inputs.

Run::

    ddpipe bench origin --method sre2l --repo /path/to/SRe2L    # a clone or a bare git dir
    ddpipe bench origin --method lpld,gvbsm,delt --repos lpld=/src/LPLD,gvbsm=/src/G_VBSM,delt=/src/DELT
    ddpipe bench origin --json      # every adapter: sre2l, cda, sre2l.tiny, cda.tiny, cda.in21k,
                                    # lpld, lpld.tiny, gvbsm, delt, delt.rounds, rded

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

The other families, each with what its code needs from the case:

* LPLD (he-y/soft-label-pruning-for-dataset-distillation ``recover/data_synthesis_class.py``,
  ``data_synthesis_tiny_class.py``): one class per batch (``--batch-size`` = ``--ipc`` = B images of
  class 0); the teacher's BN layers become LPLD's class-aware ones (``class_running_mean`` /
  ``class_running_var`` buffers drawn from the seed, called with ``(x, labels)`` as their blocks do:
  :func:`class_bn_teacher`). The ImageNet script parses its command line inside ``main_syn``; a parser
  that stops right after ``parse_args`` returns it (:func:`their_args`).
* G-VBSM (shaoshitong/G_VBSM_Dataset_Condensation ``Branch_full_ImageNet_1k/recover/...``): their
  ``main_worker`` as the one process of their ``mp.spawn`` (a gloo group of one), two seeded teachers
  round-robin, B / 2 classes of 2 images; their convolution statistics computed by their
  ``ConvFeatureHook`` over the case's seeded real images (:func:`their_conv_stats`) and loaded by
  ``main_worker`` from ``--statistic-path``; these targets are compared with ddpipe's
  (``stats_max_abs_diff``), and what their loader's crop + flip would change is measured.
* DELT (VILA-Lab/DELT ``recover/recover.py``): their ``get_images`` on ddpipe's medium-ranked real
  images, B / 2 classes of 2, with the early-late rounds (``delt``: ITR 4000, ROUND_ITR 500; ``delt.rounds``:
  ITR 4, ROUND_ITR 2, so the compared steps cross a round); the ranking itself is compared by running
  their ``data_selection.py`` (``rank``, ``store_medium``) on the same images and teacher
  (``selection_equal``).

* RDED (LINs-lab/RDED ``synthesize/main.py`` ``init_images``, ``synthesize/utils.py``): nothing is optimised,
  so a :class:`PatchAdapter` brings its own check (:func:`check_rded`). ddpipe's ``rded_class`` builds
  ``--batch-size`` (= ipc) images for each of 4 classes from ``ipc * 4 + 20`` seeded real images per class; their
  ``init_images`` gets the same images as a PNG class folder, ddpipe's candidate order through their
  ``random.shuffle`` and ddpipe's crop boxes through ``RandomResizedCrop.get_params``; their ``cross_entropy``,
  ``selector``, ``mix_images`` and ``save_images`` are wrapped in their namespace to record the score of every
  candidate patch, the kept patches and the stitched images (``loss_abs_diff`` is the scores' max difference).
  Their ``argument.py`` parses the published command line (in the work folder: it makes ``./exp``), and
  ``--factor``, ``--num-crop``, ``--mipc``, the input size and the crop scale and ratio they ask for are compared.

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
``torch.Tensor.cuda``, ``torch.nn.Module.cuda`` and ``Tensor.to("cuda")`` stay on the CPU (G-VBSM:
``torch.cuda.set_device`` a no-op; torchvision's model registry restored after LPLD's model file registers);
``torch.Tensor.backward`` records the value of the first loss it is called on; a stand-in ``wandb``
module (CDA imports it); and in their module's namespace ``torch``, ``random`` and ``transforms``
are proxies that differ from the real modules only in ``randn``, ``randint`` (a one-value range such as
DELT's ``randint(0, 0)`` is no draw) and the two random transforms above. Their loop covers all 1000 classes for thousands of iterations; the replay stops
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
    ("stats_max_abs_diff", "statistics max |diff|", ".2e"),
    ("selection_equal", "selection equal", ""),
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
    teachers: list = field(default_factory=list)  # every teacher (the first is ``teacher``); G-VBSM uses several
    real: Any = None  # ddpipe.synth.engine.RealData both sides take statistics from (G-VBSM), else None


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
    stats: dict | None = None  # statistics computed from the real images: {teacher: {layer: {key: tensor}}}
    selection: dict | None = None  # DELT: the real images (indices) each class's initial images come from, in order
    notes: dict = field(default_factory=dict)  # measured sizes of deliberate differences


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
    hparams: dict  # ddpipe config field (``r_bn`` = the BN term's weight: bn_stats, class_bn_stats) -> their argparse name
    run: Callable[["Adapter", Case, str], Side]  # (adapter, case, folder of their files) -> their side
    deliberate: tuple[dict, ...] = ()  # differences ddpipe makes on purpose: {"what", "where"}
    default_repo: str = ""
    repo_env: str = ""
    # the geometry their file fixes (SRe2L's scripts: 1000 classes, 3 x 224 x 224, ImageNet normalisation)
    num_classes: int = 1000
    image_size: int = 224
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    # images per class of ddpipe's engine (and their --ipc / --ipc-number): 1 for SRe2L's class-mixed batches,
    # None = --batch-size (LPLD: one class per batch, B images of class 0), 2 for G-VBSM (B / 2 classes of 2)
    ipc: int | None = 1
    teachers: int = 1  # G-VBSM: several teachers, round-robin (seeds seed, seed + 10, ...)
    real_images: int = 0  # seeded real images both sides compute their statistics from (G-VBSM's conv targets)
    # the shared teacher as this family's code needs it (LPLD: class-wise BN buffers, BN called with (x, labels))
    teacher_fn: Callable[[Any, int, int], Any] | None = None
    local_modules: tuple[str, ...] = ("utils",)  # their sibling imports, put back in sys.modules afterwards
    requires: tuple[str, ...] = ()  # packages their files import that ddpipe does not need (G-VBSM einops, DELT pandas)


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

    method: str = option("", help="what to check, comma-separated: a family (its ImageNet-1K recipe: sre2l, cda, lpld, "
                                   "gvbsm, delt, rded) or another adapter (sre2l.tiny, cda.tiny, cda.in21k, lpld.tiny, "
                                   "delt.rounds); default every registered adapter")
    repo: str | None = option(None, help="their repository for every checked method: a clone or a bare git directory "
                                         "(default: the family's environment variable, e.g. $DDPIPE_SRE2L_REPO, "
                                         "$DDPIPE_LPLD_REPO, else a local mirror)")
    repos: str = option("", help="KEY=PATH,... a repository per method: KEY a method (lpld.tiny), a family (lpld) or "
                                 "an origin (VILA-Lab/DELT); before --repo")
    steps: int = option(3, help="updates compared (default 3): images after this many steps")
    batch_size: int = option(10, help="synthetic images per batch on both sides (default 10: classes 0-9; LPLD ten "
                                      "images of class 0; G-VBSM and DELT two images each of classes 0-4; RDED the "
                                      "images per class)")
    teacher: str = option("tiny", choices=("tiny", "resnet18"),
                          help="the shared teacher: tiny (two conv+BN layers, default) or resnet18 (torchvision's)")
    seed: int = option(0, help="seed of the teacher's weights and BN statistics and of ddpipe's draws (default 0)")
    torchvision: str = option("pinned", choices=("pinned", "installed"),
                              help="their RandomResizedCrop as under the torchvision their README pins (0.14.1: "
                                   "tensors resized without antialias; default) or the installed one's default "
                                   "(antialias since 0.17)")
    floor: bool = option(True, help="no floor run (ddpipe alone, its step-0 image gradient moved by +-the measured "
                                    "gradient difference: how far float noise alone carries the images after N steps)")
    ddpipe_override: str = option("", help="NAME=VALUE,... applied to ddpipe's recipe only (r_bn sets the BN "
                                           "term's weight: bn_stats, LPLD's class_bn_stats; any other RecoverConfig field): a control the check must catch")
    results_dir: str | None = option(None, help="where the results JSON goes (default bench/results under the current directory)")
    json: bool = option(False, help="print the result as one JSON object on stdout", cli=False)

    def __post_init__(self) -> None:
        check_int(DDPipeError, "steps", self.steps, min=1)
        check_int(DDPipeError, "batch_size", self.batch_size, min=1, max=1000)
        check_int(DDPipeError, "seed", self.seed, min=0)
        unknown = sorted(set(common.csv_list(self.method)) - set(ADAPTERS))
        if unknown:
            raise DDPipeError(f"no origin adapter for {unknown}; adapters: {', '.join(list_adapters())}")
        for item in common.csv_list(self.repos):
            if "=" not in item:
                raise DDPipeError(f"--repos takes KEY=PATH items, got {item!r}")

    def repo_for(self, adapter: Adapter) -> str | None:
        """The repository given for ``adapter``: ``--repos`` by method, family or origin, else ``--repo``."""
        given = dict(item.split("=", 1) for item in common.csv_list(self.repos))
        given = {k.strip(): v.strip() for k, v in given.items()}
        for key in (adapter.method, adapter.method.split(".")[0], adapter.origin):
            if key in given:
                return given[key]
        return self.repo


# --- their checkout ------------------------------------------------------------------------------------
def _is_bare(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "HEAD")) and os.path.isdir(os.path.join(path, "objects"))


def find_checkout(adapter: Adapter, path: str | None = None) -> tuple[str | None, str]:
    """``(repo, "")`` when ``path`` (else ``$<repo_env>``, else the default mirror) holds the adapter's
    files (a work tree, or a bare git directory with them at HEAD); else ``(None, reason)``."""
    missing_pkgs = [m for m in adapter.requires if importlib.util.find_spec(m) is None]
    if missing_pkgs:
        return None, (f"their code imports {', '.join(missing_pkgs)}, not installed "
                      f"(pip install {' '.join(missing_pkgs)})")
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
def bn_term(cfg) -> str:
    """The loss term SRe2L's ``--r-bn`` weighs in ``cfg``: ``bn_stats``, or LPLD's ``class_bn_stats``."""
    return next((t for t in ("bn_stats", "class_bn_stats") if t in cfg.loss), "bn_stats")


def apply_override(cfg, text: str):
    """``cfg`` with ``NAME=VALUE,...`` applied (``r_bn`` -> the BN term's weight, :func:`bn_term`; values typed
    like the field)."""
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
            loss[bn_term(cfg)] = float(value)
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


def run_ddpipe(cfg, teacher, steps: int, adapter: Adapter, grad_noise: float = 0.0,
               real=None) -> tuple[Side, list[dict], list[int]]:
    """ddpipe's engine on its first batch for ``steps`` updates: (its side, the draws it made, the labels).
    ``teacher`` is one module or a list (G-VBSM's round-robin); ``real`` the real images (a ``RealData``)
    where the recipe takes statistics from them; the side's ``stats`` are then its conv targets.

    ``grad_noise`` > 0 adds ``+-grad_noise`` (a seeded random sign per pixel) to the image gradient of
    step 0 only: the floor run, showing how far a float-sized gradient difference alone carries the
    images after ``steps`` updates."""
    import torch

    from ..synth.engine import Engine

    teachers = [copy.deepcopy(t) for t in (teacher if isinstance(teacher, (list, tuple)) else [teacher])]
    engine = Engine(cfg, teachers=teachers, num_classes=adapter.num_classes,
                    ipc=cfg.batch_size if adapter.ipc is None else adapter.ipc, real=real,
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
        if "x" not in got:  # the leaf being optimised (x_syn itself, or under DELT's rounds x_syn = x[active])
            leaf = step.x_syn if step.x_syn.is_leaf else step.x_syn.grad_fn.next_functions[0][0].variable
            got["x"], got["input"] = leaf, step.x.detach().clone()
            leaf.register_hook(lambda g: _keep_first(got, "grad", g))
            if grad_noise:
                def perturb(g):
                    if got.get("perturbed"):
                        return None
                    got["perturbed"] = True
                    sign = torch.randint(0, 2, g.shape, generator=torch.Generator().manual_seed(12345)) * 2 - 1
                    return g + grad_noise * sign.to(g.dtype)

                leaf.register_hook(perturb)
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
    if "conv_stats" in cfg.loss:
        side.stats = {t: engine.conv_targets(t) for t in range(len(teachers))}
    if cfg.init in ("top", "min", "medium") and real is not None:  # DELT's ranked real images, per class
        side.selection = {int(c): [int(i) for i in engine.class_order(int(c))[:_ranked_count(real, int(c))]]
                          for c in sorted(set(batch.classes))}
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
    saved_path = list(sys.path)
    try:  # LPLD's models/resnet_class.py registers its builders with torchvision: a second import would refuse
        from torchvision.models import _api as tv_api
        tv_models = dict(tv_api.BUILTIN_MODELS)
    except ImportError:  # pragma: no cover - torchvision is a dependency of synth
        tv_api = tv_models = None
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
        sys.path[:] = saved_path  # their file may append to it (LPLD's Tiny script adds its parent folder)
        if tv_api is not None:
            tv_api.BUILTIN_MODELS.clear()
            tv_api.BUILTIN_MODELS.update(tv_models)
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
        if a == b:  # one value (DELT's --jitter 0: randint(0, 0)): no draw, as ddpipe makes none
            return a
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
    with (their_module(os.path.join(src, adapter.script), adapter.method, adapter.local_modules) as mod, cpu_shims(record),
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
    return _their_side(adapter, case, got, record, args, printed)


def _their_side(adapter, case, got: dict, record: dict, args, printed, *, check: bool = True,
                stdout_tail: int | None = None, **extra) -> "Side":
    """Their run as a :class:`Side`: what the shims recorded (``got``, ``record``), their parsed ``args`` and
    printed output; ``check``: refuse a run that did not reach the compared steps."""
    if check:
        if "inputs" not in got or not record.get("losses"):
            raise DDPipeError(f"their {adapter.script} did not reach the compared steps")
        if len(got["scales"]) < case.steps:
            raise DDPipeError(f"their {adapter.script} stopped after {len(got['scales'])} of {case.steps} steps")
    out = printed.getvalue()
    return Side(loss=record["losses"][0], grad=got["grad"], teacher_input=got["input"],
                images=got["inputs"].detach().clone(), losses=record["losses"], snapshots=got["snapshots"],
                scales=got["scales"], jitter_bounds=got["jitter_bounds"], hparams=dict(vars(args)),
                stdout=out[-stdout_tail:] if stdout_tail else out, **extra)


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
    "what": "batch size: this check uses --batch-size images on both sides (SRe2L/CDA classes 0..B-1; LPLD B images "
            "of class 0; G-VBSM and DELT B/2 classes of 2) instead of their 100 (G-VBSM 80, LPLD the IPC)",
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


# --- LPLD: one class per batch, class-wise BN statistics --------------------------------------------------
def _class_aware_bn_type():
    """LPLD's interface for a BN layer (``recover/models/resnet_class.py``: ``ClassAwareBatchNorm2d``): a
    ``BatchNorm2d`` with ``class_running_mean`` / ``class_running_var`` buffers ``[K, C]``, called with
    ``(x, labels)``; their hook reads ``input[0][0]``. Built here, not imported, so the shared teacher keeps the
    weights of :func:`make_teacher`."""
    import torch
    from torch import nn

    class ClassAwareBN(nn.BatchNorm2d):
        def __init__(self, num_features: int, num_classes: int):
            super().__init__(num_features)
            self.register_buffer("class_running_mean", torch.zeros(num_classes, num_features))
            self.register_buffer("class_running_var", torch.ones(num_classes, num_features))

        def forward(self, input):  # noqa: A002 - their name
            return super().forward(input[0] if isinstance(input, (tuple, list)) else input)

    class Tupled(nn.Module):
        """Calls its BN with ``(x, None)``, as LPLD's blocks do (``self.bn1((out, labels))``)."""

        def __init__(self, bn):
            super().__init__()
            self.bn = bn

        def forward(self, x):
            return self.bn((x, None))

    return ClassAwareBN, Tupled


def class_bn_teacher(teacher, seed: int, num_classes: int):
    """The shared teacher with every ``BatchNorm2d`` replaced by LPLD's class-aware one (same affine
    parameters and running statistics) called with ``(x, None)``; the class buffers are drawn from
    ``seed + 2`` (means 0.5 N(0, 1), variances in [0.5, 2)), so each class's target differs from the global one."""
    import torch
    from torch import nn

    ClassAwareBN, Tupled = _class_aware_bn_type()
    gen = torch.Generator().manual_seed(seed + 2)
    model = copy.deepcopy(teacher)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.BatchNorm2d:
                bn = ClassAwareBN(child.num_features, num_classes)
                bn.load_state_dict(child.state_dict(), strict=False)
                with torch.no_grad():
                    bn.class_running_mean.copy_(0.5 * torch.randn(num_classes, child.num_features, generator=gen))
                    bn.class_running_var.copy_(0.5 + 1.5 * torch.rand(num_classes, child.num_features, generator=gen))
                setattr(parent, name, Tupled(bn))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class _Parsed(Exception):
    def __init__(self, args):
        super().__init__("parsed")
        self.parsed = args


def their_args(mod, argv: list[str], entry: str = "main_syn"):
    """Their parsed command line: ``mod.parse_args()`` where the file has one, else the parser built inside
    ``mod.<entry>()`` (LPLD's ImageNet script), stopped right after ``parse_args`` by a stand-in ``argparse``
    in their namespace whose parser raises with the result."""
    import argparse

    saved = sys.argv
    sys.argv = argv
    try:
        if hasattr(mod, "parse_args"):
            return mod.parse_args()

        class Parser(argparse.ArgumentParser):
            def parse_args(self, *a, **k):
                raise _Parsed(super().parse_args(*a, **k))

        plain = mod.argparse
        mod.argparse = _Proxy(argparse, ArgumentParser=Parser)
        try:
            getattr(mod, entry)()
        except _Parsed as done:
            return done.parsed
        finally:
            mod.argparse = plain
        raise DDPipeError(f"their {entry}() returned without parsing a command line")
    finally:
        sys.argv = saved


def run_class_images(adapter: Adapter, case: Case, src: str) -> Side:
    """LPLD's scripts: their command line parsed by their parser, then their ``get_images(args, teacher, None,
    ipc, class_id)`` for the case's class on a deep copy of the (class-aware BN) teacher wrapped as their
    ``main_syn`` does (``nn.DataParallel``, eval, frozen), stopped when the recorded draws run out."""
    from torch import nn

    if len(set(case.labels)) != 1:
        raise DDPipeError(f"{adapter.method} optimises one class per batch; the case has classes {sorted(set(case.labels))}")
    got: dict[str, Any] = {}
    record: dict[str, Any] = {}
    teacher = nn.DataParallel(copy.deepcopy(case.teacher))
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad = False
    teacher.register_forward_pre_hook(lambda m, inp: _keep_first(got, "input", inp[0]))
    argv = [adapter.script, *adapter.argv, "--batch-size", str(case.batch_size), "--ipc", str(case.batch_size),
            "--syn-data-path", os.path.join(case.workdir, f"{adapter.method}_syn")]
    printed = io.StringIO()
    with (their_module(os.path.join(src, adapter.script), adapter.method, adapter.local_modules) as mod,
          cpu_shims(record), contextlib.redirect_stdout(printed), contextlib.redirect_stderr(io.StringIO())):
        _replay_namespace(mod, case, got)
        args = their_args(mod, argv)
        try:
            mod.get_images(args, teacher, None, case.batch_size, case.labels[0])
        except _Stop:
            pass
    return _their_side(adapter, case, got, record, args, printed)


LPLD_REPO = "/work/.mirror/he-y+soft-label-pruning-for-dataset-distillation/repo"
LPLD_ENV = "DDPIPE_LPLD_REPO"
_LPLD_FILES = ("recover/utils_recover.py", "recover/models/resnet_class.py")
_LPLD_LOCAL = ("utils_recover", "utils_tiny", "models", "models.resnet_class")
_LPLD_HPARAMS = {"lr": "lr", "iterations": "iteration", "jitter": "jitter", "r_bn": "r_bn",
                 "first_bn_multiplier": "first_bn_multiplier"}
_LPLD_TEACHER_NOTE = {
    "what": "the teacher's class-wise BN statistics: LPLD's forward_once pass keeps an EMA (momentum 0.1) of each "
            "class's batch statistics in class_running_mean/var; ddpipe reads those buffers when the teacher has "
            "them (as here: the same buffers on both sides) and otherwise computes exact per-class statistics in "
            "one pass over the real data (synth/stats.py collect_class_bn_stats)",
    "where": "synth/engine.py Engine.class_bn_targets",
    "size": "none here (the teacher carries the buffers); on a teacher without them the targets are the exact "
            "statistics instead of an EMA over batches",
}

register_adapter(Adapter(
    method="lpld", recipe="lpld.in1k", origin="he-y/soft-label-pruning-for-dataset-distillation",
    script="recover/data_synthesis_class.py", files=("recover/data_synthesis_class.py", *_LPLD_FILES),
    # recover/scripts/imagenet1k_recover.sh (--batch-size and --ipc are the case's B)
    argv=("--arch-name", "resnet18", "--exp-name", "ddpipe_origin", "--lr", "0.25", "--iteration", "4000",
          "--l2-scale", "0", "--tv-l2", "0", "--r-bn", "0.01"),
    hparams=_LPLD_HPARAMS, run=run_class_images,
    deliberate=(_RNG_NOTE, _BATCH_NOTE, _LPLD_TEACHER_NOTE, {
        "what": "tv_l2 and l2_scale terms are not implemented (0 in imagenet1k_recover.sh)",
        "where": "synth/lpld.py",
        "size": "none at the published settings: their terms are multiplied by 0",
    }),
    default_repo=LPLD_REPO, repo_env=LPLD_ENV, ipc=None, teacher_fn=class_bn_teacher, local_modules=_LPLD_LOCAL,
))

register_adapter(Adapter(
    method="lpld.tiny", recipe="lpld.tiny", origin="he-y/soft-label-pruning-for-dataset-distillation",
    script="recover/data_synthesis_tiny_class.py",
    files=("recover/data_synthesis_tiny_class.py", "recover/utils_tiny.py", *_LPLD_FILES),
    # recover/scripts/tiny_recover.sh; their jitter is two-sided: random.randint(-jitter, jitter)
    argv=("--arch-name", "resnet18", "--exp-name", "ddpipe_origin", "--lr", "0.1", "--r-bn", "0.05",
          "--iteration", "4000", "--bn-hook-type", "class_stats_training"),
    hparams=_LPLD_HPARAMS, run=run_class_images,
    deliberate=(_RNG_NOTE, _BATCH_NOTE, _LPLD_TEACHER_NOTE),
    default_repo=LPLD_REPO, repo_env=LPLD_ENV, num_classes=200, image_size=64, mean=TINY_MEAN, std=TINY_STD,
    ipc=None, teacher_fn=class_bn_teacher, local_modules=_LPLD_LOCAL,
))


# --- G-VBSM: several teachers, BN and convolution statistics, densification ---------------------------------
def their_conv_stats(mod, teachers: list, real, folder: str, batch_size: int = 256, augment: Any = None,
                     mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD) -> dict:
    """G-VBSM's statistics pass with their ``ConvFeatureHook`` (``pre_hook_fn``: ``stat * bs / data_number``
    summed over batches), one hook per convolution named ``<class>=<layer>`` as their ``main_worker`` does,
    over ``real``'s images in order (``augment(x)``: per-image transform before normalising, else none), with
    ``data_number`` the number of images; saved under ``folder`` by their ``save()`` as their ``main_worker``
    does, and returned as ``{teacher: {layer: {mean, var, patch_mean, patch_var}}}``."""
    import numpy as np
    import torch
    from torch import nn

    out: dict[int, dict] = {}
    n = len(real)
    mean_t, std_t = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
    for i, t in enumerate(teachers):
        model = copy.deepcopy(t).eval()
        hooks = {}
        for name, module in model.named_modules():
            if isinstance(module, nn.Conv2d):
                h = mod.ConvFeatureHook(module, save_path=folder, name=f"{type(t).__name__}={name}", data_number=n)
                h.set_hook(pre=True)
                hooks[name] = h
        with torch.no_grad():
            for s in range(0, n, batch_size):
                x = torch.from_numpy(real.images[s:s + batch_size]).permute(0, 3, 1, 2).float() / 255.0
                if augment is not None:
                    x = torch.stack([augment(img) for img in x])
                model((x - mean_t) / std_t)
        out[i] = {}
        for name, h in hooks.items():
            if augment is None:
                h.save()
            h.close()
            out[i][name] = {"mean": torch.as_tensor(np.asarray(h.running_dd_mean)),
                            "var": torch.as_tensor(np.asarray(h.running_dd_var)),
                            "patch_mean": torch.as_tensor(np.asarray(h.running_patch_mean)),
                            "patch_var": torch.as_tensor(np.asarray(h.running_patch_var))}
    return out


def run_gvbsm(adapter: Adapter, case: Case, src: str) -> Side:
    """G-VBSM's ``main_worker(0, 1, args, teachers, verifier, ipc_id_range)`` as one process of their
    ``mp.spawn`` (a gloo group of one on the CPU, ``torch.cuda.set_device`` a no-op), their command line
    parsed by their parser. Their statistics: their ``ConvFeatureHook`` pass over the case's real images
    (:func:`their_conv_stats`), saved where their ``--statistic-path`` points, so ``main_worker`` loads
    them (``load_tag``) instead of reading an ImageNet folder."""
    import torch
    import torch.distributed as dist
    from torchvision import transforms

    got: dict[str, Any] = {}
    record: dict[str, Any] = {}
    stat_dir = os.path.join(case.workdir, "statistic")
    argv = [adapter.script, *adapter.argv, "--batch-size", str(case.batch_size), "--ipc-number", str(adapter.ipc),
            "--syn-data-path", os.path.join(case.workdir, f"{adapter.method}_syn"), "--statistic-path", stat_dir,
            "--dist-backend", "gloo"]
    teachers = [copy.deepcopy(t) for t in case.teachers]
    teachers[0].register_forward_pre_hook(lambda m, inp: _keep_first(got, "input", inp[0]))
    verifier = copy.deepcopy(case.teachers[0])
    printed = io.StringIO()
    notes: dict[str, Any] = {}
    with (their_module(os.path.join(src, adapter.script), adapter.method, adapter.local_modules) as mod,
          cpu_shims(record), contextlib.redirect_stdout(printed)):
        args = their_args(mod, argv)
        stats = their_conv_stats(mod, case.teachers, case.real, stat_dir)
        # what their loader's RandomResizedCrop(224) + flip would change in the targets (ddpipe: no augmentation)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            side = case.real.images.shape[1]
            aug = transforms.Compose([transforms.RandomResizedCrop(side), transforms.RandomHorizontalFlip()])
            augmented = their_conv_stats(mod, case.teachers, case.real, os.path.join(case.workdir, "aug"), augment=aug)
        notes["stats_augment_gap"] = stats_diff(stats, augmented)
        _replay_namespace(mod, case, got)
        mod.torch = _Proxy(torch, randn=mod.torch.randn, cuda=_Proxy(torch.cuda, set_device=lambda *a, **k: None,
                                                                       empty_cache=lambda: None))
        args.dist_url = "file://" + os.path.join(case.workdir, "dist_init")
        try:
            mod.main_worker(0, 1, args, teachers, verifier, list(range(adapter.ipc)))
        except _Stop:
            pass
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()
    return _their_side(adapter, case, got, record, args, printed, stdout_tail=4000, stats=stats, notes=notes)


GVBSM_REPO = "/work/.mirror/shaoshitong+G_VBSM_Dataset_Condensation/repo"
GVBSM_ENV = "DDPIPE_GVBSM_REPO"

register_adapter(Adapter(
    method="gvbsm", recipe="gvbsm.in1k", origin="shaoshitong/G_VBSM_Dataset_Condensation",
    script="Branch_full_ImageNet_1k/recover/data_synthesis_with_svd_with_db_with_all_statistic.py",
    files=("Branch_full_ImageNet_1k/recover/data_synthesis_with_svd_with_db_with_all_statistic.py",
           "Branch_full_ImageNet_1k/recover/utils.py"),
    # Branch_full_ImageNet_1k/recover/recover.sh (--batch-size and --ipc-number are the case's)
    argv=("--arch-name", "resnet18", "--exp-name", "ddpipe_origin", "--lr", "0.1", "--iteration", "4000",
          "--l2-scale", "0", "--tv-l2", "0", "--r-loss", "0.01", "--nuc-norm", "1.", "--verifier"),
    hparams={"lr": "lr", "iterations": "iteration", "jitter": "jitter", "first_bn_multiplier": "first_multiplier",
             "loss.bn_stats_ema": "r_loss", "loss.conv_stats": "r_loss", "loss.densify": "nuc_norm", "tau": "tau",
             "ema_momentum": "training_momentum", "conv_drop_rate": "drop_rate"},
    run=run_gvbsm,
    deliberate=(_RNG_NOTE, _BATCH_NOTE, {
        "what": "teachers: this check gives both sides two seeded two-layer BN CNNs (round-robin, one per "
                "iteration); their main_syn loads four torchvision ImageNet backbones (resnet18, mobilenet_v2, "
                "efficientnet_b0, shufflenet_v2_x0_5); ddpipe uses the teachers it is given (ddpipe recover --teacher ...)",
        "where": "bench/origin.py (a setting of the check); synth/gvbsm.py",
        "size": "none: both sides get the same teachers",
    }, {
        "what": "the convolution statistics' data: theirs are taken over their ImageFolder loader with "
                "RandomResizedCrop(224) + flip (one pass, batch 256), ddpipe's over the real images as stored "
                "(no augmentation); both sum stat(batch) x batch / N; compared here on the same un-augmented images",
        "where": "synth/engine.py Engine.conv_targets, synth/stats.py collect_conv_stats",
        "size": "{value:.2e} max |diff| of the targets on the check's images between one seeded "
                "RandomResizedCrop + flip pass and none (their own hook both times)",
        "measure": "stats_augment_gap",
    }, {
        "what": "their ConvFeatureHook divides by data_number = 1,281,167 (ImageNet-1K's training set) whatever "
                "the data; ddpipe divides by the real set's size (the check passes data_number = N to their hook)",
        "where": "synth/stats.py collect_conv_stats",
        "size": "none on ImageNet-1K; on any other set their targets are scaled by N / 1,281,167",
    }, {
        "what": "batch boundaries: their EMA of BN/conv statistics and their round-robin counter carry over from "
                "one batch to the next; ddpipe restarts both at every batch (start_batch, it % teachers)",
        "where": "synth/losses.py _EMATarget.reset, synth/engine.py Engine.optimise",
        "size": "none within a batch (all compared here); from the second batch on, the matched statistic at "
                "step k still holds 0.4^(k+1) of the previous batch's last one in theirs; the teacher order is "
                "the same when iterations % teachers == 0 (4000 % 4)",
    }),
    default_repo=GVBSM_REPO, repo_env=GVBSM_ENV, ipc=2, teachers=2, real_images=100, requires=("einops",),
))


# --- DELT: ranked real initial images, early-late rounds -----------------------------------------------------
def _ranked_count(real, c: int) -> int:
    """How many of class c's n real images DELT's ``store_medium`` can take before its index leaves the
    class (it walks mid, mid+1, mid-1, ... with mid = ceil(n / 2) and does not skip): 2 (n - mid) - 1."""
    n = len(real.class_indices(c))
    return max(0, 2 * (n - math.ceil(n / 2)) - 1)


def their_selection(src: str, case: Case, classes: list[int]) -> dict:
    """DELT's ``data_selection.py`` on the case's real images: written as PNG (lossless) into an ImageFolder
    (``c000``, ``c001``, ... with ``<index>.png``), loaded by their ``ImageFolder`` (as stored: ToTensor and
    the case's normalisation; their loader's Resize(256) + CenterCrop(224) is a deliberate difference),
    scored by their ``rank`` with the case's teacher (``nn.DataParallel``, eval), picked by their
    ``store_medium``; returns each class's picked image indices in order."""
    import numpy as np
    import torch
    from PIL import Image
    from torch import nn
    from torchvision import transforms

    real = case.real
    root = os.path.join(case.workdir, "delt_real")
    out_dir = os.path.join(case.workdir, "delt_selected")
    for i, (img, label) in enumerate(zip(real.images, real.labels)):
        d = os.path.join(root, f"c{int(label):03d}")
        os.makedirs(d, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(img.squeeze(-1) if img.shape[-1] == 1 else img)).save(
            os.path.join(d, f"{i:05d}.png"))
    mean, std = IMAGENET_MEAN, IMAGENET_STD  # DELT's adapters: ImageNet-1K (ddpipe normalises with the same)
    teacher = nn.DataParallel(copy.deepcopy(case.teacher)).eval()
    picked: dict[int, list[int]] = {}
    with (their_module(os.path.join(src, "data_selection.py"), "delt_selection", ()) as mod,
          contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), cpu_shims({})):
        dataset = mod.ImageFolder(root=root, transform=transforms.Compose([transforms.ToTensor(),
                                                                          transforms.Normalize(mean, std)]))
        loader = torch.utils.data.DataLoader(dataset, batch_size=200, num_workers=0, shuffle=False)
        ranking = mod.rank(types.SimpleNamespace(store_rank_file=False), teacher, loader)
        for c in classes:
            name = f"c{c:03d}"
            mod.store_medium(ranking, name, root_dir=root, target_dir=out_dir, ipc=_ranked_count(real, c))
            files = sorted(os.listdir(os.path.join(out_dir, name)))  # "<order>_<index>.png"
            picked[c] = [int(f.split("_", 1)[1].split(".")[0]) for f in files]
    return picked


def run_delt(adapter: Adapter, case: Case, src: str) -> Side:
    """DELT's ``recover/recover.py``: their ``parse_args`` on the published command line, then what their
    ``main_syn`` does before its loop (the teacher wrapped in ``nn.DataParallel``, eval, frozen; one
    ``BNFeatureHook`` per BN layer; ``class_iterations`` = ITR for every class: ``--min-iterations`` defaults to
    ITR, so their ``torch.randint(R, R + 1)`` is R) and their ``get_images(args, inputs, targets, ...)`` on the
    case's initial images (ddpipe's medium-ranked real images; the ranking itself is compared separately)."""
    import torch
    from torch import nn

    got: dict[str, Any] = {}
    record: dict[str, Any] = {}
    teacher = nn.DataParallel(copy.deepcopy(case.teacher))
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad = False
    teacher.register_forward_pre_hook(lambda m, inp: _keep_first(got, "input", inp[0]))
    ipc = adapter.ipc or case.batch_size
    argv = [adapter.script, *adapter.argv, "--batch-size", str(case.batch_size), "--ipc", str(ipc),
            "--syn-data-path", os.path.join(case.workdir, f"{adapter.method}_syn"), "--workers", "0"]
    printed = io.StringIO()
    with (their_module(os.path.join(src, adapter.script), adapter.method, adapter.local_modules) as mod,
          cpu_shims(record), contextlib.redirect_stdout(printed)):
        _replay_namespace(mod, case, got)
        args = their_args(mod, argv)
        hooks = [mod.BNFeatureHook(m) for m in teacher.modules() if isinstance(m, nn.BatchNorm2d)]
        class_iterations = torch.ones((args.num_classes,), dtype=int) * args.iteration
        mod.img_indxer = {}
        inputs = case.init.clone().requires_grad_(True)
        inputs.register_hook(lambda g: _keep_first(got, "grad", g))
        got["inputs"] = inputs
        targets = torch.tensor(case.labels, dtype=torch.long)
        try:
            mod.get_images(args, inputs, targets, teacher, hooks, class_iterations, mod.img_indxer)
        except _Stop:
            pass
    if not record.get("losses"):
        raise DDPipeError(f"their {adapter.script} did not reach the compared steps")
    if len(got["scales"]) < case.steps:
        raise DDPipeError(f"their {adapter.script} stopped after {len(got['scales'])} of {case.steps} steps")
    selection = their_selection(src, case, sorted(set(case.labels))) if case.real is not None else None
    return _their_side(adapter, case, got, record, args, printed, check=False, stdout_tail=4000, selection=selection)


DELT_REPO = "/work/.mirror/VILA-Lab+DELT/repo"
DELT_ENV = "DDPIPE_DELT_REPO"
_DELT_HPARAMS = {"lr": "lr", "iterations": "iteration", "jitter": "jitter", "r_bn": "r_bn",
                 "first_bn_multiplier": "first_bn_multiplier", "milestone": "milestone",
                 "round_iterations": "round_iterations"}
_DELT_INIT_NOTE = {
    "what": "initial images: both sides start from ddpipe's medium-ranked real images (DELT's recover reads "
            "them from the folder its data_selection.py writes); the ranking is compared on its own "
            "(selection_equal: their rank + store_medium on the same images and teacher); their loaders resize "
            "(Resize(8/7 side) + CenterCrop) images that ddpipe takes as stored at the input size",
    "where": "synth/engine.py Engine.rank_class, medium_order",
    "size": "none: the same initial batch on both sides; the selection is compared on images already at the "
            "input size, fed to their rank without their resize",
}

register_adapter(Adapter(
    method="delt", recipe="delt.in1k", origin="VILA-Lab/DELT", script="recover/recover.py",
    files=("recover/recover.py", "recover/utils.py", "recover/models.py", "data_selection.py"),
    # scripts/resnet18_imagenet1k_synthesis.sh, IPC 50 / 10 (--batch-size and --ipc are the case's)
    argv=("--arch-name", "resnet18", "--dataset", "imagenet-1k", "--exp-name", "ddpipe_origin", "--use-early-late",
          "--round-iterations", "500", "--lr", "0.25", "--r-bn", "0.01", "--iteration", "4000", "--jitter", "0",
          "--easy2hard-mode", "cosine", "--milestone", "1"),
    hparams=_DELT_HPARAMS, run=run_delt,
    deliberate=(_RNG_NOTE, _BATCH_NOTE, _DELT_INIT_NOTE),
    default_repo=DELT_REPO, repo_env=DELT_ENV, ipc=2, local_modules=("utils", "models"), real_images=100,
    requires=("pandas",),
))

register_adapter(Adapter(
    method="delt.rounds", recipe="delt.test", origin="VILA-Lab/DELT", script="recover/recover.py",
    files=("recover/recover.py", "recover/utils.py", "recover/models.py", "data_selection.py"),
    # the published command line with ITR 4 and ROUND_ITR 2 (ddpipe's delt.test): the compared steps cross
    # from round 0 (first image of each class) into round 1 (both), with the cosine lr and crop curriculum
    argv=("--arch-name", "resnet18", "--dataset", "imagenet-1k", "--exp-name", "ddpipe_origin", "--use-early-late",
          "--round-iterations", "2", "--lr", "0.25", "--r-bn", "0.01", "--iteration", "4", "--jitter", "0",
          "--easy2hard-mode", "cosine", "--milestone", "1"),
    hparams=_DELT_HPARAMS, run=run_delt,
    deliberate=(_RNG_NOTE, _BATCH_NOTE, _DELT_INIT_NOTE),
    default_repo=DELT_REPO, repo_env=DELT_ENV, ipc=2, local_modules=("utils", "models"), real_images=40,
    requires=("pandas",),
))


# --- RDED: no optimisation; their patch scoring, selection and stitching on the same real images -----------------
RDED_REPO = "/work/.mirror/LINs-lab+RDED/repo"
RDED_ENV = "DDPIPE_RDED_REPO"
RDED_CLASSES = 4  # classes built on both sides
# real images per class in the case beyond the ipc * factor**2 kept (their --mipc 300 is compared as a hyperparameter)
RDED_SPARE = 20


@dataclass(frozen=True)
class PatchAdapter(Adapter):
    """An adapter whose method optimises nothing (RDED): ``check(adapter, repo, config, workdir) -> row``
    replaces :func:`check_method`; ``run`` is unused."""

    check: Callable[..., dict] | None = None


def _rded_args(src: str, argv: tuple[str, ...], workdir: str):
    """Their ``argument.py`` run on ``argv`` (it parses ``sys.argv`` at import and makes ``./exp/...``: run in
    ``workdir``); returns its ``args``."""
    saved_argv, cwd = sys.argv, os.getcwd()
    sys.argv = ["main.py", *argv]
    os.chdir(workdir)
    try:
        spec = importlib.util.spec_from_file_location("_ddpipe_origin_rded_argument", os.path.join(src, "argument.py"))
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod.args
    finally:
        sys.argv = saved_argv
        os.chdir(cwd)


@contextlib.contextmanager
def _rded_modules(src: str, args):
    """Import their ``synthesize.main`` (and through it ``synthesize.utils``, ``synthesize.models``,
    ``validation.utils``) from ``src`` with a stand-in ``argument`` module holding ``args``; ``sys.modules``,
    ``sys.path`` and torchvision's ``WeightsEnum.get_state_dict`` (their utils replaces it) are put back after."""
    from torchvision.models._api import WeightsEnum

    prefixes = ("synthesize", "validation", "argument")
    mine = lambda k: k in prefixes or k.startswith(tuple(p + "." for p in prefixes))  # noqa: E731
    saved = {k: sys.modules.pop(k) for k in list(sys.modules) if mine(k)}
    saved_path, saved_state = list(sys.path), WeightsEnum.get_state_dict
    argument = types.ModuleType("argument")
    argument.args = args
    sys.modules["argument"] = argument
    sys.path.insert(0, src)
    try:
        import importlib

        yield importlib.import_module("synthesize.main")
    finally:
        sys.path[:] = saved_path
        WeightsEnum.get_state_dict = saved_state
        for k in [k for k in sys.modules if mine(k)]:
            del sys.modules[k]
        sys.modules.update(saved)


def run_rded_theirs(src: str, args, teacher, real, classes: list[int], order: dict, boxes: dict) -> dict:
    """Their ``init_images(args, teacher)`` on the case: the real images of each class written as PNG files
    ``<train_dir>/<class:05d>/<index>.png``; their ``random.shuffle`` of a folder's listing returns ddpipe's
    order of the class (``order[c]``); torchvision's ``RandomResizedCrop.get_params`` returns ddpipe's boxes
    (``boxes[c]``, image by image, crop by crop) and records the scale and ratio asked for; their
    ``cross_entropy``, ``selector``, ``mix_images`` and ``save_images`` are wrapped in their module's
    namespace to record the scores, the kept patches, the stitched images and what they write."""
    import numpy as np
    import torch
    import torchvision.transforms as T
    from PIL import Image

    train = args.train_dir
    for c in classes:
        os.makedirs(os.path.join(train, f"{c:05d}"), exist_ok=True)
        for i in order[c]:
            img = real.get([int(i)])[0]
            path = os.path.join(train, f"{c:05d}", f"{int(i):07d}.png")
            Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(path)
    queue = [tuple(int(v) for v in b) for c in classes for b in boxes[c].reshape(-1, 4)]
    got: dict = {"scores": [], "kept": [], "mixed": [], "saved": [], "asked": set()}

    def get_params(img, scale, ratio):
        got["asked"].add((tuple(float(s) for s in scale), tuple(float(r) for r in ratio)))
        if not queue:
            raise _Stop("their loader asked for more crops than ddpipe drew")
        return queue.pop(0)

    position = {c: {f"{int(i):07d}.png": k for k, i in enumerate(order[c])} for c in classes}

    def shuffle(items):  # their ImageFolder shuffles one class folder's listing: ddpipe's order instead
        cls = next(c for c in classes if items and items[0] in position[c])
        items.sort(key=position[cls].__getitem__)

    plain_get_params = T.RandomResizedCrop.__dict__["get_params"]
    record: dict = {}
    stderr = io.StringIO()
    with _rded_modules(src, args) as main, cpu_shims(record), contextlib.redirect_stderr(stderr):
        utils = sys.modules["synthesize.utils"]
        vutils = sys.modules["validation.utils"]
        vutils.random = _Proxy(vutils.random, shuffle=shuffle)
        ce, sel, mix, save = utils.cross_entropy, main.selector, main.mix_images, main.save_images

        def cross_entropy(y_pre, y):
            out = ce(y_pre, y)
            got["scores"].append(out.detach().clone())
            return out

        def selector(*a, **k):
            out = sel(*a, **k)
            got["kept"].append(out.detach().clone())
            return out

        def mix_images(*a, **k):
            out = mix(*a, **k)
            got["mixed"].append(out.detach().clone())
            return out

        def save_images(a, images, class_id):
            got["saved"].append(images.detach().clone())
            return save(a, images, class_id)

        utils.cross_entropy = cross_entropy
        main.selector, main.mix_images, main.save_images = selector, mix_images, save_images
        T.RandomResizedCrop.get_params = staticmethod(get_params)
        try:
            with torch.no_grad():
                main.init_images(args, teacher)
        finally:
            T.RandomResizedCrop.get_params = plain_get_params
    m = int(args.num_crop)
    got["scores"] = [s.reshape(m, -1) for s in got["scores"]]
    got["jpeg"] = []
    for c in classes:
        folder = os.path.join(args.syn_data_path, f"{classes.index(c):05d}")
        files = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
        got["jpeg"].append(np.stack([np.asarray(Image.open(os.path.join(folder, f)).convert("RGB")) for f in files])
                           if files else None)
    got["unused_draws"] = len(queue)
    got["stderr"] = stderr.getvalue()[-2000:]
    return got


def check_rded(adapter: "PatchAdapter", repo: str, config: Config, workdir: str) -> dict:
    """RDED's row: ddpipe's :func:`ddpipe.synth.rded.rded_class` and their ``init_images`` on the same teacher,
    real images, candidate order and crop boxes; compares the score of every candidate patch, the kept patches
    (which crop of which image, in rank order), the stitched images, and the hyperparameters of their published
    script (``--factor``, ``--num-crop``, ``--mipc``, the input size, the crop scale and ratio they ask for).
    ``--batch-size`` is the images per class (ipc; their script's 10 by default)."""
    import numpy as np
    import torch

    from ..synth import Engine, create_method, to_uint8
    from ..synth.rded import rded_class

    sources = materialise(adapter, repo, os.path.join(workdir, "src"))
    src = os.path.join(workdir, "src")
    ipc = config.batch_size
    cfg_pub = create_method(adapter.recipe)  # the published setting, compared with their script's
    mipc = ipc * cfg_pub.factor ** 2 + RDED_SPARE
    cfg = apply_override(create_method(adapter.recipe, mipc=mipc), config.ddpipe_override)
    teacher = make_teacher(config.teacher, config.seed, adapter.num_classes)
    real = make_real(dataclasses.replace(adapter, real_images=mipc * RDED_CLASSES), config.seed)
    real.labels = np.arange(len(real)) % RDED_CLASSES
    classes = list(range(RDED_CLASSES))
    t0 = time.perf_counter()
    engine = Engine(cfg, teachers=[copy.deepcopy(teacher)], real=real, num_classes=adapter.num_classes, ipc=ipc,
                    mean=adapter.mean, std=adapter.std)
    ours = {c: rded_class(engine, c) for c in classes}
    ours_s = time.perf_counter() - t0
    their = _rded_args(src, adapter.argv, workdir)
    hp = [{"ddpipe": k, "value": getattr(cfg_pub, k), "theirs": k.replace("_", "-"), "their_value": getattr(their, k)}
          for k in ("factor", "num_crop", "mipc") if getattr(cfg_pub, k) != getattr(their, k)]
    if their.input_size != adapter.image_size:
        hp.append({"ddpipe": "input_size", "value": adapter.image_size, "theirs": "input-size",
                   "their_value": their.input_size})
    if their.ipc != 10:
        hp.append({"ddpipe": "ipc", "value": 10, "theirs": "ipc", "their_value": their.ipc})
    run_args = copy.copy(their)
    run_args.mipc, run_args.ipc, run_args.classes, run_args.workers = mipc, ipc, range(RDED_CLASSES), 0
    run_args.train_dir = os.path.join(workdir, "train")
    run_args.syn_data_path = os.path.join(workdir, "syn")
    t0 = time.perf_counter()
    got = run_rded_theirs(src, run_args, copy.deepcopy(teacher), real, classes,
                          {c: ours[c].sources for c in classes}, {c: ours[c].boxes for c in classes})
    theirs_s = time.perf_counter() - t0
    asked = sorted(got["asked"])
    scale_diff = (max(max(abs(a - b) for a, b in zip(s, (cfg.min_scale, 1.0))) for s, _ in asked)
                  if asked else math.inf)
    ratio_same = bool(asked) and all(r == (1.0, 1.0) for _, r in asked)
    complete = all(len(got[k]) == len(classes) for k in ("scores", "kept", "mixed", "saved"))
    per = lambda key, mine: max(_max_abs(mine(c), got[key][i]) for i, c in enumerate(classes)) if complete else math.inf  # noqa: E731
    score_diff = per("scores", lambda c: ours[c].scores)
    kept_diff = per("kept", lambda c: ours[c].kept)
    image_diff = per("mixed", lambda c: ours[c].images)
    score_max = max(float(ours[c].scores.abs().max()) for c in classes)
    # what each side writes: ddpipe rounds (to_uint8, PNG); theirs truncate (x * 255).astype(uint8), then JPEG
    level_diff = jpeg_diff = None
    if complete:
        mine_u8 = [to_uint8(ours[c].images, adapter.mean, adapter.std).astype(np.int16) for c in classes]
        their_u8 = [(got["saved"][i].permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8).astype(np.int16)
                    for i in range(len(classes))]
        level_diff = int(max(np.abs(a - b).max() for a, b in zip(mine_u8, their_u8)))
        if all(j is not None for j in got["jpeg"]):
            jpeg_diff = int(max(np.abs(j.astype(np.int16) - b).max() for j, b in zip(got["jpeg"], their_u8)))
    row = {
        "method": adapter.method,
        "recipe": cfg.recipe,
        "repo": sources["repo"],
        "commit": sources["commit"],
        "script": adapter.script,
        "steps": None,
        "ipc": ipc,
        "classes": RDED_CLASSES,
        "mipc": mipc,
        "loss": None,
        "loss_abs_diff": score_diff,  # RDED's loss is the teacher's score of each candidate patch
        "scores_max_abs_diff": score_diff,
        "scores_max_abs": score_max,
        "grad_max_abs_diff": None,
        "patches_max_abs_diff": kept_diff,
        "images_max_abs_diff": image_diff,
        "images_within_tol": image_diff <= IMAGE_TOL,
        "selection_equal": kept_diff <= IMAGE_TOL,
        "scale_max_abs_diff": scale_diff,
        "crop_ratio_equal": ratio_same,
        "unused_draws": got["unused_draws"],
        "hparam_mismatches": hp,
        "hparams": "equal" if not hp else "DIFFER: " + ", ".join(f"{m['ddpipe']} {m['value']} vs {m['their_value']}"
                                                                 for m in hp),
        "deliberate": [_measured(d, {"levels": level_diff, "jpeg": jpeg_diff}) for d in adapter.deliberate],
        "ddpipe_override": config.ddpipe_override or None,
        "seconds": {"ddpipe": round(ours_s, 3), "theirs": round(theirs_s, 3)},
        "sha256": sources["sha256"],
        "their_stderr": got["stderr"],
    }
    row["match"] = bool(
        complete and not hp and scale_diff <= 1e-9 and ratio_same and got["unused_draws"] == 0
        and score_diff <= REL_TOL * max(1.0, score_max) and row["selection_equal"] and row["images_within_tol"]
    )
    return row


register_adapter(PatchAdapter(
    method="rded", recipe="rded.in1k", origin="LINs-lab/RDED", script="synthesize/utils.py",
    files=("synthesize/main.py", "synthesize/utils.py", "synthesize/models.py", "validation/utils.py", "argument.py"),
    # scripts/imagenet-1k_10ipc_resnet-18_to_resnet-18_cr5.sh
    argv=("--subset", "imagenet-1k", "--arch-name", "resnet18", "--factor", "2", "--num-crop", "5", "--mipc", "300",
          "--ipc", "10", "--stud-name", "resnet18", "--re-epochs", "300"),
    hparams={}, run=lambda adapter, case, folder: None, check=check_rded,
    deliberate=(
        {"what": "the set is written rounded to uint8 (to_uint8) as PNG; theirs truncate ((x * 255).astype(uint8)) "
                 "and save JPEG (PIL's default quality 75)",
         "where": "synth/writer.py to_uint8, ImageFolderWriter",
         "size": "{value} uint8 levels max |diff| before their JPEG", "measure": "levels"},
        {"what": "their JPEG encoding on top of the truncation (ddpipe writes PNG by default; --format jpeg "
                 "--jpeg-quality 75 to match)",
         "where": "synth/writer.py", "size": "{value} uint8 levels max |diff| of their files vs their own pixels",
         "measure": "jpeg"},
        {"what": "patches are cropped from the real images as ddpipe's data gives them (resized and centre-cropped to "
                 "the input size); theirs crop the full-resolution JPEG files",
         "where": "evaluate/recover.py _real_data; synth/rded.py rded_class",
         "size": "none here: both sides get the same input-size images"},
        {"what": "the candidate order and crop draw come from ddpipe's seeded per-class generators (the draw is "
                 "torchvision's get_params, same numbers under the same seed); theirs from the global RNG and "
                 "random.shuffle of the folder listing", "where": "synth/rded.py class_generator, draw_boxes",
         "size": "none here: replayed into their code"},
    ),
    default_repo=RDED_REPO, repo_env=RDED_ENV, num_classes=1000, image_size=224, ipc=None,
    requires=("tqdm",),
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
        if ours == "r_bn":
            mine = cfg.loss.get(bn_term(cfg))
        elif ours.startswith("loss."):  # a loss term's weight (G-VBSM's r_loss, nuc_norm)
            mine = cfg.loss.get(ours[5:])
        else:
            mine = getattr(cfg, ours)
        other = theirs.get(their_name)
        if other is None or mine is None or not math.isclose(float(mine), float(other), rel_tol=1e-12, abs_tol=0.0):
            out.append({"ddpipe": ours, "value": mine, "theirs": their_name, "their_value": other})
    return out


def make_teachers(adapter: Adapter, config: Config) -> list:
    """The adapter's shared teachers: :func:`make_teacher` at seeds ``seed``, ``seed + 10``, ...; the i-th
    (i >= 1) gets a class of its own name (G-VBSM files its statistics under the teacher's class name, and its
    four torchvision backbones are four classes); then the adapter's ``teacher_fn``."""
    out = []
    for i in range(adapter.teachers):
        t = make_teacher(config.teacher, config.seed + 10 * i, adapter.num_classes)
        if i:
            t.__class__ = type(f"{type(t).__name__}{i + 1}", (type(t),), {})
        if adapter.teacher_fn is not None:
            t = adapter.teacher_fn(t, config.seed + 10 * i, adapter.num_classes)
        out.append(t)
    return out


def make_real(adapter: Adapter, seed: int):
    """``adapter.real_images`` seeded uint8 images (smooth noise: a 7 x 7 random grid upsampled, so
    convolution statistics are not those of white noise) with classes ``i % 10`` (the case's batches use the
    first classes, each then has n / 10 images to rank); None when 0."""
    if not adapter.real_images:
        return None
    import numpy as np
    import torch
    import torch.nn.functional as F

    from ..synth.engine import RealData

    gen = torch.Generator().manual_seed(seed + 3)
    n, side, c = adapter.real_images, adapter.image_size, len(adapter.mean)
    coarse = torch.rand(n, c, 7, 7, generator=gen)
    fine = F.interpolate(coarse, size=(side, side), mode="bilinear", align_corners=False)
    fine = (fine + 0.15 * torch.randn(n, c, side, side, generator=gen)).clamp(0, 1)
    images = (fine * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return RealData(labels=np.arange(n) % min(10, adapter.num_classes), images=images)


def stats_diff(ours: dict | None, theirs: dict | None) -> float | None:
    """Max |difference| over every teacher, layer and statistic of two ``{teacher: {layer: {key: tensor}}}``."""
    if ours is None or theirs is None:
        return None
    worst = 0.0
    for t, layers in ours.items():
        for name, d in layers.items():
            for k, v in d.items():
                other = theirs.get(t, {}).get(name, {}).get(k)
                worst = max(worst, math.inf if other is None else _max_abs(v.float(), other.float()))
    return worst


def _measured(note: dict, measured: dict) -> dict:
    """A deliberate difference with its ``size`` filled in from what the run measured (``{key}`` fields)."""
    out = dict(note)
    key = out.pop("measure", None)
    if key is not None:
        value = measured.get(key)
        out["measured"] = value
        out["size"] = out["size"].format(value=value if value is not None else float("nan"))
    return out


def check_method(adapter: Adapter, repo: str, config: Config, workdir: str) -> dict:
    """Run both sides on one case; the row (see the module docstring) plus details."""
    from ..synth import create_method

    if adapter.ipc and config.batch_size % adapter.ipc:
        raise DDPipeError(f"{adapter.method} optimises whole classes of {adapter.ipc} images: --batch-size must be a "
                          f"multiple of {adapter.ipc}, got {config.batch_size}")
    sources = materialise(adapter, repo, os.path.join(workdir, "src"))
    cfg = apply_override(create_method(adapter.recipe, batch_size=config.batch_size), config.ddpipe_override)
    teachers = make_teachers(adapter, config)
    teacher = teachers[0] if len(teachers) == 1 else teachers
    real = make_real(adapter, config.seed)
    t0 = time.perf_counter()
    ours, draws, labels = run_ddpipe(cfg, teacher, config.steps, adapter, real=real)
    ours_s = time.perf_counter() - t0
    case = Case(teacher=teachers[0], init=ours.init, labels=labels, draws=draws, steps=config.steps,
                batch_size=config.batch_size, workdir=workdir, antialias=config.torchvision, teachers=teachers,
                real=real)
    t0 = time.perf_counter()
    theirs = adapter.run(adapter, case, os.path.join(workdir, "src"))
    theirs_s = time.perf_counter() - t0
    hp = compare_hparams(adapter, cfg, theirs.hparams)
    gap = antialias_gap(case)
    grad_diff = _max_abs(ours.grad, theirs.grad)
    floor = None
    if config.floor and grad_diff > 0:
        noisy, _, _ = run_ddpipe(cfg, teacher, config.steps, adapter, grad_noise=grad_diff, real=real)
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
        "stats_max_abs_diff": stats_diff(ours.stats, theirs.stats),
        "selection": ours.selection,
        "their_selection": theirs.selection,
        "selection_equal": None if ours.selection is None else ours.selection == theirs.selection,
        "stats_max_abs": (max(float(v.abs().max()) for layers in theirs.stats.values() for d in layers.values()
                              for v in d.values()) if theirs.stats else None),
        "jitter_bounds_equal": jitter_same,
        "hparam_mismatches": hp,
        "hparams": "equal" if not hp else "DIFFER: " + ", ".join(f"{m['ddpipe']} {m['value']} vs {m['their_value']}"
                                                                 for m in hp),
        "deliberate": [_measured(d, theirs.notes) for d in adapter.deliberate] + [{
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
    stats_ok = row["stats_max_abs_diff"] is None or row["stats_max_abs_diff"] <= REL_TOL * max(1.0, row["stats_max_abs"])
    row["match"] = bool(
        not hp and jitter_same and scale_diff <= 1e-9 and stats_ok and row["selection_equal"] is not False
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
        repo, reason = find_checkout(adapter, config.repo_for(adapter))
        if repo is None:
            skipped.append({"method": name, "reason": reason})
            print(f"origin {name}: skipped: {reason}", file=out)
            continue
        work = tempfile.mkdtemp(prefix=f"ddpipe-origin-{name}-")
        try:
            with torch.random.fork_rng(devices=[]):
                rows.append((getattr(adapter, "check", None) or check_method)(adapter, repo, config, work))
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
