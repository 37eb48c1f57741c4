"""The import graph of the mapped packages, read from the source (AST), not from a running import.

Every ``import`` statement counts, at module top and inside functions alike (a function-level
import is still an edge: it only moves the cycle to the first call). Imports under
``if TYPE_CHECKING:`` are left out; they never run. The checks follow docs/architecture.md:

- no import cycles among the modules of ``labelstore`` and among those of ``pipeline``;
- ``labelstore`` never imports torch;
- dependencies point one way: ``labelstore`` <- ``pipeline`` <- ``evaluate``, ``synth`` <-
  ``evaluate``; nothing in these four packages imports ``evaluate`` (from below) or ``bench``.
"""

from __future__ import annotations

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("labelstore", "pipeline", "synth", "evaluate")

# What each package may import among the mapped packages (itself included).
ALLOWED = {
    "labelstore": {"labelstore"},
    "pipeline": {"labelstore", "pipeline"},
    "synth": {"synth"},
    "evaluate": {"labelstore", "pipeline", "synth", "evaluate"},
}
NO_CYCLES = ("labelstore", "pipeline")


def _modules() -> dict[str, str]:
    """``ddpipe.<pkg>.<sub>`` -> file path, for every module of the mapped packages."""
    found = {}
    for pkg in PACKAGES:
        top = os.path.join(ROOT, pkg)
        for folder, dirs, files in os.walk(top):
            dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__")))
            for name in sorted(files):
                if not name.endswith(".py"):
                    continue
                rel = os.path.relpath(os.path.join(folder, name), ROOT)[:-3].split(os.sep)
                if rel[-1] == "__init__":
                    rel = rel[:-1]
                found[".".join(["ddpipe", *rel])] = os.path.join(folder, name)
    return found


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the statements under ``if TYPE_CHECKING:`` (never executed)."""
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = test.id if isinstance(test, ast.Name) else getattr(test, "attr", None)
            if name == "TYPE_CHECKING":
                skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return skip


def _imported_names(module: str, path: str) -> list[tuple[str, int]]:
    """Every dotted name ``module`` imports (absolute; relative imports resolved), with its line."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    is_package = os.path.basename(path) == "__init__.py"
    package = module if is_package else module.rsplit(".", 1)[0]
    skip = _type_checking_nodes(tree)
    names = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - (node.level - 1)])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module
            # ``from X import y`` imports X, and X.y when y is a module
            names.append((target, node.lineno))
            names += [(f"{target}.{alias.name}", node.lineno) for alias in node.names]
    return names


def _graph() -> tuple[dict[str, set[str]], dict[str, list[tuple[str, int]]]]:
    """The edges between project modules, and every imported name per module."""
    modules = _modules()
    edges: dict[str, set[str]] = {m: set() for m in modules}
    raw: dict[str, list[tuple[str, int]]] = {}
    for module, path in modules.items():
        raw[module] = _imported_names(module, path)
        for name, _ in raw[module]:
            if name in modules and name != module:
                edges[module].add(name)
    return edges, raw


EDGES, RAW = _graph()


def _package(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "ddpipe" else None


def _cycles(nodes: set[str]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(EDGES[v] & nodes):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return found


def test_the_graph_is_read():
    assert "ddpipe.labelstore.writer" in EDGES and "ddpipe.pipeline.interop.importer" in EDGES
    assert "ddpipe.labelstore.spec" in EDGES["ddpipe.labelstore.writer"]


@pytest.mark.parametrize("pkg", NO_CYCLES)
def test_no_import_cycles(pkg):
    nodes = {m for m in EDGES if _package(m) == pkg}
    cycles = _cycles(nodes)
    assert not cycles, f"import cycles in {pkg}: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_labelstore_imports_no_torch():
    bad = [f"{m}:{line} imports {name}" for m, names in RAW.items() if _package(m) == "labelstore"
           for name, line in names if name.split(".")[0] in ("torch", "torchvision", "timm")]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("pkg", PACKAGES)
def test_dependencies_point_one_way(pkg):
    bad = []
    for module, names in RAW.items():
        if _package(module) != pkg:
            continue
        for name, line in names:
            if name.split(".")[0] != "ddpipe" or len(name.split(".")) < 2:
                continue
            target = name.split(".")[1]
            if target in ALLOWED or target == "bench":
                if target not in ALLOWED[pkg]:
                    bad.append(f"{module}:{line} imports {name}")
    assert not bad, f"{pkg} may import only {sorted(ALLOWED[pkg])}:\n" + "\n".join(sorted(set(bad)))


def test_no_front_door_imports_from_packages():
    """The packages use the helpers in ``ddpipe/`` (errors, config, _format ...), never the CLI."""
    bad = [f"{m}:{line} imports {name}" for m, names in RAW.items()
           for name, line in names if name in ("ddpipe.cli", "ddpipe.__main__", "ddpipe.demo", "ddpipe._flags")]
    assert not bad, "\n".join(bad)
