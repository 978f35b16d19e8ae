"""No import cycle joins sr_deploy.export.* and sr_deploy.runtime.*: one side may import the other, never both
(issue 15). Read from the source with `ast`, so function-level imports count too."""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "sr_deploy"


def module_name(path: Path, package: Path) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _nodes(tree: ast.AST, type_only: bool) -> list[ast.AST]:
    """Every node; `if TYPE_CHECKING:` bodies only with `type_only` (an annotation imports nothing at run time)."""
    nodes: list[ast.AST] = []
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        nodes.append(node)
        if not type_only and isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))
    return nodes


def imported_names(path: Path, name: str, type_only: bool = False) -> set[str]:
    """Dotted names `path` imports anywhere: `import`, `from ... import` (relative ones resolved), and
    `importlib.import_module("literal")`; with `type_only`, the imports for annotations too."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in _nodes(ast.parse(path.read_text(encoding="utf-8")), type_only):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*parent, *([node.module] if node.module else [])])
            found.update(f"{base}.{alias.name}" for alias in node.names)  # a submodule, or a name in `base`
            found.add(base)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.add(node.args[0].value)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("sr_deploy."):
            # A module named as data (a registry's list of plug-in modules) is imported by whoever reads the list.
            found.add(node.value)
    return found


def import_graph(package: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports."""
    files = {module_name(p, package): p for p in package.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        targets = set()
        for dotted in imported_names(path, name):
            while dotted and dotted not in files:
                dotted = dotted.rpartition(".")[0]
            if dotted and dotted != name:
                targets.add(dotted)
        graph[name] = targets
    return graph


def path_between(graph: dict[str, set[str]], start: str, goal: str) -> list[str] | None:
    """An import chain start -> ... -> goal, or None."""
    came_from: dict[str, str] = {start: start}
    todo = [start]
    while todo:
        node = todo.pop()
        if node == goal:
            chain = [goal]
            while chain[-1] != start:
                chain.append(came_from[chain[-1]])
            return chain[::-1]
        for nxt in sorted(graph.get(node, ())):
            if nxt not in came_from:
                came_from[nxt] = node
                todo.append(nxt)
    return None


def cycles_with_runtime(graph: dict[str, set[str]], export_module: str) -> list[str]:
    """Each runtime module that `export_module` reaches and that reaches it back, with both chains."""
    found = []
    for runtime in sorted(m for m in graph if m.startswith("sr_deploy.runtime.")):
        there = path_between(graph, export_module, runtime)
        back = path_between(graph, runtime, export_module) if there else None
        if there and back:
            found.append(" -> ".join(there) + " -> " + " -> ".join(back[1:]))
    return found


GRAPH = import_graph(PACKAGE)
EXPORT_MODULES = sorted(m for m in GRAPH if m.startswith("sr_deploy.export."))


@pytest.mark.parametrize("export_module", EXPORT_MODULES)
def test_no_import_cycle_between_export_and_runtime(export_module: str) -> None:
    assert cycles_with_runtime(GRAPH, export_module) == []


def test_the_check_finds_the_circle_the_builder_and_runtime_once_had(tmp_path: Path) -> None:
    # The shape of the code before issue 15: the runtime imported the builder at module level, the builder the
    # runtime inside a function.
    pkg = tmp_path / "sr_deploy"
    for sub in ("export", "runtime"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "trt_env.py").write_text("def require_tensorrt() -> str:\n    return ''\n")
    (pkg / "export" / "tensorrt.py").write_text(
        "def gate() -> None:\n    from sr_deploy.runtime.trt_backend import TensorRTBackend\n"
    )
    (pkg / "runtime" / "trt_backend.py").write_text("from sr_deploy.export.tensorrt import require_tensorrt\n")
    graph = import_graph(pkg)
    (cycle,) = cycles_with_runtime(graph, "sr_deploy.export.tensorrt")
    assert cycle == "sr_deploy.export.tensorrt -> sr_deploy.runtime.trt_backend -> sr_deploy.export.tensorrt"
    # One-way: the runtime asks sr_deploy.trt_env instead.
    (pkg / "runtime" / "trt_backend.py").write_text("from sr_deploy.trt_env import require_tensorrt\n")
    assert cycles_with_runtime(import_graph(pkg), "sr_deploy.export.tensorrt") == []
    # importlib counts, and a type-only import does not.
    (pkg / "runtime" / "trt_backend.py").write_text(
        "import importlib\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
        "    from sr_deploy.export import tensorrt\n"
        "def make() -> None:\n    importlib.import_module('sr_deploy.export.tensorrt')\n"
    )
    assert len(cycles_with_runtime(import_graph(pkg), "sr_deploy.export.tensorrt")) == 1
    (pkg / "runtime" / "trt_backend.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from sr_deploy.export import tensorrt\n"
    )
    assert cycles_with_runtime(import_graph(pkg), "sr_deploy.export.tensorrt") == []
    # A registry's list of module names counts as importing them.
    (pkg / "runtime" / "trt_backend.py").write_text("PLUGINS = ('sr_deploy.export.tensorrt',)\n")
    assert len(cycles_with_runtime(import_graph(pkg), "sr_deploy.export.tensorrt")) == 1


def test_the_backend_registry_is_seen_importing_its_descriptors() -> None:
    assert {"sr_deploy.runtime.ov_descriptor", "sr_deploy.runtime.trt_descriptor"} <= GRAPH[
        "sr_deploy.runtime.registry"
    ]


def _load_typecheck_script() -> ModuleType:
    """tools/typecheck_trt.py is a script, not a package: load it by path, leaving sys.path alone."""
    spec = importlib.util.spec_from_file_location("typecheck_trt_thin", PACKAGE.parent / "tools" / "typecheck_trt.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_the_typecheck_covers_every_module_that_imports_tensorrt_or_pycuda() -> None:
    # A module missing from THIN_LAYER would have its TensorRT calls checked by no one (mypy sees `Any` elsewhere).
    importers = {
        path.relative_to(PACKAGE.parent).as_posix()
        for path in PACKAGE.rglob("*.py")
        if any(
            name.split(".")[0] in ("tensorrt", "pycuda")
            for name in imported_names(path, module_name(path, PACKAGE), type_only=True)
        )
    }
    assert set(_load_typecheck_script().THIN_LAYER) == importers


def test_the_tensorrt_builder_imports_no_runtime_module() -> None:
    # It is handed an EngineOpener instead; the runtime's backend_for_model imports the builder.
    assert {m for m in GRAPH["sr_deploy.export.tensorrt"] if m.startswith("sr_deploy.runtime.")} == set()
