"""The registries of ``ddpipe.synth``: recipes (``method.tag``) and loss terms, after timm's ``_registry``.

A recipe is a function returning a :class:`~ddpipe.synth.config.RecoverConfig`; it is registered
under ``family.tag`` and the first tag registered for a family is its default, so ``sre2l``
means ``sre2l.in1k``. Loss terms are classes registered by name (``ce``, ``bn_stats`` ...).
The dicts below are the only module-level state of the package.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import warnings
from typing import Callable

from .errors import UnknownLossError, UnknownMethodError

__all__ = ["register_method", "list_methods", "is_method", "create_method", "default_recipe", "register_loss",
           "list_losses", "create_loss", "method_doc"]

_RECIPES: dict[str, Callable] = {}  # "family.tag" -> recipe function
_DEFAULT_TAG: dict[str, str] = {}  # family -> default tag (the first registered)
_LOSSES: dict[str, type] = {}  # loss term name -> class


def register_method(name: str, default: bool = False):
    """Register ``fn() -> RecoverConfig`` as recipe ``name`` (``family.tag``); a duplicate name warns."""
    if "." not in name:
        raise ValueError(f"recipe names are family.tag, got {name!r}")

    def wrap(fn: Callable) -> Callable:
        if name in _RECIPES:
            warnings.warn(f"synth recipe {name!r} registered twice; the later one wins", stacklevel=2)
        _RECIPES[name] = fn
        family, tag = name.split(".", 1)
        if default or family not in _DEFAULT_TAG:
            _DEFAULT_TAG[family] = tag
        return fn

    return wrap


def list_methods(filter: str = "", families: bool = False) -> list[str]:
    """Registered recipe names (``sre2l.in1k`` ...) matching an fnmatch ``filter``; ``families`` -> family names."""
    names = sorted(_DEFAULT_TAG) if families else sorted(_RECIPES)
    return [n for n in names if not filter or fnmatch.fnmatch(n, filter)]


def default_recipe(name: str) -> str:
    """``family`` -> ``family.<default tag>``; a full recipe name is returned unchanged if registered."""
    if name in _RECIPES:
        return name
    if name in _DEFAULT_TAG:
        return f"{name}.{_DEFAULT_TAG[name]}"
    raise UnknownMethodError(
        f"unknown synth method {name!r}; methods: {', '.join(list_methods(families=True))}; "
        f"recipes: {', '.join(list_methods())}"
    )


def is_method(name: str) -> bool:
    return name in _RECIPES or name in _DEFAULT_TAG


def method_doc(name: str) -> str:
    return (_RECIPES[default_recipe(name)].__doc__ or "").strip()


def create_method(name: str, **overrides):
    """The config of recipe ``name`` with ``overrides`` applied; overrides whose value is None are ignored."""
    recipe = default_recipe(name)
    cfg = _RECIPES[recipe]()
    fields = {f.name for f in dataclasses.fields(cfg)}
    given = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(given) - fields)
    if unknown:
        from .errors import SynthConfigError

        raise SynthConfigError(f"{recipe} has no option(s) {unknown}; options: {sorted(fields)}")
    return dataclasses.replace(cfg, recipe=recipe, **given)


def register_loss(cls: type) -> type:
    """Class decorator: register a loss term under ``cls.name``."""
    if cls.name in _LOSSES:
        warnings.warn(f"synth loss term {cls.name!r} registered twice; the later one wins", stacklevel=2)
    _LOSSES[cls.name] = cls
    return cls


def list_losses() -> list[str]:
    return sorted(_LOSSES)


def create_loss(name: str, **kwargs):
    if name not in _LOSSES:
        raise UnknownLossError(f"unknown synth loss term {name!r}; terms: {', '.join(list_losses())}")
    return _LOSSES[name](**kwargs)
