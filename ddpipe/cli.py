"""The ``ddpipe`` console script: one thin subcommand per phase.

Each subcommand parses flags, calls one library function and prints its result (one JSON object
on stdout with ``--json``). A :class:`ddpipe.errors.DDPipeError` becomes one line on stderr and
exit status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable

from ddpipe.errors import DDPipeError


def _emit(args: argparse.Namespace, result: Any, text: Callable[[Any], str]) -> None:
    if getattr(args, "json", False):
        sys.stdout.write(json.dumps(result, default=json_default) + "\n")
    else:
        sys.stdout.write(text(result) + "\n")


def json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def human_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.2f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def _info_text(info: dict) -> str:
    keys = [
        "path", "format_version", "num_samples", "num_classes", "epochs", "batch_size", "k",
        "value_codec", "temperature", "units", "complete_units", "keep",
    ]
    lines = [f"{k:>26}: {info[k]}" for k in keys]
    lines.append(f"{'bytes_on_disk':>26}: {info['bytes_on_disk']} ({human_bytes(info['bytes_on_disk'])})")
    bpse = info["bytes_per_sample_epoch"]
    lines.append(f"{'bytes_per_sample_epoch':>26}: {bpse:.2f}" if bpse is not None else f"{'bytes_per_sample_epoch':>26}: -")
    lines.append(
        f"{'sre2l_equivalent_bytes':>26}: {info['sre2l_equivalent_bytes']} ({human_bytes(info['sre2l_equivalent_bytes'])})"
    )
    ratio = info["compression_vs_sre2l"]
    lines.append(f"{'compression_vs_sre2l':>26}: {ratio:.1f}x" if ratio else f"{'compression_vs_sre2l':>26}: -")
    return "\n".join(lines)


# --- subcommands --------------------------------------------------------------------------------
def cmd_info(args: argparse.Namespace) -> int:
    from ddpipe.labelstore import store_info

    _emit(args, store_info(args.store, backend=args.backend), _info_text)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from ddpipe.labelstore import verify_store

    result = verify_store(args.store, backend=args.backend, progress=not args.json and sys.stderr.isatty())

    def text(r: dict) -> str:
        if r["ok"]:
            return f"ok: {r['checked_units']} of {r['units']} units checked, no problems"
        rows = [f"{len(r['problems'])} problem(s) in {args.store}:"]
        for p in r["problems"]:
            span = f"-{p['last_unit']}" if "last_unit" in p else ""
            rows.append(f"  unit {p['unit']}{span} (epoch {p['epoch']}, batch {p['batch']}) {p['array']}: {p['error']}")
        return "\n".join(rows)

    _emit(args, result, text)
    return 0 if result["ok"] else 1


def cmd_prune(args: argparse.Namespace) -> int:
    from ddpipe.labelstore import open_store, prune_store, store_info
    from ddpipe.labelstore.prune import select_units

    if args.dry_run:
        r = open_store(args.src)
        kept = select_units(r.plan, args.keep, args.granularity, args.seed)
        result = {"src": args.src, "out": args.out, "units": r.num_units, "kept_units": int(len(kept)), "dry_run": True}
        _emit(args, result, lambda x: f"would keep {x['kept_units']} of {x['units']} units into {x['out']}")
        return 0
    prune_store(
        args.src, args.out, args.keep, granularity=args.granularity, seed=args.seed,
        overwrite=args.overwrite, progress=not args.json,
    )
    _emit(args, store_info(args.out), _info_text)
    return 0


def cmd_squeeze(args: argparse.Namespace) -> int:
    from ddpipe.evaluate.distributed import is_main_process
    from ddpipe.evaluate.squeeze import run, summary_text

    result = run(args)
    if is_main_process():  # under torchrun only rank 0 prints
        _emit(args, result, summary_text)
    return 0


def _phase(module: str):
    """A subcommand running ``ddpipe.evaluate.<module>.run`` and printing its result (rank 0 only)."""

    def cmd(args: argparse.Namespace) -> int:
        import importlib

        from ddpipe.evaluate.distributed import is_main_process

        mod = importlib.import_module(f"ddpipe.evaluate.{module}")
        result = mod.run(args)
        if is_main_process():
            _emit(args, result, mod.summary_text)
        return 0

    return cmd


def cmd_bench(args: argparse.Namespace) -> int:
    from ddpipe.bench import run_benchmark

    return run_benchmark(args.bench_name, args.bench_args)


def cmd_demo(args: argparse.Namespace) -> int:
    if args.demo_kind == "store":
        from ddpipe.demo import run_demo

        return run_demo(args)
    from ddpipe.evaluate import demo

    if args.demo_kind is None:  # bare `ddpipe demo`: the chain with its defaults
        args = demo.add_arguments(argparse.ArgumentParser()).parse_args([])
    _emit(args, demo.run(args), demo.summary_text)
    return 0


# --- parser -----------------------------------------------------------------------------------------
def keep_fraction(text: str) -> float:
    """Accept 0.025, 1/40 or 40x for 'keep one in forty'."""
    t = text.strip().lower()
    try:
        if t.endswith("x"):
            value = 1.0 / float(t[:-1])
        elif "/" in t:
            num, den = t.split("/", 1)
            value = float(num) / float(den)
        else:
            value = float(t)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"expected a fraction such as 0.025, 1/40 or 40x, got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"keep must be in (0, 1], got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from ddpipe import __version__

    p = argparse.ArgumentParser(
        prog="ddpipe",
        description="Soft-label storage, replay and synthesis for large-scale dataset distillation.",
    )
    p.add_argument("--version", action="version", version=f"ddpipe {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def store_cmd(name: str, help_: str, func) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.add_argument("--json", action="store_true", help="print one JSON object on stdout")
        sp.add_argument(
            "--backend", choices=["auto", "tensorstore", "zarr"], default="auto",
            help="read path: tensorstore when installed (default auto), or zarr-python",
        )
        sp.set_defaults(func=func)
        return sp

    sp = store_cmd("info", "Summarise a label store: shape, completeness, bytes, ratio to SRe2L's layout.", cmd_info)
    sp.add_argument("store", help="path of the store")

    sp = store_cmd("verify", "Read every chunk of a store and check checksums, completeness and values; exit 1 on problems.", cmd_verify)
    sp.add_argument("store", help="path of the store")

    sp = store_cmd("prune", "Write a standalone store holding a random subset of a store's units (LPLD).", cmd_prune)
    sp.add_argument("src", help="path of the source store")
    sp.add_argument("--keep", type=keep_fraction, required=True, help="fraction of units to keep: 0.025, 1/40 or 40x")
    sp.add_argument("--granularity", choices=["batch", "epoch"], default="batch", help="keep random batches (default) or whole epochs")
    sp.add_argument("--seed", type=int, default=0, help="seed of the random choice (default 0)")
    sp.add_argument("--out", required=True, help="path of the new store")
    sp.add_argument("--overwrite", action="store_true", help="replace whatever is at --out")
    sp.add_argument("--dry-run", action="store_true", help="only report how many units would be kept")

    from ddpipe.evaluate.squeeze import add_arguments as squeeze_arguments

    help_ = "Train a teacher on real data, or wrap local torchvision / timm weights as one (--init)."
    sp = sub.add_parser("squeeze", help=help_, description=help_)
    squeeze_arguments(sp).set_defaults(func=cmd_squeeze)

    from ddpipe.evaluate import recover, relabel, show, student

    help_ = ("Synthesise an image set from teacher(s) (sre2l, cda, lpld, gvbsm, delt, dm) or select real images "
             "(random, herding).")
    sp = sub.add_parser("recover", help=help_, description=help_)
    recover.add_arguments(sp).set_defaults(func=_phase("recover"))

    help_ = "Draw a grid of an image set (one row per class) into a PNG."
    sp = sub.add_parser("show", help=help_, description=help_)
    show.add_arguments(sp).set_defaults(func=_phase("show"))

    help_ = "Run the teacher(s) over the replay schedule and write the soft-label store (--keep: prune first)."
    sp = sub.add_parser("relabel", help=help_, description=help_)
    relabel.add_arguments(sp).set_defaults(func=_phase("relabel"))

    help_ = "Train a student on distilled images: replay a store, label live (--online-teacher) or --hard-labels."
    sp = sub.add_parser("train", help=help_, description=help_)
    student.add_arguments(sp).set_defaults(func=_phase("student"))

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
        description="`ddpipe demo` (= `ddpipe demo chain`): teacher -> images -> relabel -> prune -> train -> "
        "validate on Fashion-MNIST, about 15 minutes on 2 cores. `ddpipe demo store`: write a store, prune it, "
        "corrupt a copy and catch it with verify, in seconds.",
    )
    dsub = sp.add_subparsers(dest="demo_kind", metavar="{chain,store}")
    chain_demo.add_arguments(dsub.add_parser("chain", help="the whole chain (the default)"))
    st = dsub.add_parser("store", help="the label store: write, prune, info, corrupt, verify")
    st.add_argument("--out", default="demo_out/store", help="working directory (default ./demo_out/store)")
    st.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    sp.set_defaults(func=cmd_demo, demo_kind=None)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["demo"] and len(argv) > 1 and argv[1].startswith("-") and argv[1] not in ("-h", "--help"):
        argv.insert(1, "chain")  # `ddpipe demo --out X` is `ddpipe demo chain --out X`
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except DDPipeError as e:
        sys.stderr.write(f"ddpipe {args.command}: error: {e}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(f"ddpipe {args.command}: interrupted\n")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
