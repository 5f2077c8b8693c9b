"""The layers of vmrun, bottom up, as the folder tree shows them: a module imports only from its own layer or
below, function-level and type-checking imports included, and no two modules import each other, however
indirectly. And what that means for the costs users notice: render is pure, and the host layer never loads it."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "vmrun"

# The modules at the top of the package that every layer may use; they use only each other.
BASE = frozenset({"errors", "record", "progress", "units", "files", "signals", "crashpoints"})
# Bottom up; packages in one tuple sit beside each other and import neither each other nor anything above.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("base",),
    ("spec",),
    ("host",),
    ("preflight",),
    ("state",),
    ("qemu",),
    ("guest",),
    ("export", "run"),
    ("cli",),
    ("__main__",),
)
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def unit_of(module: str) -> str:
    """The subpackage a vmrun module belongs to, or the base."""
    unit = module.split(".")[1]
    return "base" if unit in BASE else unit


def imported_by(module: str) -> Iterator[str]:
    """Every vmrun module the module's code names in an import, wherever the import statement is."""
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names if alias.name in MODULES)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vmrun"):
            submodules = [f"{node.module}.{alias.name}" for alias in node.names]
            named = [submodule for submodule in submodules if submodule in MODULES]
            yield from named or [node.module]


GRAPH = {module: sorted(set(imported_by(module)) - {module}) for module in MODULES}


def test_every_module_is_in_a_layer() -> None:
    assert {unit_of(module) for module in MODULES if module != "vmrun"} <= RANK.keys()


def test_no_module_imports_from_a_higher_layer_or_a_neighbour() -> None:
    upward = [
        f"{module} imports {imported}"
        for module, imports in GRAPH.items() if module != "vmrun"
        for imported in imports if imported != "vmrun"
        and unit_of(imported) != unit_of(module) and RANK[unit_of(imported)] >= RANK[unit_of(module)]
    ]
    assert upward == []


def cycles(graph: dict[str, list[str]]) -> list[list[str]]:
    """One cycle per strongly connected component that has one (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for successor in graph.get(node, []):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while (member := stack.pop()) != node:
                component.append(member)
            component.append(node)
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_between_modules() -> None:
    assert cycles(GRAPH) == []


def test_the_subpackages_import_each_other_without_a_cycle() -> None:
    units: dict[str, set[str]] = {}
    for module, imports in GRAPH.items():
        if module != "vmrun":
            units.setdefault(unit_of(module), set()).update(unit_of(i) for i in imports if i != "vmrun")
    assert cycles({unit: sorted(targets - {unit}) for unit, targets in units.items()}) == []


@pytest.mark.parametrize("graph, expected", [
    ({"a": ["b"], "b": ["c"], "c": ["a"]}, [["a", "b", "c"]]),
    ({"a": ["b"], "b": ["c"], "c": []}, []),
], ids=["cycle", "chain"])
def test_the_cycle_finder_finds_a_cycle_three_modules_long(graph: dict[str, list[str]],
                                                          expected: list[list[str]]) -> None:
    assert cycles(graph) == expected


def test_a_function_level_import_counts() -> None:
    """vmrun.cli.common imports the spec checks only inside a function, and the graph has it."""
    assert "vmrun.spec.check" in GRAPH["vmrun.cli.common"]


def loaded_after(*modules: str) -> set[str]:
    code = f"import sys, {', '.join(modules)}; print(' '.join(m for m in sys.modules if m.startswith('vmrun')))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    return set(result.stdout.split())


def test_host_vfio_and_state_do_not_load_render() -> None:
    loaded = loaded_after("vmrun.host.system", "vmrun.preflight.vfio", "vmrun.state.vmstate")
    assert "vmrun.qemu.render" not in loaded


def test_render_does_not_load_the_host_layer() -> None:
    assert loaded_after("vmrun.qemu.render").isdisjoint({"vmrun.host.system", "vmrun.host.access"})


def private_imports(module: str) -> Iterator[str]:
    """The names with a leading underscore the module imports from another vmrun module: a name private to
    one module that another needs is part of an interface, and gets a public name."""
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vmrun"):
            yield from (f"{node.module}.{alias.name}" for alias in node.names
                        if alias.name.startswith("_") and not alias.name.startswith("__"))


def test_no_module_imports_a_private_name_of_another() -> None:
    assert [f"{module} imports {name}" for module in MODULES for name in private_imports(module)] == []
