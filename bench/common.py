"""Shared helpers of the benchmarks: tables, results JSON, median timers, core pinning, memory, and
reading what an earlier step left behind.

Benchmarks print a fixed-width table (on stderr under ``--json``, so stdout stays one JSON
object), write their rows under ``bench/results/`` of the current directory (``--results-dir``),
time with the median of repeats, and take "one core" numbers with the whole process (every
thread) pinned to one CPU. Nothing is ever written inside the installed package.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import platform
import resource
import statistics
import sys
import time
import types
from typing import Any, Callable, Iterator, Sequence, TextIO

from ddpipe._files import replace_atomically
from ddpipe._format import human_bytes, json_default  # noqa: F401  shared with the CLI; bench modules use common.human_bytes

# relative to the current directory (a clone's root when run from there), never the package's folder
RESULTS_DIR = os.path.join("bench", "results")
WORK_DIR = os.path.join("bench", "work")


def results_dir(given: str | None = None) -> str:
    """Where a benchmark writes its JSON: ``given`` (``--results-dir``), else ``bench/results`` under
    the current directory; absolute."""
    return os.path.abspath(given or RESULTS_DIR)


def work_dir(given: str | None = None, *parts: str) -> str:
    """Where a benchmark's steps write: ``given`` (``--workdir``), else ``bench/work/<parts>`` under
    the current directory; absolute."""
    return os.path.abspath(given or os.path.join(WORK_DIR, *parts))


# --- settings -------------------------------------------------------------------------------------
def resolved_args(config, quick: dict) -> types.SimpleNamespace:
    """A benchmark config as a mutable namespace, with its ``quick`` settings applied to the fields the
    caller left at their defaults (settings given explicitly still win)."""
    args = types.SimpleNamespace(**{f.name: getattr(config, f.name) for f in dataclasses.fields(config)})
    if getattr(args, "quick", False):
        defaults = type(config)()
        for k, v in quick.items():
            if getattr(args, k) == getattr(defaults, k):
                setattr(args, k, v)
    return args


# --- output ---------------------------------------------------------------------------------------
def table_stream(json_mode: bool) -> TextIO:
    """Where human output goes: stderr when stdout carries the JSON object."""
    return sys.stderr if json_mode else sys.stdout


def format_table(rows: Sequence[dict], columns: Sequence[tuple[str, str, str]]) -> str:
    """Fixed-width table; ``columns`` are ``(key, header, format spec)``; missing values print '-'."""

    def cell(row: dict, key: str, fmt: str) -> str:
        v = row.get(key)
        if v is None:
            return "-"
        if isinstance(v, bool):
            return "yes" if v else "no"
        try:
            return format(v, fmt)
        except (TypeError, ValueError):
            return str(v)

    body = [[cell(r, k, f) for k, _h, f in columns] for r in rows]
    heads = [h for _k, h, _f in columns]
    widths = [max([len(h)] + [len(b[i]) for b in body]) for i, h in enumerate(heads)]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    out = [line(heads), line(["-" * w for w in widths])]
    out += [line(b) for b in body]
    return "\n".join(out)


def write_results(name: str, payload: dict, directory: str | None = None) -> str:
    """Write ``payload`` as ``<directory>/<name>-<UTC time>.json`` (default: :func:`results_dir`)."""
    directory = results_dir(directory)
    os.makedirs(directory, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = os.path.join(directory, f"{name}-{stamp}.json")
    write_json(payload, path)
    return path


def write_json(payload: dict, path: str) -> None:
    """``payload`` as indented JSON at ``path``: the old file or the complete new one."""
    text = json.dumps(payload, indent=1, default=json_default) + "\n"
    replace_atomically(path, lambda f: f.write(text.encode()))


# --- what earlier steps left ------------------------------------------------------------------------
def read_json(path: str) -> Any:
    """The JSON at ``path``, or None when it is missing or unreadable."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def finished(result_type: type, path: str):
    """The phase result at ``path`` (a ``results.json``) as the phase's own ``result_type``, when the
    phase says it is complete; None when it is missing, unreadable or not finished. A result type
    without a ``status`` field (relabel's) is written only when the run finished."""
    data = read_json(path)
    if not isinstance(data, dict):
        return None
    try:
        res = result_type.from_dict(data)
    except TypeError:  # an older or partial file without every field
        return None
    return res if getattr(res, "status", "complete") == "complete" else None


def folder_key(obj: Any) -> str:
    """A short hash of ``obj`` as JSON: step folders are named by what determines their contents."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


def timed(sidecar: str, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` and add its CPU and wall seconds to the JSON at ``sidecar`` (summed over resumed
    sessions: ``cpu_s``, ``wall_s``, ``sessions``)."""
    t0, c0 = time.perf_counter(), time.process_time()
    res = fn()
    rec = read_json(sidecar) or {"cpu_s": 0.0, "wall_s": 0.0, "sessions": 0}
    rec = {"cpu_s": rec["cpu_s"] + time.process_time() - c0, "wall_s": rec["wall_s"] + time.perf_counter() - t0,
           "sessions": rec["sessions"] + 1}
    write_json(rec, sidecar)
    return res


