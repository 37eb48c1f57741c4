"""Teachers: the one module for the teacher file format, loading any teacher, writing and hashing it.

A *teacher* is a classifier plus the facts needed to show it images: its class count, input
channels, **input size** (always explicit: a 32 px teacher is shown 32 px crops) and the mean/std
it was trained with, and ``teacher_hash``, the sha256 of its weights. :class:`Teacher` holds both;
:func:`open_teacher` builds one from any of these forms::

    open_teacher("runs/teacher/teacher.pt")                        # a ddpipe teacher file (ddpipe squeeze)
    open_teacher("runs/teacher/checkpoint.pth")                    # a squeeze checkpoint (architecture from its config)
    open_teacher("resnet18.pth", model="resnet18", num_classes=10, input_size=32)   # a plain torchvision state dict
    open_teacher("vit.pth", model="timm:vit_tiny_patch16_224", input_size=224)      # a timm name with local weights
    open_teacher(my_module, num_classes=10, input_size=32, mean=(0.5,) * 3, std=(0.5,) * 3)  # an nn.Module

On the command line the same facts are ``--teacher FILE --model resnet18 --num-classes 10
--input-size 32`` (``--model-arg KEY=VALUE`` for architecture arguments; ``--model-arg
input_size=32`` is the same as ``--input-size 32``). Rules:

- a **ddpipe teacher file** (``format == TEACHER_FORMAT``) records everything; its weights are checked
  against its ``teacher_hash``, and facts given explicitly must agree with it;
- a **squeeze checkpoint** (``checkpoint.pth``) names its architecture in its config; the facts come
  from the ``results.json`` beside it, or from explicit arguments;
- a **plain state dict** (torchvision, timm, or any dict holding one under ``model`` /
  ``state_dict``) needs ``model`` (a registered name, :func:`ddpipe.evaluate.models.list_models`, or
  ``timm:<name>``) and ``input_size``; the class count is read from the classifier and the
  channels from the first convolution when not given; mean/std default to ImageNet's;
- an **nn.Module** needs ``num_classes`` and ``input_size``; mean/std default to ImageNet's for 3
  channels and must be given otherwise.

Every teacher is probed with one blank batch of its stated size when it is opened, so a wrong
input size or class count is one error, never a traceback in the middle of a run. A registered
(non-timm) architecture is built without the random initialisation its weights replace (the
weights are the same; torch's global generator is not drawn from), which was most of the time
opening a file took.

``teacher_hash`` is :func:`ddpipe.synth.stats.state_dict_hash` of the model's state dict (the one
hash primitive; it lives in ``synth`` because synth records the hashes of its teachers and cannot
import ``evaluate``), so a plain state dict and the ddpipe teacher file wrapping it have the same
hash.

Public API:

- :data:`TEACHER_FORMAT` (``"ddpipe-teacher-v1"``) and :func:`write_teacher` ``(model | Teacher, path,
  dataset=None, metrics=None, config=None) -> hash``: the teacher file. A plain state dict becomes a
  self-describing teacher file with ``write_teacher(open_teacher(FILE, model=..., input_size=...), PATH)``
  (no dataset needed).
- :func:`open_teacher` ``(source, *, device, model, model_args, num_classes, in_chans, input_size, mean,
  std) -> Teacher``; :func:`open_teachers` (several, checked to agree: :func:`check_teachers_agree`);
  :func:`load_teacher` / :func:`load_teachers`: the same as ``(model, meta)`` pairs.
- :class:`TeacherOptions`: the config fields (``--teacher --model --model-arg --num-classes --input-size
  --in-chans --mean --std``) a phase config inherits; ``teacher_facts()`` gives ``open_teacher``'s keywords.
- :func:`teacher_hash` ``(Teacher | module | state dict | sequence)``: one hash, an ensemble's combined;
  :func:`state_dict_hash`.
- :func:`build_model` ``(name, num_classes, in_chans, input_size, model_args)``: ``create_model`` with
  ``--model-arg`` strings parsed (:func:`parse_model_args`), fact keys (``input_size=32``) taken as
  facts and bad arguments one :class:`ModelConfigError` instead of a ``TypeError``.
- :func:`load_init_weights` ``(model, path, num_classes, reset_head=False, what=..., state_dict=None)``:
  a state dict into a model being trained (``squeeze --init``).
- :class:`Ensemble` ``(teachers, device)``: G-VBSM's norm-equalised logit average, counting calls and images.

Checking a store against a teacher is :mod:`ddpipe.evaluate.check_teacher`. The module imports no
torch at import time.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable, Mapping, Sequence

from ddpipe.config import check_int, check_range, option

__all__ = [
    "TEACHER_FORMAT", "Teacher", "TeacherOptions", "Ensemble", "open_teacher", "open_teachers", "load_teacher",
    "load_teachers", "write_teacher", "load_init_weights", "teacher_hash", "state_dict_hash", "parse_model_args",
    "build_model", "check_teachers_agree", "TEACHER_FACTS",
]

TEACHER_FORMAT = "ddpipe-teacher-v1"
#: the keyword arguments every loader accepts to state (or override) a teacher's facts
TEACHER_FACTS = ("model", "model_args", "num_classes", "in_chans", "input_size", "mean", "std")
# model_args keys that are facts, not architecture arguments (``--model-arg input_size=32``)
_FACT_ARGS = ("num_classes", "in_chans", "input_size")


def _imagenet() -> tuple[tuple[float, ...], tuple[float, ...]]:
    from ..pipeline.stages import IMAGENET_MEAN, IMAGENET_STD

    return tuple(IMAGENET_MEAN), tuple(IMAGENET_STD)


def _floats(text: str) -> list[float]:
    """``"0.5,0.5,0.5"`` -> ``[0.5, 0.5, 0.5]`` (``--mean`` / ``--std``)."""
    return [float(t) for t in str(text).split(",") if t.strip()]


@dataclass(frozen=True, kw_only=True)
class TeacherOptions:
    """The teacher fields of a phase config, declared once (``ddpipe relabel``, the teacher check ...).

    ``teacher`` lists the teachers (paths; in Python also ``nn.Module`` or :class:`Teacher` objects);
    the other fields are the facts :func:`open_teacher` takes, for the forms that do not record them.
    A config inheriting this calls :meth:`validate` (``RunOptions`` does it in ``__post_init__``);
    ``error`` is the phase's error class. Every field here changes the result (which teacher, and how
    its input is made), so a resume (recover's rerun, relabel's ``--resume``) must give them as before:
    a fact the first run gave and the resume leaves out is a change, even where the file says the same.
    """

    error: ClassVar[type[Exception]] = Exception  # the phase's DDPipeError subclass (set by the config)
    teacher_required: ClassVar[bool] = True  # False: a phase that may run without teachers (recover's selections, DM)

    teacher: tuple[str, ...] = option(
        metavar="CKPT", group="teacher",
        help="a teacher: a `ddpipe squeeze` teacher.pt or checkpoint.pth, or a plain torchvision/timm state dict "
             "with --model/--num-classes/--input-size; repeat for a G-VBSM ensemble (Python: also nn.Module objects)")
    model: str | None = option(None, group="teacher",
                               help="architecture of plain state-dict teachers: a registered model (resnet18, "
                                    "convnet_d3_w32_bn ...) or timm:<name>")
    model_args: tuple[str, ...] = option((), flags=("--model-arg",), metavar="KEY=VALUE", group="teacher",
                                         help="architecture argument of plain state-dict teachers, repeatable "
                                              "(values parsed as JSON); input_size=N is --input-size N")
    num_classes: int | None = option(None, group="teacher",
                                     help="the teacher's class count (default: its file's, or its classifier's)")
    input_size: int | None = option(None, group="teacher",
                                    help="the teacher's input size in px, = the crops' size (required for plain "
                                         "state dicts and modules; default: the teacher file's)")
    in_chans: int | None = option(None, group="teacher",
                                  help="the teacher's input channels (default: its file's, or its first convolution's)")
    mean: tuple[float, ...] | None = option(None, parse=_floats, metavar="M1,M2,M3", group="teacher",
                                            help="per-channel mean the teacher was trained with (default: its "
                                                 "file's, ImageNet's for plain state dicts)")
    std: tuple[float, ...] | None = option(None, parse=_floats, metavar="S1,S2,S3", group="teacher",
                                           help="per-channel std the teacher was trained with (default: as --mean)")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check the teacher fields (raising ``self.error`` naming the field), then the other bases' fields."""
        parent = getattr(super(), "validate", None)
        if parent is not None:
            parent()
        e = self.error
        teachers = self.teacher
        if isinstance(teachers, (str, os.PathLike)) or not isinstance(teachers, (tuple, list)):
            teachers = (teachers,)
        if not teachers and self.teacher_required:
            raise e("teacher: give at least one teacher")
        object.__setattr__(self, "teacher", tuple(teachers))
        if isinstance(self.model_args, str):
            object.__setattr__(self, "model_args", (self.model_args,))
        if self.model is not None and (not isinstance(self.model, str) or not self.model.strip()):
            raise e(f"model must be a model name, got {self.model!r}")
        check_int(e, "num_classes", self.num_classes, min=1, allow_none=True)
        check_int(e, "input_size", self.input_size, min=1, allow_none=True)
        check_int(e, "in_chans", self.in_chans, min=1, allow_none=True)
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
                raise e(f"{name} must be a sequence of numbers, one per channel, got {value!r}")
            value = tuple(value)
            for v in value:
                check_range(e, name, v, min=0.0 if name == "std" else None, min_exclusive=name == "std")
            object.__setattr__(self, name, value)

    def teacher_facts(self) -> dict:
        """The keyword facts :func:`open_teacher` takes, as set here."""
        return {"model": self.model, "model_args": self.model_args or None, "num_classes": self.num_classes,
                "in_chans": self.in_chans, "input_size": self.input_size, "mean": self.mean, "std": self.std}

    def teacher_texts(self) -> list[str]:
        """The teachers as JSON-ready text (objects by their description)."""
        out = []
        for t in self.teacher:
            if isinstance(t, (str, os.PathLike)):
                out.append(os.fspath(t))
            else:
                src = getattr(t, "source", None)
                out.append(src if isinstance(src, str) else f"<{type(t).__name__}>")
        return out


