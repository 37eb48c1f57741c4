"""ddpipe.bench: registered benchmarks behind ``ddpipe bench NAME``.

A benchmark is a module with ``DESCRIPTION``, ``add_arguments(parser)`` and ``run(args) -> int``.
Each prints a table (stderr under ``--json``, else stdout), prints its rows as one JSON object on
stdout with ``--json``, and writes the same JSON under ``bench/results/``. Tests never time things.
Modules are imported only when their benchmark runs, so the CLI starts fast.
"""

from __future__ import annotations

import argparse
import importlib

from ddpipe.errors import DDPipeError

# name -> (module, one-line description shown by `ddpipe bench --help`)
_BENCHMARKS = {
    "store": ("ddpipe.bench.store", "label-store size and read throughput at real ImageNet shapes vs SRe2L's files"),
    "loader": ("ddpipe.bench.loader", "loader images/s: SRe2L's loader vs ddpipe torch and DALI-CPU, with decode-only ceilings"),
    "recover": ("ddpipe.bench.recover", "synthesis methods vs random real images: one teacher, one fixed relabel + student recipe"),
}


def list_benchmarks() -> dict[str, str]:
    return {name: desc for name, (_mod, desc) in sorted(_BENCHMARKS.items())}


def load_benchmark(name: str):
    if name not in _BENCHMARKS:
        raise DDPipeError(f"unknown benchmark {name!r}; choose one of {sorted(_BENCHMARKS)}")
    return importlib.import_module(_BENCHMARKS[name][0])


def run_benchmark(name: str, argv: list[str]) -> int:
    """Parse ``argv`` with the benchmark's own flags and run it."""
    mod = load_benchmark(name)
    parser = argparse.ArgumentParser(prog=f"ddpipe bench {name}", description=mod.DESCRIPTION)
    parser.add_argument("--json", action="store_true", help="print the rows as one JSON object on stdout")
    mod.add_arguments(parser)
    return int(mod.run(parser.parse_args(argv)) or 0)