def sidecar_cpu_s(sidecar: str) -> float | None:
    """The CPU seconds :func:`timed` summed at ``sidecar`` (None when it never ran)."""
    rec = read_json(sidecar)
    return rec["cpu_s"] if rec else None


# --- flags ------------------------------------------------------------------------------------------
def csv_list(text: str) -> list[str]:
    """``"a, b,c"`` -> ``["a", "b", "c"]`` (the parser of comma-separated list flags)."""
    return [t.strip() for t in str(text).split(",") if t.strip()]


def int_list(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``; ValueError naming the text otherwise."""
    try:
        return [int(t) for t in csv_list(text)]
    except ValueError:
        raise ValueError(f"expected comma-separated integers, got {text!r}") from None


# --- timing ---------------------------------------------------------------------------------------
def median_time(fn: Callable[[], Any], repeats: int = 3, warmup: int = 0) -> tuple[float, list[float], Any]:
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times; return (median s, all s, last result)."""
    result = None
    for _ in range(warmup):
        result = fn()
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times, result


def median_rate(fn: Callable[[], tuple[int, float]], repeats: int = 3) -> tuple[float, list[float]]:
    """``fn`` returns (items, seconds) it measured itself; return the median items/s and all rates."""
    rates = []
    for _ in range(max(1, repeats)):
        items, seconds = fn()
        rates.append(items / seconds if seconds > 0 else float("inf"))
    return statistics.median(rates), rates


def median_rates(fn: Callable[[], tuple[int, float, float]], repeats: int = 3) -> tuple[float, list[float], float]:
    """``fn`` returns (items, wall s, CPU s); return median items per wall second, all of them, and
    the median items per CPU second (unaffected by other processes sharing the core)."""
    wall, cpu = [], []
    for _ in range(max(1, repeats)):
        items, w, c = fn()
        wall.append(items / w if w > 0 else float("inf"))
        cpu.append(items / c if c > 0 else float("inf"))
    return statistics.median(wall), wall, statistics.median(cpu)


# --- one core ------------------------------------------------------------------------------------
def _thread_ids() -> list[int]:
    try:
        return [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        return [0]


@contextlib.contextmanager
def pinned(core: int | None = 0) -> Iterator[int | None]:
    """Pin every thread of this process (and threads started meanwhile) to one CPU, then restore.

    ``sched_setaffinity(0, …)`` alone moves only the calling thread; existing helper threads
    (prefetchers, thread pools) would keep running elsewhere, so each task is pinned.
    """
    if core is None or not hasattr(os, "sched_setaffinity"):
        yield None
        return
    allowed = os.sched_getaffinity(0)
    if core not in allowed:
        core = min(allowed)
    before = {}
    for tid in _thread_ids():
        try:
            before[tid] = os.sched_getaffinity(tid)
            os.sched_setaffinity(tid, {core})
        except OSError:  # a thread that just ended
            pass
    try:
        yield core
    finally:
        for tid in _thread_ids():
            try:
                os.sched_setaffinity(tid, before.get(tid, allowed))
            except OSError:
                pass


# --- memory and machine --------------------------------------------------------------------------
def peak_rss_bytes() -> int:
    """Peak resident set size of this process (Linux reports KiB)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def rss_bytes() -> int:
    """Current resident set size (0 where /proc is missing)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def machine_info() -> dict:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = None
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_bytes": mem,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def disk_free_bytes(path: str) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


# --- peak RSS of a process tree ---------------------------------------------------------------------
def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (``/proc/<pid>/task/<tid>/children``), the root first."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except (OSError, ValueError):
            pass
    return out


def process_rss(pid: int) -> int:
    """Resident bytes of process ``pid`` (``/proc/<pid>/statm``); 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def wait_sampling_rss(proc, every: float = 0.1, skip_root: bool = False) -> tuple[int, int]:
    """Wait for the ``subprocess.Popen`` ``proc``, sampling the RSS of its process tree every ``every``
    seconds; returns the peak of the largest single process and the peak of their sum (``skip_root``:
    leave the root out, e.g. torchrun's launcher). Shared pages count once per process."""
    peak_one = peak_sum = 0
    while proc.poll() is None:
        rss = [process_rss(p) for p in process_tree(proc.pid)[1 if skip_root else 0:]]
        if rss:
            peak_one, peak_sum = max(peak_one, max(rss)), max(peak_sum, sum(rss))
        time.sleep(every)
    return peak_one, peak_sum
