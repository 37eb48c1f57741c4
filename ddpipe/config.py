"""Typed phase configs: frozen dataclasses whose fields carry their own flag and help text.

Every phase (squeeze, recover, relabel, train, show, ...) is a library call first::

    config = SqueezeConfig(dataset="digits", out="runs/teacher", epochs=5)   # bad values raise here
    result = ddpipe.evaluate.squeeze.run(config)                              # a typed result
    result.to_dict()                                                          # what results.json holds

A phase module declares its config with :func:`option` fields (``@dataclass(frozen=True,
kw_only=True)``), validates it in ``__post_init__`` with the ``check_*`` helpers below (raising the
phase's :class:`~ddpipe.errors.DDPipeError` subclass and naming the field), and exposes
``run(config) -> Result`` and ``summary_text(result) -> str``. The ``ddpipe`` CLI builds each
subcommand's flags from the config's fields (:mod:`ddpipe.cli`) and holds no logic of its own.

An option's whole life is its field: its flag and aliases, its help, its choices (checked by
:func:`check_choices`, never listed a second time) and whether it changes the result
(``changes_result``): :func:`result_fields` are what a ``--resume`` must share with the run it
continues, and :func:`check_resume` refuses one that differs in one line naming the flags.

This module imports only the standard library (and :mod:`ddpipe._files`, which does too), like :mod:`ddpipe.errors`: every package may use it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Iterable

from ddpipe._files import is_url

__all__ = [
    "option",
    "flag_name",
    "check_range",
    "check_choice",
    "check_choices",
    "field_choices",
    "result_fields",
    "result_values",
    "changed_results",
    "check_resume",
    "flag_text",
    "check_finite",
    "check_int",
    "check_out_path",
    "parse_key_values",
    "config_to_dict",
    "config_from_dict",
    "Result",
]

_MISSING = dataclasses.MISSING


def option(
    default: Any = _MISSING,
    *,
    help: str,
    default_factory: Callable[[], Any] | Any = _MISSING,
    flags: tuple[str, ...] = (),
    choices: Iterable[Any] | Callable[[], Iterable[Any]] | None = None,
    metavar: str | None = None,
    group: str | None = None,
    parse: Callable[[str], Any] | None = None,
    cli: bool = True,
    positional: bool = False,
    changes_result: bool = True,
) -> Any:
    """A config field with its command-line form.

    ``help`` is the flag's help text (say the default in it when it is not obvious; for a bool
    defaulting to True it describes ``--no-name``). The flag is ``--field-name``; ``flags`` adds
    aliases (``("-b",)``, or an old name kept working: ``("--topk",)``). A field without a default
    is a required flag. ``list``/``tuple`` fields repeat their flag (``--teacher A --teacher B``); a
    bool defaulting to False is ``--name``, one defaulting to True is ``--no-name``, one defaulting
    to None gets both. ``positional=True`` makes the field a positional argument (``ddpipe show
    DIR``) instead of a flag.

    ``choices`` limits the values: a collection, or a function returning one for a registry that
    grows at run time (``list_codecs``); the CLI and :func:`check_choices` both read it from here
    (None is allowed where the default is None). ``parse`` turns the command-line string into the
    value (``keep_fraction``), ``group`` is the help section, and ``cli=False`` keeps a field out of
    the CLI (Python-only: a model object, a callback).

    ``changes_result=False`` marks a field that cannot change what the run computes (where and how
    fast it runs, where it writes, progress, checks and stopping points): a ``--resume`` may change
    it; every other field must equal the resumed run's (:func:`result_fields`, :func:`check_resume`).
    """
    meta = {
        "help": help,
        "flags": tuple(flags),
        "choices": choices if choices is None or callable(choices) else tuple(choices),
        "metavar": metavar,
        "group": group,
        "parse": parse,
        "cli": cli,
        "positional": positional,
        "changes_result": bool(changes_result),
    }
    if default_factory is not _MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def flag_name(field_name: str) -> str:
    """``batch_size`` -> ``--batch-size``."""
    return "--" + field_name.replace("_", "-")


def _field(cls_or_config: Any, name: str) -> dataclasses.Field | None:
    return next((f for f in dataclasses.fields(cls_or_config) if f.name == name), None)


def flag_text(cls_or_config: Any, name: str) -> str:
    """How a user names field ``name`` of a config: its flag and long aliases (``--k/--topk``),
    the bare name for positional and Python-only fields."""
    f = _field(cls_or_config, name)
    if f is None or not f.metadata.get("cli", True) or f.metadata.get("positional"):
        return name
    return "/".join([flag_name(name), *(a for a in f.metadata.get("flags", ()) if a.startswith("--"))])


def field_choices(f: dataclasses.Field) -> tuple | None:
    """The values ``option(choices=...)`` allows for field ``f`` (a function is called now), or None."""
    choices = f.metadata.get("choices")
    if choices is None:
        return None
    return tuple(choices() if callable(choices) else choices)


def _default(f: dataclasses.Field) -> Any:
    if f.default is not _MISSING:
        return f.default
    if f.default_factory is not _MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return _MISSING


# --- validation: one line per rule, each error naming the field -----------------------------------------
def check_range(
    error: type[Exception],
    name: str,
    value: Any,
    *,
    min: float | None = None,
    max: float | None = None,
    min_exclusive: bool = False,
    allow_none: bool = False,
) -> None:
    """Raise ``error`` naming ``name`` unless ``value`` is a finite number in the range (None allowed if asked)."""
    if value is None:
        if allow_none:
            return
        raise error(f"{name} is required")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise error(f"{name} must be a number, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise error(f"{name} must be a finite number, got {value!r}")
    if min is not None and (value <= min if min_exclusive else value < min):
        raise error(f"{name} must be {'>' if min_exclusive else '>='} {min}, got {value!r}")
    if max is not None and value > max:
        raise error(f"{name} must be <= {max}, got {value!r}")


def check_finite(error: type[Exception], name: str, value: Any, allow_none: bool = False) -> None:
    """Raise ``error`` naming ``name`` unless ``value`` is a finite number."""
    check_range(error, name, value, allow_none=allow_none)


def check_choice(error: type[Exception], name: str, value: Any, allowed: Iterable[Any]) -> None:
    """Raise ``error`` naming ``name`` unless ``value`` is one of ``allowed``."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise error(f"{name} must be one of {', '.join(map(str, allowed))}, got {value!r}")


