"""Run from a venv that installed ddpipe's *wheel* (not the source tree): every package imports, the
console script answers, and the golden digits chain gives the golden hashes.

``make wheel-check`` builds the wheel, installs it with its extras into a fresh venv and runs this
file from an empty folder, so a package left out of ``pyproject.toml`` can never land again.
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import subprocess
import sys
import tempfile

import ddpipe

assert os.path.abspath(ddpipe.__file__).startswith(os.path.abspath(sys.prefix) + os.sep), (
    f"ddpipe was imported from {ddpipe.__file__}, not from this venv's installed wheel ({sys.prefix})")

# every module of the installed distribution imports (a missing subpackage fails here)
names = []
for pkg in ("ddpipe.labelstore", "ddpipe.pipeline", "ddpipe.synth", "ddpipe.evaluate", "ddpipe.bench"):
    mod = importlib.import_module(pkg)
    names.append(pkg)
    for info in pkgutil.walk_packages(mod.__path__, pkg + "."):
        importlib.import_module(info.name)
        names.append(info.name)
assert "ddpipe.evaluate.models" in names, names

exe = os.path.join(os.path.dirname(sys.executable), "ddpipe")
out = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True).stdout
assert "relabel" in out and "train" in out

from test_golden import GOLDEN, PORTABLE_KERNELS  # noqa: E402  (tests/ is this script's folder)

# the chain in a child process on the kernels the golden hashes were recorded with, as test_golden runs it
with tempfile.TemporaryDirectory() as d:
    chain = subprocess.run([sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden_chain.py"), d],
                           env={**os.environ, **PORTABLE_KERNELS}, capture_output=True, text=True, check=True).stdout
got = json.loads(chain[chain.index("{"):])
bad = {k: (got[k], v) for k, v in GOLDEN.items() if got[k] != v}
assert not bad, f"the wheel install gives other results than the source tree: {bad}"

from test_api_doc import _example  # noqa: E402  (docs/api.md's Python example, run from the wheel install)

with tempfile.TemporaryDirectory() as d:
    tempfile.tempdir = d  # the example's mkdtemp lands here
    try:
        exec(compile(_example(), "docs/api.md", "exec"), {"__name__": "api_example"})
    finally:
        tempfile.tempdir = None
print(f"wheel check: {len(names)} modules import from {os.path.dirname(ddpipe.__file__)}; the digits chain "
      f"matches the {len(GOLDEN)} golden hashes")