@dataclass(eq=False)
class Teacher:
    """A classifier in eval mode plus the facts needed to feed it: what every teacher user takes.

    Calling it maps a float32 batch ``[b, in_chans, input_size, input_size]`` (normalised with
    ``mean``/``std``) to logits ``[b, num_classes]`` without gradients. ``meta`` is everything known
    about it (a teacher file's record without the weights, plus the facts and ``path``).
    """

    model: Any  # torch.nn.Module, eval mode
    num_classes: int
    in_chans: int
    input_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    teacher_hash: str
    source: str  # absolute path of the file, or "<ClassName>" for a module
    kind: str  # teacher-file | checkpoint | state-dict | module
    meta: dict = field(default_factory=dict)

    def __call__(self, images):
        import torch

        with torch.no_grad():
            return self.model(images)

    def to(self, device) -> "Teacher":
        self.model.to(device)
        return self

    def describe(self) -> dict:
        """A JSON-safe summary (what results files record about a teacher)."""
        return {"source": self.source, "kind": self.kind, "teacher_hash": self.teacher_hash,
                "num_classes": self.num_classes, "in_chans": self.in_chans, "input_size": self.input_size,
                "mean": list(self.mean), "std": list(self.std),
                **({"model": self.meta["model_cfg"].get("name")} if self.meta.get("model_cfg") else {})}


