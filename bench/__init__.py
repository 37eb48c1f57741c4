"""ddpipe.bench: registered benchmarks behind ``ddpipe bench NAME``.

A benchmark is a module with ``DESCRIPTION``, a ``Config`` dataclass whose fields are declared with
:func:`ddpipe.config.option` (the CLI builds ``ddpipe bench NAME``'s flags from them, exactly as for
the phases; a ``json`` field, if declared, receives ``--json``) and ``run(config) -> int``. Each
prints a table (stderr under ``--json``, else stdout), prints its rows as one JSON object on stdout
with ``--json``, and writes the same JSON under ``bench/results/`` of the current directory (or
``--results-dir``; never inside the installed package). Tests never time things.
Modules are imported only when their benchmark runs, so the CLI starts fast; no bench module
imports argparse or ``ddpipe.cli``.
"""

from __future__ import annotations

import importlib

from ddpipe.errors import DDPipeError

# name -> (module, one-line description shown by `ddpipe bench --help`)
_BENCHMARKS = {
    "store": ("ddpipe.bench.store", "label-store size and read throughput at real ImageNet shapes vs SRe2L's files"),
    "loader": ("ddpipe.bench.loader", "loader images/s: SRe2L's loader vs ddpipe torch and DALI-CPU, with decode-only ceilings"),
    "import": ("ddpipe.bench.imports", "ddpipe import of an SRe2L label folder (teacher-logit model): bytes, ratio, samples/s"),
    "scale": ("ddpipe.bench.scale", "relabel (1 and 2 ranks) and replay (torch, DALI) at ImageNet-21K/1K image and class counts: samples/s, RSS, overhead"),
    "recover": ("ddpipe.bench.recover", "synthesis methods vs random real images: one teacher, one fixed relabel + student recipe"),
    "sre2l-roundtrip": ("ddpipe.bench.sre2l_roundtrip", "SRe2L's unmodified relabel and train_FKD.py around ddpipe import/export (CPU shims): bit equality, identical training"),
    "sre2l-compare": ("ddpipe.bench.sre2l_compare", "SRe2L's relabel and train_FKD.py vs ddpipe relabel/train on 224 px JPEGs: time outside the models, bytes, RSS"),
    "logits": ("ddpipe.bench.logit_profile", "the store bench's teacher-logit model vs a trained Fashion-MNIST teacher's soft labels: profile, entropy, top-k sets, abs512 bytes; fits the model"),
    "origin": ("ddpipe.bench.origin", "each recover method vs its origin code, unmodified on the CPU: loss, image gradient and images after a few steps on identical inputs"),
    "table": ("ddpipe.bench.table", "the results table: methods x IPC 1/10/50 under a shared recipe and their own, label settings vs bytes, cross-architecture"),
}


def list_benchmarks() -> dict[str, str]:
    return {name: desc for name, (_mod, desc) in sorted(_BENCHMARKS.items())}


def load_benchmark(name: str):
    """The module of benchmark ``name`` (``Config`` and ``run(config)``)."""
    if name not in _BENCHMARKS:
        raise DDPipeError(f"unknown benchmark {name!r}; choose one of {sorted(_BENCHMARKS)}")
    return importlib.import_module(_BENCHMARKS[name][0])


def run_benchmark(name: str, config=None, **fields) -> int:
    """Run benchmark ``name`` from Python: ``run_benchmark("recover", quick=True)`` builds its ``Config``."""
    mod = load_benchmark(name)
    if config is None:
        config = mod.Config(**fields)
    return int(mod.run(config) or 0)
