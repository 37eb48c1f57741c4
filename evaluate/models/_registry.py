"""The model registry and its one front door, ``create_model`` (timm's pattern, in miniature).

An entrypoint is ``fn(num_classes, in_chans, input_size, **kwargs) -> nn.Module``, registered
under its own name. ``timm:<name>`` reaches any timm architecture without registering it.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
import sys
import warnings
from typing import Callable

from ..errors import UnknownModelError

__all__ = ["register_model", "list_models", "is_model", "model_entrypoint", "create_model", "model_config"]

_entrypoints: dict[str, Callable] = {}
_modules: dict[str, str] = {}


def register_model(fn: Callable) -> Callable:
    """Register ``fn`` under its own name and append it to its module's ``__all__``."""
    name = fn.__name__
    if name in _entrypoints:
        warnings.warn(f"model {name!r} registered twice; the later one wins", stacklevel=2)
    _entrypoints[name] = fn
    _modules[name] = fn.__module__
    mod = sys.modules.get(fn.__module__)
    if mod is not None and hasattr(mod, "__all__") and name not in mod.__all__:
        mod.__all__.append(name)
    return fn


def list_models(filter: str = "", exclude: str | tuple[str, ...] = ()) -> list[str]:
    """Sorted registered names matching an fnmatch ``filter`` (timm models are reached as ``timm:<name>``)."""
    names = sorted(_entrypoints)
    if filter:
        names = [n for n in names if fnmatch.fnmatch(n, filter)]
    for pattern in (exclude,) if isinstance(exclude, str) else exclude:
        names = [n for n in names if not fnmatch.fnmatch(n, pattern)]
    return names


def is_model(name: str) -> bool:
    return name in _entrypoints or name.startswith("timm:")


def model_entrypoint(name: str) -> Callable:
    """The function registered under ``name``; an unknown name is one error listing close names."""
    if name in _entrypoints:
        return _entrypoints[name]
    close = difflib.get_close_matches(name, list(_entrypoints), n=5, cutoff=0.4)
    hint = f"; close names: {', '.join(close)}" if close else ""
    raise UnknownModelError(
        f"unknown model {name!r}{hint} (list_models() gives all {len(_entrypoints)}; any timm model as timm:<name>)"
    )


def create_model(name: str, num_classes: int, in_chans: int = 3, input_size: int | None = None, **kwargs):
    """Build a model by name. Keyword arguments that are ``None`` are dropped, so unset flags keep
    each model's defaults (``input_size`` too: the entrypoint's own, 224 for timm). The model
    remembers its config as ``model.model_cfg`` (see :func:`model_config`)."""
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if name.startswith("timm:"):
        from .timm_models import create_timm_model

        input_size = 224 if input_size is None else input_size
        model = create_timm_model(name[len("timm:"):], num_classes=num_classes, in_chans=in_chans,
                                  input_size=input_size, **kwargs)
    else:
        fn = model_entrypoint(name)
        if input_size is None:
            input_size = inspect.signature(fn).parameters["input_size"].default
        model = fn(num_classes=num_classes, in_chans=in_chans, input_size=input_size, **kwargs)
    model.model_cfg = {"name": name, "num_classes": int(num_classes), "in_chans": int(in_chans),
                       "input_size": int(input_size), "kwargs": dict(kwargs)}
    return model


def model_config(model) -> dict:
    """The config ``create_model`` recorded on ``model`` (unwrapping DDP), enough to rebuild it."""
    inner = getattr(model, "module", model)
    cfg = getattr(inner, "model_cfg", None)
    if cfg is None:
        raise UnknownModelError(f"{type(inner).__name__} was not built by create_model, so it has no model_cfg")
    return dict(cfg)
