"""The import rules of docs/ARCHITECTURE.md, checked on the source: every import, at module top or in a function."""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TOP = ("search", "spaces", "trainers", "dashboards")

# search's sub-packages and the ones each may import (its own private modules aside). Read top-down it is
# the layering: nothing imports a package listed after it, so there is no cycle.
SEARCH_LAYERS = {
    "pareto": set(),
    "space": set(),
    "pruners": set(),
    "samplers": {"pareto", "space"},
    "config": {"pruners", "samplers", "space"},
    "controller": {"config", "pareto", "pruners", "samplers", "space"},
    "tracking": {"pareto"},
    "backends": {"config", "controller", "pareto", "space", "tracking"},
    "export": {"backends", "pareto", "tracking"},
    "cli": {"backends", "config", "export", "pareto", "samplers", "space", "tracking"},
}
# Frameworks: only these modules may import them (by path prefix under the repository root).
FRAMEWORKS = {
    "ray": ("search/backends/",),
    "pyarrow": ("search/backends/_storage.py",),
    "mlflow": ("search/tracking/",),
    "optuna": ("search/controller/", "search/pruners/", "search/samplers/_optuna.py"),
    "plotly": ("dashboards/",),
}


def _modules() -> list[pathlib.Path]:
    return sorted(p for top in TOP for p in (ROOT / top).rglob("*.py"))


def _name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["squeezelstm", *parts])


def _imports(path: pathlib.Path, source: str) -> set[str]:
    """Absolute names of everything ``source`` (the text of ``path``) imports (relative imports resolved)."""
    package = _name(path) if path.name == "__init__.py" else _name(path).rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            out.add(module)
            out.update(f"{module}.{a.name}" for a in node.names)  # `from pkg import module`
    return out


def _rel(path: pathlib.Path) -> str:
    return path.relative_to(ROOT).as_posix()


ALL = _modules()


def violations(path: pathlib.Path, source: str) -> list[str]:
    """The import rules ``source`` (the text of module ``path``) breaks, one line each."""
    rel, imports = _rel(path), _imports(path, source)
    own = _name(path)
    top = rel.split("/")[0]
    broken = []
    for name in sorted(imports):
        root = name.split(".")[0]
        if root in FRAMEWORKS and not rel.startswith(FRAMEWORKS[root]):
            broken.append(f"{name}: only {FRAMEWORKS[root]} may import {root}")
        if not name.startswith("squeezelstm."):
            continue
        target = name.split(".")[1]
        if top in ("spaces", "trainers") and target in ("search", "dashboards"):
            broken.append(f"{name}: the core (spaces, trainers) never imports search or dashboards")
        if top == "dashboards" and target == "search" and not name.startswith("squeezelstm.search.pareto"):
            broken.append(f"{name}: the dashboards read only search.pareto (records and the front)")
        if top == "search" and target == "dashboards" and not rel.startswith("search/cli/"):
            broken.append(f"{name}: only search/cli (the composition root) imports the dashboards")
        if top == "search" and target == "search" and own.count(".") >= 2:
            mine, theirs = own.split(".")[2], (name.split(".") + [""])[2]
            if theirs and theirs != mine and theirs in SEARCH_LAYERS and theirs not in SEARCH_LAYERS.get(mine, set()):
                broken.append(f"{name}: search.{mine} may import only {sorted(SEARCH_LAYERS[mine])} of search")
    return broken


@pytest.mark.parametrize("path", ALL, ids=_rel)
def test_import_rules(path):
    broken = violations(path, path.read_text())
    assert not broken, f"{_rel(path)}:\n  " + "\n  ".join(broken)


def test_every_search_package_has_its_place_in_the_layers():
    packages = {p.parent.name for p in (ROOT / "search").glob("*/__init__.py")}
    assert packages == set(SEARCH_LAYERS)


def test_the_rules_catch_violations():
    # the checker itself, on made-up modules: imports at any depth, relative or absolute
    tracking = ROOT / "search" / "tracking" / "_probe.py"
    found = violations(tracking, "def f():\n    from squeezelstm.dashboards import write_report\n    import ray\n"
                                 "from ..backends import run_search\n")
    text = "\n".join(found)
    assert "only search/cli" in text and "may import ray" in text and "search.tracking may import only" in text
    assert violations(ROOT / "trainers" / "_probe.py", "import optuna\nfrom squeezelstm.search import pareto\n")
    assert violations(ROOT / "dashboards" / "_probe.py", "from squeezelstm.search.tracking import load_search\n")
    assert not violations(ROOT / "search" / "cli" / "_probe.py", "from squeezelstm import dashboards\n")