def check_choices(config: Any, error: type[Exception] | None = None) -> None:
    """Check every field of ``config`` declared with ``option(choices=...)`` against those choices
    (each item of a tuple/list field; None where the default is None); raise ``error`` (default: the
    config's ``error`` class) naming the first bad field. The one choice check of every config."""
    error = error or getattr(config, "error", None) or ValueError
    for f in dataclasses.fields(config):
        allowed = field_choices(f)
        if allowed is None:
            continue
        value = getattr(config, f.name)
        if value is None and _default(f) is None:
            continue
        for v in value if isinstance(value, (tuple, list)) else (value,):
            check_choice(error, f.name, v, allowed)


def check_int(
    error: type[Exception], name: str, value: Any, *, min: int | None = None, max: int | None = None,
    allow_none: bool = False,
) -> None:
    """Raise ``error`` naming ``name`` unless ``value`` is an integer in the range (None allowed if asked)."""
    if value is None and allow_none:
        return
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise error(f"{name} must be an integer, got {value!r}")
    check_range(error, name, value, min=min, max=max, allow_none=allow_none)


def check_out_path(error: type[Exception], name: str, path: Any, *, kind: str = "directory") -> None:
    """Raise ``error`` naming ``name`` when ``path`` is empty or names an existing file where a
    ``kind`` (a directory) is to be written."""
    import os

    if path is None or not str(os.fspath(path)).strip():
        raise error(f"{name} is required")
    p = os.path.expanduser(os.fspath(path))
    if not is_url(p) and os.path.exists(p) and not os.path.isdir(p):
        raise error(f"{name} {p} is an existing file, not a {kind}; choose another path")


def parse_key_values(error: type[Exception], name: str, items: Any) -> dict:
    """``("width=48", "norm=\"bn\"")`` (values read as JSON where they parse, else strings) or a dict
    -> a dict with ``-`` in keys turned into ``_``; anything else raises ``error`` naming ``name``."""
    import json

    if items is None:
        return {}
    if isinstance(items, dict):
        pairs = list(items.items())
    else:
        if isinstance(items, str):
            items = (items,)
        pairs = []
        for item in items:
            if not isinstance(item, str) or "=" not in item or not item.split("=", 1)[0].strip():
                raise error(f"{name} expects KEY=VALUE, got {item!r}")
            k, v = item.split("=", 1)
            try:
                pairs.append((k, json.loads(v)))
            except json.JSONDecodeError:
                pairs.append((k, v))
    out = {}
    for k, v in pairs:
        key = str(k).strip().replace("-", "_")
        if not key.isidentifier():
            raise error(f"{name}: {k!r} is not a keyword argument name")
        out[key] = v
    return out