# --- hashing ----------------------------------------------------------------------------------------
def state_dict_hash(state_dict: Mapping) -> str:
    """sha256 over names, dtypes, shapes and bytes of a state dict's tensors (the ``teacher_hash``)."""
    from ..synth.stats import state_dict_hash as _hash

    return _hash(dict(state_dict))


def teacher_hash(obj: Any) -> str:
    """The hash of a teacher: a :class:`Teacher`, an ``nn.Module``, a state dict, or a sequence of them
    (an ensemble: one member's own hash, several members' sha256 of their hashes joined by ``+``)."""
    if isinstance(obj, Teacher):
        return obj.teacher_hash
    if isinstance(obj, str):  # already a hash
        return obj
    if isinstance(obj, Mapping):
        return state_dict_hash(obj)
    if hasattr(obj, "state_dict") and callable(obj.state_dict):
        return state_dict_hash(obj.state_dict())
    if isinstance(obj, (list, tuple)):
        hashes = [teacher_hash(o) for o in obj]
        if not hashes:
            from .errors import TeacherError

            raise TeacherError("an ensemble needs at least one teacher")
        if len(hashes) == 1:
            return hashes[0]
        return hashlib.sha256("+".join(hashes).encode()).hexdigest()
    from .errors import TeacherError

    raise TeacherError(f"cannot hash a {type(obj).__name__} as a teacher")


# --- building models --------------------------------------------------------------------------------
def parse_model_args(items: Iterable[str] | Mapping | None, flag: str = "--model-arg") -> dict:
    """``["width=48", "depth=3"]`` (values parsed as JSON, else kept as strings) or a mapping -> dict
    (:func:`ddpipe.config.parse_key_values`, raising :class:`ModelConfigError` naming ``flag``)."""
    from ddpipe.config import parse_key_values
    from .errors import ModelConfigError

    return parse_key_values(ModelConfigError, flag, dict(items) if isinstance(items, Mapping) else items)


