"""Command-line flags built from a config dataclass's fields: the one way every subcommand is declared.

For each field declared with :func:`ddpipe.config.option` (and ``cli=True``):

- the flag is ``--field-name`` plus the aliases in ``option(flags=...)``; ``positional=True`` makes it
  a positional argument instead;
- a field without a default is required;
- ``bool`` defaulting to False is ``--name``, defaulting to True is ``--no-name``, defaulting to None
  gets both (``--flip`` / ``--no-flip``);
- a ``tuple``/``list`` field repeats its flag (``--teacher A --teacher B``); with ``parse`` each
  occurrence may give several values (``--seeds 0,1,2``);
- ``choices`` limits the values (a function there is called when the parser is built), ``parse``
  turns the text into the value (a ``ValueError`` is the flag's one-line error), otherwise the
  field's type (int, float, str) does.

Flags that are not given are left out of the namespace, so the dataclass's own defaults apply:
:func:`config_from_args` is ``cls(**given)``, and the config's ``__post_init__`` validates.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any

from ddpipe.config import field_choices, flag_name

__all__ = ["add_config_arguments", "config_from_args", "cli_fields"]


def cli_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of ``cls`` that the command line sets."""
    return [f for f in dataclasses.fields(cls) if f.metadata.get("cli", True) and "help" in f.metadata]


def _unwrap(tp: Any) -> tuple[Any, bool]:
    """``int | None`` -> ``(int, True)``; ``str`` -> ``(str, False)``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
        return str, True
    return tp, False


def _converter(f: dataclasses.Field, base: Any):
    parse = f.metadata.get("parse")
    if parse is not None:
        def convert(text: str):
            try:
                return parse(text)
            except (ValueError, TypeError) as e:
                raise argparse.ArgumentTypeError(str(e)) from None

        convert.__name__ = getattr(parse, "__name__", "value")
        return convert
    if base in (int, float, str):
        return base
    return str


def _default_text(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        d = f.default
    elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        d = f.default_factory()  # type: ignore[misc]
    else:
        return ""
    return repr(d) if isinstance(d, str) else str(d)


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, *, skip: tuple[str, ...] = (),
                         all_optional: bool = False) -> argparse.ArgumentParser:
    """Add a flag for every command-line field of ``cls`` (grouped by ``option(group=...)``); returns ``parser``.

    ``skip`` leaves fields out; ``all_optional=True`` makes no flag required (a subcommand where the
    config is used only when some of its flags are given, e.g. ``verify --teacher``)."""
    hints = typing.get_type_hints(cls)
    groups: dict[str | None, Any] = {}
    fields = cli_fields(cls)
    fields = [f for f in fields if f.metadata.get("group") != "run"] + [f for f in fields if f.metadata.get("group") == "run"]
    for f in fields:  # the shared run options last in --help
        if f.name in skip:
            continue
        meta = f.metadata
        group_name = meta.get("group")
        if group_name not in groups:
            groups[group_name] = parser if group_name is None else parser.add_argument_group(group_name)
        target = groups[group_name]
        tp, optional = _unwrap(hints.get(f.name, str))
        origin = typing.get_origin(tp) or tp
        required = not all_optional and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING  # type: ignore[misc]
        help_ = meta["help"]
        kw: dict[str, Any] = {"default": argparse.SUPPRESS, "dest": f.name}
        if meta.get("metavar"):
            kw["metavar"] = meta["metavar"]
        choices = field_choices(f)
        if choices is not None:
            kw["choices"] = list(choices)
        flags = [flag_name(f.name), *meta.get("flags", ())]

        if meta.get("positional"):
            kw.pop("dest")
            if not required:
                kw["nargs"] = "?"
            kw["type"] = _converter(f, tp)
            target.add_argument(f.name, help=help_, **kw)
            continue
        if tp is bool:
            default = f.default
            if default is None or optional and default is not True:
                target.add_argument(*flags, action="store_true", help=help_, **kw)
                target.add_argument("--no-" + f.name.replace("_", "-"), dest=f.name, action="store_false",
                                    default=argparse.SUPPRESS, help=f"the opposite of {flags[0]}")
            elif default is True:
                no = ["--no-" + f.name.replace("_", "-"), *meta.get("flags", ())]
                target.add_argument(*no, action="store_false", help=help_, **kw)
            else:
                target.add_argument(*flags, action="store_true", help=help_, **kw)
            continue
        if origin in (tuple, list):
            elem = (typing.get_args(tp) or (str,))[0]
            kw["action"] = "extend" if meta.get("parse") is not None else "append"
            conv = _converter(f, elem)
            kw["type"] = (lambda text, _c=conv: _as_list(_c(text))) if kw["action"] == "extend" else conv
            kw["required"] = required
            target.add_argument(*flags, help=help_, **kw)
            continue
        kw["type"] = _converter(f, tp)
        kw["required"] = required
        default = _default_text(f)
        if default and "default" not in help_ and default != "None":
            help_ = f"{help_} (default {default})"
        target.add_argument(*flags, help=help_, **kw)
    return parser


def _as_list(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def config_from_args(cls: type, ns: argparse.Namespace, **extra: Any) -> Any:
    """``cls(**flags given, **extra)``: the flags left out keep the dataclass's defaults."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    kw = {}
    for k, v in vars(ns).items():
        if k in names and k not in extra:
            kw[k] = tuple(v) if isinstance(v, list) else v
    kw.update(extra)
    missing = [f for f in names.values() if f.init and f.name not in kw and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]  # type: ignore[misc]
    if missing:
        from ddpipe.errors import DDPipeError

        error = getattr(cls, "error", None)
        error = error if isinstance(error, type) and issubclass(error, DDPipeError) else DDPipeError
        f = missing[0]
        raise error(f"{f.name} is required ({f.name if f.metadata.get('positional') else flag_name(f.name)})")
    return cls(**kw)
