"""The modules of rtfm_env.eval import each other without a cycle, not even inside functions."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import rtfm_env.eval

PACKAGE = "rtfm_env.eval"
FOLDER = Path(rtfm_env.eval.__file__).parent
MODULES = sorted(f"{PACKAGE}.{p.stem}" for p in FOLDER.glob("*.py") if p.stem != "__init__")


def imports_within(path: Path, package: str, modules: set[str]) -> set[str]:
    """The modules of ``modules`` (or ``package`` itself) that the file at ``path`` imports, anywhere in it.

    ``from package import name`` counts as importing ``package.name`` when that is a module, else
    as importing ``package``; relative imports are resolved against ``package``.
    """
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative to the package (its modules are one level deep)
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in modules and name != package:
                name = name.rpartition(".")[0]  # `import rtfm_env.eval.report.x` imports rtfm_env.eval.report
            if name:
                found.add(name)
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` (node -> nodes it points to) as a path back to its start, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], node, nxt] if nxt in path else [node, nxt]
            if nxt not in state:
                cycle = visit(nxt, [*path, node])
                if cycle:
                    return cycle
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start, [])
            if cycle:
                return cycle
    return None


def _graph() -> dict[str, set[str]]:
    modules = set(MODULES)
    graph = {m: imports_within(FOLDER / f"{m.rpartition('.')[2]}.py", PACKAGE, modules) - {m} for m in MODULES}
    # The package's __init__ runs before any of its modules: its imports are edges too.
    graph[PACKAGE] = imports_within(FOLDER / "__init__.py", PACKAGE, modules)
    return graph


def test_eval_modules_import_without_a_cycle():
    """No chain of imports among rtfm_env.eval's modules leads back to where it started."""
    graph = _graph()
    assert "rtfm_env.eval.results" in graph["rtfm_env.eval.report"]  # the parse sees imports at all
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_report_and_revisit_do_not_import_each_other_both_ways():
    """The report is imported by the evaluator, never the other way round."""
    graph = _graph()
    assert "rtfm_env.eval.report" in graph["rtfm_env.eval.revisit"]
    assert "rtfm_env.eval.revisit" not in graph["rtfm_env.eval.report"]


@pytest.mark.parametrize("module", MODULES)
def test_each_module_imports_on_its_own(module):
    """Every module of the package imports (a cycle that breaks at import time would fail here)."""
    assert importlib.import_module(module).__name__ == module


def test_cycle_finder_finds_cycles(tmp_path):
    """The checks above can fail: a lazy import inside a function closes a cycle that is found."""
    (tmp_path / "a.py").write_text("from pkg import b\n")
    (tmp_path / "b.py").write_text("def f():\n    from pkg.c import thing\n    return thing\n")
    (tmp_path / "c.py").write_text("import pkg.a\n")
    modules = {"pkg.a", "pkg.b", "pkg.c"}
    graph = {m: imports_within(tmp_path / f"{m[4:]}.py", "pkg", modules) for m in modules}
    assert graph == {"pkg.a": {"pkg.b"}, "pkg.b": {"pkg.c"}, "pkg.c": {"pkg.a"}}
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.c", "pkg.a"]
    assert find_cycle({"pkg.a": {"pkg.b"}, "pkg.b": set()}) is None
