"""Bad command lines, drawn by hypothesis: every one ends in exit status 2 and one line on stderr
("ddpipe CMD: error: ..."), never a traceback, and leaves no ``--out`` folder behind.

Each subcommand starts from a command whose inputs do not exist, then gets a few of its own flags
with values drawn from a pool of bad ones (negative, NaN, infinite, zero, huge, not a number, empty,
a path that does not exist). ``pytest tests/fault/test_cli_fuzz.py`` reruns it.
"""

from __future__ import annotations

import contextlib
import io
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ddpipe.cli import build_parser, main

BAD_VALUES = ["-1", "-7", "0", "nan", "inf", "-inf", "1e309", "abc", "", "99999999999999999999", "/nonexistent/x",
              "0.0", "-0.5", "1/0", "x=", "=1"]
NO_INPUT = "/nonexistent/ddpipe-input"


def _base(cmd: str, out: str) -> list[str]:
    return {
        "squeeze": ["squeeze", "--dataset", NO_INPUT, "--out", out],
        "recover": ["recover", "--teacher", NO_INPUT + ".pt", "--out", out],
        "relabel": ["relabel", "--images", NO_INPUT, "--teacher", NO_INPUT + ".pt", "--out", out],
        "train": ["train", "--images", NO_INPUT, "--labels", NO_INPUT + ".zarr", "--out", out],
        "prune": ["prune", NO_INPUT + ".zarr", "--keep", "0.5", "--out", out],
        "info": ["info", NO_INPUT + ".zarr"],
        "verify": ["verify", NO_INPUT + ".zarr"],
        "show": ["show", NO_INPUT, "--out", out],
    }[cmd]


def _flags() -> dict[str, list[str]]:
    """Each subcommand's value-taking long flags, read off the parser the CLI builds."""
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    flags = {}
    for cmd in ("squeeze", "recover", "relabel", "train", "prune", "info", "verify", "show"):
        if cmd not in sub.choices:
            continue
        acts = sub.choices[cmd]._actions
        flags[cmd] = sorted(s for a in acts if a.nargs != 0 and a.option_strings
                            for s in a.option_strings if s.startswith("--") and s != "--out")
    return flags


FLAGS = _flags()


@st.composite
def bad_command(draw, cmd):
    pairs = draw(st.lists(st.tuples(st.sampled_from(FLAGS[cmd]), st.sampled_from(BAD_VALUES)), min_size=1, max_size=3))
    return [x for flag, value in pairs for x in (flag, value)]


@pytest.mark.parametrize("cmd", sorted(FLAGS))
def test_bad_command_lines_are_one_line_and_exit_2(cmd, tmp_path_factory, monkeypatch):
    root = tmp_path_factory.mktemp(f"fuzz-{cmd}")
    monkeypatch.chdir(root)  # a relative path drawn as a value lands here

    @settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(bad_command(cmd))
    def check(extra):
        out = str(root / "out")
        argv = _base(cmd, out) + extra
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                code = main(argv)
            except SystemExit as e:
                code = e.code
        text = err.getvalue()
        lines = [ln for ln in text.splitlines() if ln.strip()]
        assert code == 2, (argv, code, text[-2000:])
        assert len(lines) == 1 and lines[0].startswith(f"ddpipe {cmd}: error:"), (argv, text[-2000:])
        assert "Traceback" not in text
        assert not os.path.exists(out), f"{argv}: left {out} behind"
        assert os.listdir(root) == [], f"{argv}: wrote {os.listdir(root)}"

    check()
