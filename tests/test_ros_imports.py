"""The modules of rtfm_env.ros import each other one way: no cycle, not even through a lazy import.

Imports are read with ``ast`` from the source (every ``import`` statement anywhere in a module,
inside functions too), so the test needs no ROS install and imports nothing it checks.
"""

from __future__ import annotations

import ast
from pathlib import Path

import rtfm_env.ros

PACKAGE = "rtfm_env.ros"
PACKAGE_DIR = Path(rtfm_env.ros.__file__).resolve().parent


def _modules(package_dir: Path, package: str) -> dict[str, Path]:
    """Dotted name -> file of every module of a package (subpackages included)."""
    modules = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = path.relative_to(package_dir).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join((package, *parts))] = path
    return modules


def _imported(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Dotted names of everything ``tree`` imports, anywhere in it, with ``from`` imports resolved."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . import x / from .bag import y
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            names.add(source)
            names.update(f"{source}.{alias.name}" for alias in node.names)  # a submodule, when it is one
    return names


def import_graph(package_dir: Path, package: str) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports (lazily or not)."""
    modules = _modules(package_dir, package)
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        imported = _imported(tree, name, path.name == "__init__.py")
        graph[name] = {m for m in imported if m in modules and m != name and m != package}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as [a, b, ..., a], or None when it has none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def test_no_import_cycle_among_ros_modules():
    """No module of rtfm_env.ros imports, directly or through others, a module that imports it."""
    graph = import_graph(PACKAGE_DIR, PACKAGE)
    assert {"rtfm_env.ros.camera_node", "rtfm_env.ros.bag", "rtfm_env.ros.record_bag"} <= set(graph)
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"
    # The intended direction: the command runs the node, the node writes bags.
    assert "rtfm_env.ros.camera_node" in graph["rtfm_env.ros.record_bag"]
    assert "rtfm_env.ros.bag" in graph["rtfm_env.ros.camera_node"]
    assert graph["rtfm_env.ros.bag"] == set()


def test_cycle_finder_sees_a_lazy_import_cycle(tmp_path):
    """A cycle closed by an import inside a function, relative or absolute, is found."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.b import thing\n")
    (pkg / "b.py").write_text("def thing():\n    from . import a\n    return a\n")
    (pkg / "c.py").write_text("import pkg.a\n")
    graph = import_graph(pkg, "pkg")
    assert graph == {"pkg": set(), "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.a"}, "pkg.c": {"pkg.a"}}
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.a"]
    (pkg / "b.py").write_text("def thing():\n    return 1\n")
    assert find_cycle(import_graph(pkg, "pkg")) is None


def test_cli_modules_import_no_ros_at_module_level():
    """The bag and record_bag modules import rclpy and rosbags only when used: 'rtfm-env --help' needs no ros."""
    for name in ("bag.py", "record_bag.py"):
        tree = ast.parse((PACKAGE_DIR / name).read_text())
        top = set()
        for node in tree.body:
            if isinstance(node, ast.Import):
                top.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                top.add(node.module)
        assert not top & {"rclpy", "rosbags", "rtfm_env.ros.camera_node"}, (name, top)
