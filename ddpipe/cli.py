"""The ``ddpipe`` console script: it only parses.

Every phase subcommand is declared one way: its flags are built from the phase's config dataclass
(:mod:`ddpipe._flags`), the parsed flags become the config (which validates itself), and the
phase's ``run(config)`` returns a typed result that is printed with the phase's ``summary_text``
(or as one JSON object on stdout with ``--json``, the one option the CLI adds itself; ``--device``,
``--threads``, ``--resume`` and ``--no-progress`` are fields of the shared run options,
:class:`ddpipe.evaluate._phase.RunOptions`). ``ddpipe bench NAME`` does the same with the
benchmark module's ``Config``.

Errors: a :class:`ddpipe.errors.DDPipeError`, an ``OSError`` (a full disk, a permission, a path
that exists) and a missing optional dependency are one line on stderr and exit status 2; flags
argparse rejects are one line and exit 2 too. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from typing import Any, Callable

from ddpipe._format import json_default
from ddpipe.errors import DDPipeError

# subcommand -> (module, config class, help); the module has run(config) and summary_text(result)
PHASES = {
    "info": ("ddpipe.evaluate.info", "InfoConfig",
             "Summarise a label store: shape, completeness, bytes, ratio to SRe2L's layout."),
    "verify": ("ddpipe.evaluate.verify", "VerifyConfig",
               "Read every chunk of a store and check checksums, completeness and values; with --teacher, also "
               "re-run the teacher on --sample units and compare; exit 1 on problems."),
    "squeeze": ("ddpipe.evaluate.squeeze", "SqueezeConfig",
                "Train a teacher on real data, or wrap local torchvision / timm weights as one (--init)."),
    "recover": ("ddpipe.evaluate.recover", "RecoverRunConfig",
                "Synthesise an image set from teacher(s) (sre2l, cda, lpld, gvbsm, delt, dm) or select real images "
                "(random, herding)."),
    "show": ("ddpipe.evaluate.show", "ShowConfig", "Draw a grid of an image set (one row per class) into a PNG."),
    "relabel": ("ddpipe.evaluate.relabel", "RelabelConfig",
                "Run the teacher(s) over the replay schedule and write the soft-label store (--keep: prune first)."),
    "prune": ("ddpipe.evaluate.prune", "PruneConfig",
              "Write a standalone store holding a random subset of a store's units (LPLD)."),
    "train": ("ddpipe.evaluate.student", "TrainConfig",
              "Train a student on distilled images: replay a store, label live (--online-teacher) or --hard-labels."),
    "cache": ("ddpipe.pipeline.cache", "CacheConfig",
              "Decode an image set once into a uint8 cache the loaders read (refused once the images change)."),
    "import": ("ddpipe.pipeline.interop.importer", "ImportConfig",
               "Import a label folder of SRe2L, LPLD, LPQLD, G-VBSM or FKD into a store (logits kept; auto detects)."),
    "export": ("ddpipe.pipeline.interop.exporter", "ExportConfig",
               "Export a store as the label folder SRe2L's unmodified train_FKD.py reads (refused with the reason)."),
}

# optional dependencies: import name -> the extra that installs it
_EXTRAS = {"torch": "torch", "torchvision": "torch", "timm": "torch", "PIL": "torch", "webdataset": "torch",
           "nvidia": "dali", "tensorstore": "fast"}


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``ddpipe train: error: ...``), exit status 2."""

    def error(self, message: str):  # noqa: D401 - argparse's hook
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _emit(as_json: bool, result: Any, text: Callable[[Any], str]) -> None:
    if as_json:
        payload = result.to_dict() if hasattr(result, "to_dict") else result
        sys.stdout.write(json.dumps(payload, default=json_default) + "\n")
    else:
        sys.stdout.write(text(result) + "\n")


def _is_main_rank() -> bool:
    """Under torchrun only rank 0 prints (read from the environment: no torch import)."""
    return os.environ.get("RANK", "0") == "0"


def _add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", default=False, help="print one JSON object on stdout")


# --- phase subcommands: flags from the config, one run, one printed result ----------------------------------
def _phase_command(module: str, cls_name: str):
    def cmd(args: argparse.Namespace) -> int:
        from ddpipe._flags import config_from_args

        mod = importlib.import_module(module)
        config = config_from_args(getattr(mod, cls_name), args)
        result = mod.run(config)
        if _is_main_rank():
            _emit(args.json, result, mod.summary_text)
        return 0 if getattr(result, "ok", True) else 1  # a result with an ``ok`` field (verify): problems found

    return cmd


def _add_phase(sub, name: str) -> None:
    from ddpipe._flags import add_config_arguments

    module, cls_name, help_ = PHASES[name]
    mod = importlib.import_module(module)
    sp = sub.add_parser(name, help=help_, description=(mod.__doc__ or help_).strip().split("\n\n")[0])
    add_config_arguments(sp, getattr(mod, cls_name))
    _add_json(sp)
    sp.set_defaults(func=_phase_command(module, cls_name))


