"""The package's house rules: every module imports on its own, no import cycles, layers point down.

Layers, lowest first (README "Layout")::

    core  <  maps (and testing)  <  runtime, controller  <  pool  <  shmrcu/__init__  <  cli

``shmrcu.errors`` may be imported by every layer and imports nothing of the package.  A module may import
its own layer or a lower one, never a higher one.  The graph is read from the source (no import runs):
absolute and relative imports, imports inside functions included, ``if TYPE_CHECKING:`` blocks excluded
(annotations only); ``.pyx``/``.pxd`` files count too (their ``import``/``cimport`` lines), since a Cython
module that cimports a higher layer ties the layers as firmly as a Python import.  The implicit import of
a module's parent package is not an edge (every module would otherwise depend on ``shmrcu/__init__``).
"""
from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import shmrcu

PKG = Path(shmrcu.__file__).resolve().parent
ROOT = PKG.parent

LAYERS = {"core": 0, "maps": 1, "testing": 1.5, "runtime": 2, "controller": 2, "pool": 3, "sources": 3,
          "": 3.5, "cli": 4, "__main__": 4}
SOURCE_SUFFIXES = (".py", ".pyx", ".pxd")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources() -> dict[str, list[Path]]:
    mods: dict[str, list[Path]] = {}
    for p in sorted(PKG.rglob("*")):
        if p.suffix in SOURCE_SUFFIXES and "__pycache__" not in p.parts:
            mods.setdefault(_module_name(p), []).append(p)
    return mods


MODULES = _sources()


def layer(mod: str) -> float | None:
    """The layer of a module; None for ``shmrcu.errors`` (importable by all)."""
    if mod == "shmrcu.errors":
        return None
    parts = mod.split(".")
    return LAYERS[parts[1] if len(parts) > 1 else ""]


def _resolve(base: str, names: list[str]) -> list[str]:
    """``from base import a, b`` -> the modules it reaches: base.a where that is a module, else base."""
    out = []
    for n in names:
        out.append(f"{base}.{n}" if f"{base}.{n}" in MODULES else base)
    return out or [base]


def _absolute(mod: str, is_package: bool, level: int, target: str | None) -> str:
    if level == 0:
        return target or ""
    base = mod.split(".") if is_package else mod.split(".")[:-1]
    base = base[:len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or \
        (isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _py_imports(mod: str, path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(mod, is_package, node.level, node.module)
            found.update(_resolve(base, [a.name for a in node.names]))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


_CY_FROM = re.compile(r"^[ \t]*from[ \t]+(\.*)([\w.]*)[ \t]+c?import[ \t]+(\([^)]*\)|[\w \t,*]+)", re.M)
_CY_IMPORT = re.compile(r"^[ \t]*c?import[ \t]+([\w.]+)", re.M)


def _cython_imports(mod: str, path: Path) -> set[str]:
    text = path.read_text()
    found: set[str] = set()
    for dots, target, names in _CY_FROM.findall(text):
        base = _absolute(mod, False, len(dots), target or None)
        found.update(_resolve(base, [n.split()[0] for n in names.strip("()").split(",") if n.strip() and n.strip() != "*"]))
    found.update(_CY_IMPORT.findall(text))
    return found


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for mod, paths in MODULES.items():
        edges: set[str] = set()
        for p in paths:
            edges |= _py_imports(mod, p) if p.suffix == ".py" else _cython_imports(mod, p)
        graph[mod] = {e for e in edges if (e == "shmrcu" or e.startswith("shmrcu.")) and e != mod}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def test_graph_sees_the_package():
    g = import_graph()
    # a few edges that must be found, or the walk reads nothing
    assert "shmrcu.core.segment" in g["shmrcu.maps.registry"]             # from ..core import segment
    assert "shmrcu.maps" in g["shmrcu.runtime"]                           # inside a function
    assert "shmrcu.maps._maps" in g["shmrcu.pool.programs.route_lookup"]  # a cimport
    assert "shmrcu.runtime" not in g["shmrcu.controller"]                 # TYPE_CHECKING only


def test_no_import_cycles():
    assert _cycles(import_graph()) == []


def test_layers_point_down():
    bad = []
    for mod, targets in sorted(import_graph().items()):
        for t in sorted(targets):
            if mod == "shmrcu.errors":
                bad.append(f"{mod} -> {t} (errors imports nothing of the package)")
            elif layer(t) is not None and layer(t) > layer(mod):
                bad.append(f"{mod} (layer {layer(mod)}) -> {t} (layer {layer(t)})")
    assert bad == []


def test_controller_is_given_the_runtime():
    assert "shmrcu.runtime" not in import_graph()["shmrcu.controller"]


def test_every_module_imports_alone():
    """Each module in a fresh interpreter, so that no import order hides a cycle or a missing import."""
    mods = sorted(m for m, paths in MODULES.items()
                  if not m.endswith("__main__") and any(p.suffix in (".py", ".pyx") for p in paths))
    assert len(mods) > 25
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    failed = []
    procs = [(m, subprocess.Popen([sys.executable, "-c", f"import importlib; importlib.import_module({m!r})"],
                                  env=env, cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True)) for m in mods]
    for m, p in procs:
        out, _ = p.communicate(timeout=120)
        if p.returncode != 0:
            failed.append(f"{m}: {out.strip().splitlines()[-1] if out.strip() else p.returncode}")
    assert failed == []


@pytest.mark.parametrize("argv", [["-m", "shmrcu", "--help"], ["-m", "shmrcu.cli", "--help"]])
def test_entry_points(argv):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, *argv], env=env, cwd=str(ROOT), capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert "demo" in r.stdout and "stat" in r.stdout