def _split_facts(model_args: dict, facts: dict, where: str) -> tuple[dict, dict]:
    """Move ``num_classes`` / ``in_chans`` / ``input_size`` out of the model arguments into the facts
    (``--model-arg input_size=32`` means ``--input-size 32``); a conflict is one error."""
    from .errors import ModelConfigError

    args, facts = dict(model_args), dict(facts)
    for key in _FACT_ARGS:
        if key not in args:
            continue
        value = args.pop(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ModelConfigError(f"{where}: model argument {key}={value!r} must be a positive integer")
        if facts.get(key) is not None and facts[key] != value:
            raise ModelConfigError(f"{where}: model argument {key}={value} contradicts {key}={facts[key]}")
        facts[key] = value
    return args, facts


def build_model(name: str, num_classes: int, in_chans: int, input_size: int, model_args: Mapping | Iterable[str] | None = None):
    """``create_model`` with the facts explicit and bad arguments as one :class:`ModelConfigError`
    (a ``model_args`` key that is a fact, e.g. ``input_size``, is taken as that fact)."""
    from .errors import ModelConfigError
    from .models import create_model

    args, facts = _split_facts(parse_model_args(model_args), {"num_classes": num_classes, "in_chans": in_chans,
                                                              "input_size": input_size}, f"model {name}")
    try:
        return create_model(name, facts["num_classes"], facts["in_chans"], facts["input_size"], **args)
    except TypeError as e:
        raise ModelConfigError(f"model {name} does not take these arguments ({e}); "
                               f"given {', '.join(f'{k}={v!r}' for k, v in args.items()) or 'none'}") from None


def _classifier_names(model) -> list[str]:
    """State-dict keys of the final classifier (timm's ``get_classifier``, else the last Linear)."""
    from torch import nn

    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if not isinstance(head, nn.Linear):
        head = None
        for mod in model.modules():
            if isinstance(mod, nn.Linear):
                head = mod
    if head is None:
        return []
    name = next(n for n, mod in model.named_modules() if mod is head)
    return [f"{name}.{p}" if name else p for p, _ in head.named_parameters(recurse=False)]


def load_init_weights(model, path: str, num_classes: int, reset_head: bool = False, what: str = "the dataset",
                      state_dict: Mapping | None = None) -> dict:
    """Load a torchvision / timm / ddpipe state dict from ``path`` (or ``state_dict``) into ``model``.

    A classifier with another class count is :class:`ClassCountMismatchError` (unless ``reset_head``
    keeps the new, randomly initialised classifier); any other missing, unexpected or mis-shaped
    key is one :class:`CheckpointError`. Returns ``{"loaded": n, "reset": [keys]}``.
    """
    from .checkpoint import extract_state_dict, load_checkpoint
    from .errors import CheckpointError, ClassCountMismatchError
    from .models import convert_to_classwise_bn, has_classwise_bn

    sd = dict(state_dict) if state_dict is not None else extract_state_dict(load_checkpoint(path), path)
    if any(k.endswith("class_running_mean") for k in sd) and not has_classwise_bn(model):
        convert_to_classwise_bn(model, num_classes)
    target = model.state_dict()
    reset = []
    for key in _classifier_names(model):
        if key in sd and sd[key].shape != target[key].shape:
            if not reset_head and sd[key].shape[0] != target[key].shape[0]:
                raise ClassCountMismatchError(
                    f"{path} has a {sd[key].shape[0]}-class classifier ({key}) but {what} has {num_classes} classes; "
                    "pass --reset-head to train a new classifier on its features, or pick the matching dataset"
                )
            if reset_head:
                del sd[key]
                reset.append(key)
    missing = [k for k in target if k not in sd and k not in reset]
    unexpected = [k for k in sd if k not in target]
    wrong = [f"{k} {tuple(sd[k].shape)} vs {tuple(target[k].shape)}" for k in sd
             if k in target and sd[k].shape != target[k].shape]
    if missing or unexpected or wrong:
        parts = [f"{len(v)} {n} (e.g. {', '.join(v[:3])})" for n, v in
                 (("missing keys", missing), ("unexpected keys", unexpected), ("mis-shaped keys", wrong)) if v]
        cfg = getattr(model, "model_cfg", {})
        built = f" built for {cfg['in_chans']}-channel {cfg['input_size']} px inputs" if cfg else ""
        name = cfg.get("name", type(model).__name__)
        raise CheckpointError(f"{path} does not fit model {name}{built}: {'; '.join(parts)}")
    model.load_state_dict(sd, strict=not reset)
    return {"loaded": len(sd), "reset": reset}


# --- facts ------------------------------------------------------------------------------------------
def _positive(name: str, value: Any, where: str) -> int:
    from .errors import TeacherError

    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise TeacherError(f"{where}: {name} must be a positive integer, got {value!r}")
    return int(value)


def _norm(name: str, value: Any, channels: int, where: str) -> tuple[float, ...]:
    from .errors import TeacherError

    try:
        vals = tuple(float(v) for v in value)
    except TypeError:
        raise TeacherError(f"{where}: {name} must be a sequence of {channels} numbers, got {value!r}") from None
    if len(vals) != channels or not all(v == v and abs(v) != float("inf") for v in vals):
        raise TeacherError(f"{where}: {name} must be {channels} finite numbers (one per channel), got {value!r}")
    if name == "std" and any(v <= 0 for v in vals):
        raise TeacherError(f"{where}: std must be positive, got {value!r}")
    return vals


def _finish(model, *, num_classes, in_chans, input_size, mean, std, source, kind, meta, device, digest=None) -> Teacher:
    """Check the facts, put the model on ``device`` in eval mode, record everything in ``meta``."""
    from .errors import TeacherError

    where = f"teacher {source}"
    num_classes = _positive("num_classes", num_classes, where)
    in_chans = _positive("in_chans", in_chans, where)
    input_size = _positive("input_size", input_size, where)
    if mean is None or std is None:
        if in_chans != 3:
            raise TeacherError(f"{where}: a {in_chans}-channel teacher needs its mean and std (--mean/--std)")
        imean, istd = _imagenet()
        mean = imean if mean is None else mean
        std = istd if std is None else std
    mean, std = _norm("mean", mean, in_chans, where), _norm("std", std, in_chans, where)
    model.to(device).eval()
    _probe(model, num_classes, in_chans, input_size, device, where)
    digest = digest or state_dict_hash(model.state_dict())
    meta = dict(meta)
    meta.update(num_classes=num_classes, in_chans=in_chans, input_size=input_size, mean=list(mean), std=list(std),
                teacher_hash=digest, path=source, kind=kind)
    if "model_cfg" not in meta and getattr(model, "model_cfg", None):
        meta["model_cfg"] = dict(model.model_cfg)
    return Teacher(model=model, num_classes=num_classes, in_chans=in_chans, input_size=input_size, mean=mean, std=std,
                   teacher_hash=digest, source=source, kind=kind, meta=meta)


def _probe(model, num_classes: int, in_chans: int, input_size: int, device, where: str) -> None:
    """One forward pass on a blank ``[1, in_chans, input_size, input_size]`` batch: a teacher that cannot
    take its stated inputs, or does not give ``num_classes`` logits, is one error now instead of a
    traceback in the middle of a run."""
    import torch

    from .errors import TeacherError

    try:
        with torch.no_grad():
            out = model(torch.zeros(1, in_chans, input_size, input_size, device=device))
    except (RuntimeError, ValueError, AssertionError, TypeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise TeacherError(f"{where} cannot run on {in_chans}-channel {input_size} px inputs ({first}); "
                           "check its input size and channels") from None
    shape = tuple(getattr(out, "shape", ()))
    if shape != (1, num_classes):
        raise TeacherError(f"{where} gives outputs of shape {shape} for one image, not (1, {num_classes}) logits")


def _agree(given: Mapping, recorded: Mapping, where: str) -> None:
    """Facts given explicitly must equal what the file records (one error naming the first that differs)."""
    from .errors import ClassCountMismatchError, TeacherError

    for key in ("num_classes", "in_chans", "input_size", "mean", "std"):
        g = given.get(key)
        if g is None:
            continue
        r = recorded.get(key)
        same = (tuple(float(x) for x in g) == tuple(float(x) for x in r)) if key in ("mean", "std") else g == r
        if not same:
            cls = ClassCountMismatchError if key == "num_classes" else TeacherError
            what = {"num_classes": "classes", "in_chans": "input channels", "input_size": "px inputs"}.get(key, key)
            raise cls(f"teacher {where} records {r} {what}, not {g} as given ({key}); "
                      "drop the flag or use a teacher made for those inputs")


# --- loading ----------------------------------------------------------------------------------------
def _infer_from_state_dict(sd: Mapping) -> dict:
    """Class count from the last 2-D ``*.weight`` (the classifier), channels from the first 4-D one (the stem)."""
    out = {}
    mats = [v for k, v in sd.items() if k.endswith("weight") and getattr(v, "ndim", 0) == 2]
    convs = [v for k, v in sd.items() if k.endswith("weight") and getattr(v, "ndim", 0) == 4]
    if mats:
        out["num_classes"] = int(mats[-1].shape[0])
    if convs:
        out["in_chans"] = int(convs[0].shape[1])
    return out


def _with_weights(name: str, sd: Mapping, make: Callable[[], Any], load: Callable[[Any], Any]):
    """``make()`` with the weights ``sd`` loaded by ``load(model)``, without the random initialisation that
    ``sd`` replaces anyway (most of the time it takes to open a teacher).

    A registered (non-timm) model is built with torch's initialisers (``nn.init.*``, and the in-place fills
    and draws ``normal_``, ``uniform_``, ``fill_``, ``zero_`` ...) skipped, which leaves its tensors as allocated; it is kept only when every
    parameter and buffer is an entry of its state dict that ``sd`` holds with the same shape and dtype, so
    the (strict) load writes every one of them: the weights, hence every output, are ``load(make())``'s.
    What changes is that torch's global generator is not drawn from. Any other case builds the model as usual.
    """
    import torch

    if not name.startswith("timm:"):
        try:
            with _SkipInit():
                model = make()
        except Exception:  # noqa: BLE001 - built again below, where a real error is raised as usual
            model = None
        if model is not None:
            target = model.state_dict(keep_vars=True)
            ids = {id(t) for t in target.values()}
            fits = (all(k in sd and isinstance(sd[k], torch.Tensor) and sd[k].shape == t.shape and sd[k].dtype == t.dtype
                        for k, t in target.items())
                    and all(id(t) in ids for t in (*model.parameters(), *model.buffers())))
            if fits:
                load(model)
                return model
    model = make()
    load(model)
    return model


def _skip_init_mode():
    """A torch function mode in which torch's in-place initialisers of a tensor leave it as it is."""
    import torch
    from torch.overrides import TorchFunctionMode

    T, init = torch.Tensor, torch.nn.init
    # the initialisers (nn.init.* are skipped whole) and the in-place fills and draws they use; arithmetic runs
    skip = {T.normal_, T.uniform_, T.fill_, T.zero_, T.bernoulli_, T.exponential_, T.random_, T.geometric_,
            T.cauchy_, T.log_normal_}
    skip.update(getattr(init, n) for n in dir(init) if n.endswith("_") and not n.startswith("_"))  # kaiming_normal_ ...

    class SkipInit(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func in skip:
                first = args[0] if args else kwargs.get("tensor", kwargs.get("self"))  # init.* take tensor=
                if isinstance(first, T):
                    return first
            return func(*args, **kwargs)

    return SkipInit()


class _SkipInit:
    """``with _SkipInit(): make()`` builds a model whose initialisers did nothing (see :func:`_with_weights`)."""

    def __enter__(self):
        self._mode = _skip_init_mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self._mode.__exit__(*exc)


def _from_teacher_file(obj: dict, path: str, facts: dict, device) -> Teacher:
    from .errors import CheckpointError, TeacherError
    from .models import convert_to_classwise_bn, create_model

    sd = obj["model"]
    if state_dict_hash(sd) != obj["teacher_hash"]:
        raise CheckpointError(f"{path}: weights do not match the recorded teacher_hash; the file is damaged")
    cfg = obj["model_cfg"]
    if facts.get("model") and facts["model"] != cfg["name"]:
        raise TeacherError(f"teacher {path} is a {cfg['name']}, not a {facts['model']} (--model); drop --model")
    args, facts = _split_facts(parse_model_args(facts.get("model_args")), facts, f"teacher {path}")
    wrong = {k: v for k, v in args.items() if cfg["kwargs"].get(k) != v}
    if wrong:
        raise TeacherError(f"teacher {path} records model arguments {cfg['kwargs']}, not "
                           f"{', '.join(f'{k}={v!r}' for k, v in wrong.items())} (--model-arg); drop them")
    _agree(facts, obj, path)
    def make():
        model = create_model(cfg["name"], cfg["num_classes"], cfg["in_chans"], cfg["input_size"], **cfg["kwargs"])
        if obj.get("classwise_bn"):
            convert_to_classwise_bn(model, cfg["num_classes"], obj.get("class_momentum", 0.1))
        return model

    model = _with_weights(cfg["name"], sd, make, lambda m: m.load_state_dict(sd))
    meta = {k: v for k, v in obj.items() if k != "model"}
    return _finish(model, num_classes=obj["num_classes"], in_chans=obj["in_chans"], input_size=obj["input_size"],
                   mean=obj["mean"], std=obj["std"], source=path, kind="teacher-file", meta=meta, device=device,
                   digest=obj["teacher_hash"])


def _squeeze_facts(path: str) -> dict:
    """The dataset facts recorded in the ``results.json`` beside a squeeze checkpoint (or nothing)."""
    res = os.path.join(os.path.dirname(path), "results.json")
    try:
        with open(res) as f:
            ds = json.load(f).get("dataset") or {}
    except (OSError, ValueError):
        return {}
    return {k: ds[k] for k in ("num_classes", "in_chans", "input_size", "mean", "std") if k in ds}


def _from_state_dict(sd: dict, path: str, facts: dict, device, kind: str, recorded: dict | None = None) -> Teacher:
    from .errors import CheckpointError, TeacherError

    recorded = recorded or {}
    name = facts.get("model") or recorded.get("model")
    if not name:
        raise CheckpointError(
            f"{path} is not a ddpipe teacher file but a plain state dict: say which architecture it is, e.g. "
            "--model resnet18 --num-classes 10 --input-size 32 (model=..., num_classes=..., input_size=... in Python)"
        )
    model_args = parse_model_args(facts.get("model_args") if facts.get("model_args") else recorded.get("model_args"))
    model_args, f = _split_facts(model_args, {k: facts.get(k) for k in _FACT_ARGS}, f"teacher {path}")
    inferred = _infer_from_state_dict(sd)
    merged = {k: f.get(k) if f.get(k) is not None else recorded.get(k, inferred.get(k)) for k in _FACT_ARGS}
    if merged["in_chans"] is None:
        merged["in_chans"] = 3
    for key, flag in (("num_classes", "--num-classes"), ("input_size", "--input-size")):
        if merged[key] is None:
            raise TeacherError(f"teacher {path}: give its {key.replace('_', ' ')} ({flag} N, {key}=N in Python); "
                               "it is not recorded in a plain state dict")
    model = _with_weights(
        name, sd, lambda: build_model(name, merged["num_classes"], merged["in_chans"], merged["input_size"], model_args),
        lambda m: load_init_weights(m, path, merged["num_classes"], what=f"--num-classes {merged['num_classes']}",
                                    state_dict=sd))
    mean = facts.get("mean") if facts.get("mean") is not None else recorded.get("mean")
    std = facts.get("std") if facts.get("std") is not None else recorded.get("std")
    return _finish(model, **merged, mean=mean, std=std, source=path, kind=kind, meta={}, device=device)


def _from_module(module, facts: dict, device) -> Teacher:
    from .errors import TeacherError

    where = f"<{type(module).__name__}>"
    if facts.get("model") or facts.get("model_args"):
        raise TeacherError(f"teacher {where} is a module already; model/model_args apply to state-dict files only")
    for key in ("num_classes", "input_size"):
        if facts.get(key) is None:
            raise TeacherError(f"teacher {where}: an nn.Module teacher needs {key} given explicitly")
    mean = facts.get("mean")
    in_chans = facts.get("in_chans") or (len(mean) if mean is not None else 3)
    return _finish(module, num_classes=facts["num_classes"], in_chans=in_chans, input_size=facts["input_size"],
                   mean=mean, std=facts.get("std"), source=where, kind="module", meta={}, device=device)


def open_teacher(source: Any, *, device: Any = "cpu", model: str | None = None,
                 model_args: Mapping | Iterable[str] | None = None, num_classes: int | None = None,
                 in_chans: int | None = None, input_size: int | None = None, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None) -> Teacher:
    """A :class:`Teacher` (eval mode, on ``device``) from a file path, an ``nn.Module`` or a Teacher.

    The keyword facts state what a file does not record (see the module docstring); for a ddpipe
    teacher file they must agree with it. Errors are one line: :class:`TeacherError`,
    :class:`CheckpointError` (unreadable or damaged file, weights that do not fit the model),
    :class:`ClassCountMismatchError`, :class:`ModelConfigError`, :class:`UnknownModelError`.
    """
    facts = {"model": model, "model_args": model_args, "num_classes": num_classes, "in_chans": in_chans,
             "input_size": input_size, "mean": mean, "std": std}
    if isinstance(source, Teacher):
        _agree(facts, {k: getattr(source, k) for k in ("num_classes", "in_chans", "input_size", "mean", "std")},
               source.source)
        return source.to(device)
    if isinstance(source, (str, os.PathLike)):
        return _open_file(os.path.abspath(os.path.expanduser(os.fspath(source))), facts, device)
    try:
        from torch import nn
    except ImportError:  # pragma: no cover - torch is required by evaluate
        nn = None
    if nn is not None and isinstance(source, nn.Module):
        return _from_module(source, facts, device)
    from .errors import TeacherError

    raise TeacherError(f"a teacher is a file path, an nn.Module or a Teacher, not a {type(source).__name__}")


def _open_file(path: str, facts: dict, device) -> Teacher:
    from .checkpoint import extract_state_dict, load_checkpoint
    from .errors import CheckpointError

    if os.path.isdir(path):
        hint = " (it holds teacher.pt)" if os.path.isfile(os.path.join(path, "teacher.pt")) else ""
        raise CheckpointError(f"teacher {path} is a directory, not a file{hint}")
    obj = load_checkpoint(path)
    fmt = obj.get("format")
    if fmt == TEACHER_FORMAT:
        return _from_teacher_file(obj, path, facts, device)
    if isinstance(fmt, str) and fmt.startswith("ddpipe-teacher"):
        raise CheckpointError(f"{path} is a teacher file of format {fmt!r}; this ddpipe reads {TEACHER_FORMAT!r}")
    sd = extract_state_dict(obj, path)
    cfg = obj.get("config") if isinstance(obj.get("config"), dict) else None
    if cfg and "model" in cfg and "optimizer" in obj:  # a squeeze checkpoint: architecture in its config
        recorded = {"model": cfg["model"], "model_args": cfg.get("model_args") or {}, **_squeeze_facts(path)}
        return _from_state_dict(sd, path, facts, device, "checkpoint", recorded)
    return _from_state_dict(sd, path, facts, device, "state-dict")


def check_teachers_agree(teachers: Sequence[Teacher]) -> None:
    """One :class:`ClassCountMismatchError` unless all teachers share classes, channels, input size, mean and std
    (an ensemble sees one batch of images)."""
    from .errors import ClassCountMismatchError

    first = teachers[0]
    for t in teachers[1:]:
        for key in ("num_classes", "in_chans", "input_size", "mean", "std"):
            if getattr(t, key) != getattr(first, key):
                raise ClassCountMismatchError(
                    f"teachers disagree on {key}: {first.source} has {getattr(first, key)}, {t.source} has {getattr(t, key)}"
                )


def open_teachers(sources: Any, *, device: Any = "cpu", **facts: Any) -> list[Teacher]:
    """:func:`open_teacher` for each of ``sources`` (one source or a sequence; the same ``facts`` for all),
    checked to agree (:func:`check_teachers_agree`)."""
    from .errors import TeacherError

    if isinstance(sources, (str, os.PathLike, Teacher)) or not isinstance(sources, (list, tuple)):
        sources = [sources]
    if not sources:
        raise TeacherError("give at least one teacher")
    teachers = [open_teacher(s, device=device, **facts) for s in sources]
    check_teachers_agree(teachers)
    return teachers


def load_teacher(path: Any, device: Any = "cpu", num_classes: int | None = None, **facts: Any):
    """``(model in eval mode, meta)`` of any teacher :func:`open_teacher` accepts.

    ``meta`` holds the facts (``num_classes``, ``in_chans``, ``input_size``, ``mean``, ``std``,
    ``teacher_hash``, ``path``) and, for a ddpipe teacher file, everything else it records
    (``model_cfg``, ``dataset``, ``metrics``, ``classwise_bn`` ...).
    """
    t = open_teacher(path, device=device, num_classes=num_classes, **facts)
    return t.model, t.meta


def load_teachers(sources: Any, device: Any = "cpu", **facts: Any):
    """``(models, metas)`` of several teachers that agree on their facts (see :func:`open_teachers`)."""
    teachers = open_teachers(sources, device=device, **facts)
    return [t.model for t in teachers], [t.meta for t in teachers]


# --- writing ----------------------------------------------------------------------------------------
def write_teacher(model, path: str, dataset=None, metrics: dict | None = None, config: dict | None = None) -> str:
    """Save a teacher file (format :data:`TEACHER_FORMAT`, atomically); returns its ``teacher_hash``.

    ``model`` is a model built by ``create_model`` (its ``model_cfg`` rebuilds it) with the facts taken
    from ``dataset`` (an :class:`ddpipe.evaluate.datasets.Dataset`), or a :class:`Teacher` (facts
    from it, ``dataset`` optional), e.g. a plain state dict opened with :func:`open_teacher` and
    written once as a self-describing file. The file records: ``model`` (the state dict),
    ``model_cfg``, ``teacher_hash``, ``num_classes``, ``in_chans``, ``input_size``, ``mean``, ``std``,
    ``dataset``, ``classwise_bn`` (+ ``class_momentum``), ``metrics``, ``config``, ``torch_version``, ``created``.
    """
    import torch

    from .checkpoint import save_atomic, unwrap_model
    from .errors import TeacherError
    from .models import has_classwise_bn, model_config

    if isinstance(model, Teacher):
        facts = {"num_classes": model.num_classes, "in_chans": model.in_chans, "input_size": model.input_size,
                 "mean": list(model.mean), "std": list(model.std)}
        described = dataset.describe() if dataset is not None else model.meta.get("dataset", {})
        model = model.model
    elif dataset is not None:
        facts = {"num_classes": dataset.num_classes, "in_chans": dataset.in_chans, "input_size": dataset.input_size,
                 "mean": list(dataset.mean), "std": list(dataset.std)}
        described = dataset.describe()
    else:
        raise TeacherError("write_teacher needs the dataset the model was trained on, or a Teacher")
    inner = unwrap_model(model)
    try:
        cfg = model_config(inner)
    except Exception:  # noqa: BLE001 - UnknownModelError: not built by create_model
        raise TeacherError(f"a {type(inner).__name__} not built by create_model cannot be written as a teacher file "
                           "(its architecture could not be rebuilt); pass the module itself as the teacher") from None
    sd = {k: v.detach().cpu() for k, v in inner.state_dict().items()}
    digest = state_dict_hash(sd)
    classwise = has_classwise_bn(inner)
    momentum = next((m.class_momentum for m in inner.modules() if hasattr(m, "class_momentum")), None)
    save_atomic({
        "format": TEACHER_FORMAT, "model": sd, "model_cfg": cfg, "teacher_hash": digest, **facts,
        "dataset": described, "classwise_bn": classwise, **({"class_momentum": momentum} if classwise else {}),
        "metrics": metrics or {}, "config": config or {}, "torch_version": str(torch.__version__),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }, path)
    return digest


# --- ensembles --------------------------------------------------------------------------------------
class Ensemble:
    """Teachers as one callable: G-VBSM's norm-equalised logit average (one teacher: its logits).

    Each teacher's logits are scaled to the mean Frobenius norm of all of them, then averaged.
    Takes :class:`Teacher` objects or plain modules. Counts forward passes (``calls``) and images
    (``images``) so callers can show what was computed.
    """

    def __init__(self, teachers, device):
        self.models = [t.model if isinstance(t, Teacher) else t for t in teachers]
        self.device = device
        self.calls = 0
        self.images = 0

    def __call__(self, images):
        import torch

        with torch.no_grad():
            x = images.to(self.device)
            outs = torch.stack([m(x).float() for m in self.models])  # [T, b, C]
            if len(self.models) > 1:
                norms = outs.flatten(1).norm(dim=1)  # Frobenius norm per teacher
                outs = outs / norms[:, None, None] * norms.mean()
        self.calls += 1
        self.images += int(images.shape[0])
        return outs.mean(0).cpu()