# --- bench and demo --------------------------------------------------------------------------------------
def cmd_bench(args: argparse.Namespace) -> int:
    """``ddpipe bench NAME ...``: the benchmark's flags from its ``Config``, then ``run(config)``."""
    from ddpipe._flags import add_config_arguments, config_from_args
    from ddpipe.bench import load_benchmark

    mod = load_benchmark(args.bench_name)
    parser = _Parser(prog=f"ddpipe bench {args.bench_name}", description=getattr(mod, "DESCRIPTION", None))
    _add_json(parser)
    cls = mod.Config
    add_config_arguments(parser, cls, skip=("json",))
    ns = parser.parse_args(args.bench_args)
    config = config_from_args(cls, ns, **({"json": ns.json} if "json" in cls.__dataclass_fields__ else {}))
    result = mod.run(config)
    return result if isinstance(result, int) else 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ddpipe._flags import config_from_args

    if args.demo_kind == "store":
        from ddpipe import demo as store_demo

        result = store_demo.run(config_from_args(store_demo.StoreDemoConfig, args))
        _emit(getattr(args, "json", False), result, store_demo.summary_text)
        return 0 if result["corruption"]["caught"] else 1
    from ddpipe.evaluate import demo

    config = demo.DemoConfig() if args.demo_kind is None else config_from_args(demo.DemoConfig, args)
    _emit(getattr(args, "json", False), demo.run(config), demo.summary_text)
    return 0


# --- parser -----------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from ddpipe import __version__
    from ddpipe._flags import add_config_arguments

    p = _Parser(
        prog="ddpipe",
        description="Soft-label storage, replay and synthesis for large-scale dataset distillation.",
    )
    p.add_argument("--version", action="version", version=f"ddpipe {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    for name in ("info", "verify", "prune", "squeeze", "recover", "show", "relabel", "train", "cache", "import", "export"):
        _add_phase(sub, name)

    from ddpipe.bench import list_benchmarks

    names = list_benchmarks()
    sp = sub.add_parser(
        "bench",
        help="Run a benchmark: prints a table and writes JSON under bench/results/.",
        description="Run a benchmark (`ddpipe bench NAME --help` for its flags). Benchmarks: "
        + "; ".join(f"{n}: {d}" for n, d in names.items()),
    )
    sp.add_argument("bench_name", metavar="NAME", choices=sorted(names), help=f"one of {sorted(names)}")
    sp.add_argument("bench_args", nargs=argparse.REMAINDER, help="the benchmark's own flags")
    sp.set_defaults(func=cmd_bench)

    from ddpipe.evaluate import demo as chain_demo

    sp = sub.add_parser(
        "demo", help="The whole chain on Fashion-MNIST (default), or `demo store`: the label store in seconds.",
        description="`ddpipe demo` (= `ddpipe demo chain`): teacher -> synthesised images (--method, default "
        "sre2l) -> relabel -> prune -> train -> validate on Fashion-MNIST, beside random real images. "
        "`ddpipe demo store`: write a store, prune it, corrupt a copy and catch it with verify, in seconds.",
    )
    dsub = sp.add_subparsers(dest="demo_kind", metavar="{chain,store}")
    chain = dsub.add_parser("chain", help="the whole chain (the default)")
    add_config_arguments(chain, chain_demo.DemoConfig)
    _add_json(chain)
    from ddpipe import demo as store_demo

    st = dsub.add_parser("store", help="the label store: write, prune, info, corrupt, verify")
    add_config_arguments(st, store_demo.StoreDemoConfig)
    _add_json(st)
    sp.set_defaults(func=cmd_demo, demo_kind=None)
    return p


def _one_line(e: BaseException) -> str:
    """The message of ``e`` on one line (a worker's re-raised error: its last line, the original error)."""
    text = str(e).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if len(lines) > 1 and "Traceback" in text:
        return lines[-1]
    return " ".join(lines) if lines else type(e).__name__


def _os_error_line(e: OSError) -> str:
    what = e.strerror or _one_line(e)
    paths = [p for p in (e.filename, getattr(e, "filename2", None)) if p]
    return f"{what}: {' -> '.join(map(str, paths))}" if paths else what


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["demo"] and len(argv) > 1 and argv[1].startswith("-") and argv[1] not in ("-h", "--help"):
        argv.insert(1, "chain")  # `ddpipe demo --out X` is `ddpipe demo chain --out X`
    command = argv[0] if argv and not argv[0].startswith("-") else "ddpipe"
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        command = args.command
        return int(args.func(args) or 0)
    except DDPipeError as e:
        sys.stderr.write(f"ddpipe {command}: error: {_one_line(e)}\n")
        return 2
    except ModuleNotFoundError as e:
        root = (e.name or "").split(".")[0]
        if root in _EXTRAS:
            sys.stderr.write(f"ddpipe {command}: error: this needs {root}, which is not installed; "
                             f"install it with: pip install 'ddpipe[{_EXTRAS[root]}]'\n")
            return 2
        raise
    except OSError as e:
        sys.stderr.write(f"ddpipe {command}: error: {_os_error_line(e)}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(f"ddpipe {command}: interrupted\n")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