# --- configs and results as JSON ----------------------------------------------------------------------
def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if hasattr(value, "__fspath__"):
        return str(value)
    return value


def config_to_dict(config: Any) -> dict:
    """The config's fields as JSON-ready values (tuples as lists, paths as strings); Python-only
    fields (``cli=False``) whose values are objects are recorded by their type name."""
    out = {}
    for f in dataclasses.fields(config):
        v = getattr(config, f.name)
        if not f.metadata.get("cli", True) and v is not None and not isinstance(v, (str, int, float, bool, list, tuple, dict)):
            v = f"<{type(v).__name__}>"
        out[f.name] = _plain(v)
    return out


def result_fields(cls: Any) -> tuple[str, ...]:
    """The fields of a config class (or config) that change what its run computes: every field
    except those declared ``option(changes_result=False)``. A resumed run must share them all."""
    return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get("changes_result", True))


def result_values(config: Any) -> dict:
    """``{field: value}`` of ``config``'s :func:`result_fields`, JSON-ready (as :func:`config_to_dict`)."""
    d = config_to_dict(config)
    return {name: d[name] for name in result_fields(config)}


def changed_results(cls: Any, old: dict, new: dict) -> list[tuple[str, Any, Any]]:
    """``[(field, old value, new value)]`` for each of ``cls``'s :func:`result_fields` where the
    config dicts ``old`` (recorded by an earlier run) and ``new`` differ. A field ``old`` lacks is looked
    up under its old names (the long flag aliases: ``k`` was ``topk``), else counts as its default (a
    record made before the field existed); JSON lists equal tuples."""
    changes = []
    for name in result_fields(cls):
        f = _field(cls, name)
        b = new.get(name, _MISSING)
        olds = [name, *(a[2:].replace("-", "_") for a in f.metadata.get("flags", ()) if a.startswith("--"))]
        a = next((old[n] for n in olds if n in old), _MISSING)
        if a is _MISSING:
            a = _plain(_default(f))
        if a is _MISSING or b is _MISSING:
            continue
        if _plain(a) != _plain(b):
            changes.append((name, a, b))
    return changes


def check_resume(cls: Any, old: dict, new: dict, error: type[Exception], where: str,
                 hint: str = "rerun with the original values or pass --overwrite") -> None:
    """Refuse (``error``, one line) to continue ``where`` (made with config dict ``old``) with config dict
    ``new`` when any of ``cls``'s :func:`result_fields` differ, naming each flag with its old and new value:
    ``runs/t was made with other settings (--min-scale 0.08 -> 0.9); rerun with ...``."""
    changes = changed_results(cls, old, new)
    if changes:
        text = "; ".join(f"{flag_text(cls, name)} {_short(a)} -> {_short(b)}" for name, a, b in changes)
        raise error(f"{where} was made with other settings ({text}); {hint}")


def _short(value: Any) -> str:
    if value is None:
        return "(not given)"
    text = repr(value) if isinstance(value, str) else str(value)
    text = " ".join(text.split())  # one line, whatever the value holds
    return text if len(text) <= 80 else text[:77] + "..."


def config_from_dict(cls: type, d: dict) -> Any:
    """``cls(**d)`` keeping only ``cls``'s fields, lists turned back into tuples where the default is one."""
    kw = {}
    for f in dataclasses.fields(cls):
        if f.name not in d:
            continue
        v = d[f.name]
        if isinstance(v, list) and isinstance(f.default, tuple):
            v = tuple(v)
        kw[f.name] = v
    return cls(**kw)


@dataclasses.dataclass(frozen=True)
class Result:
    """Base of the phases' typed results. A field is read one way, as an attribute (``result.final``);
    ``to_dict()`` is what the phase writes to ``results.json`` (and prints with ``--json``), and
    ``from_dict()`` reads that back."""

    def to_dict(self) -> dict:
        return _plain(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Result":
        """The result back from its ``to_dict()`` (a results.json), ignoring keys it does not hold."""
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})
