"""The kernel's shape: one job per module, said in its docstring; no module over 700 lines; no
import cycle outside ``TYPE_CHECKING``; docs/architecture.md lists every module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

KERNEL = Path(__file__).resolve().parent.parent / "core" / "lbx"
ARCHITECTURE = Path(__file__).resolve().parent.parent / "docs" / "architecture.md"
MAX_LINES = 700


def modules() -> dict[str, Path]:
    """``lbx.x`` (``lbx`` for the package itself) -> its file."""
    found = {}
    for path in sorted(KERNEL.rglob("*.py")):
        parts = path.relative_to(KERNEL).with_suffix("").parts
        name = ".".join(("lbx", *parts)).removesuffix(".__init__")
        found[name] = path
    return found


def runtime_imports(path: Path, known: set[str]) -> set[str]:
    """The kernel modules ``path`` imports when it runs: at the top or in a function, but not
    under ``if TYPE_CHECKING:``."""
    imported: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for other in child.orelse:
                    visit(other)
                continue
            if isinstance(child, ast.Import):
                imported.update(a.name for a in child.names if a.name in known)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                for alias in child.names:  # "from lbx import hookspecs" imports lbx.hookspecs
                    submodule = f"{child.module}.{alias.name}"
                    imported.add(submodule if submodule in known else child.module)
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return {name for name in imported if name in known}


@pytest.mark.parametrize("name", sorted(modules()))
def test_module_has_a_docstring_and_stays_small(name: str) -> None:
    path = modules()[name]
    text = path.read_text(encoding="utf-8")
    if name != "lbx.builtin":
        assert ast.get_docstring(ast.parse(text)), f"{name} does not say what it is for"
    assert text.count("\n") <= MAX_LINES, f"{name} has {text.count(chr(10))} lines"


def test_no_import_cycles() -> None:
    """Modules import each other in one direction (the package's ``__init__`` re-exports and
    is left out: it imports, nothing imports it for more than those names)."""
    found = modules()
    known = set(found)
    graph = {name: runtime_imports(path, known) - {"lbx"} for name, path in found.items()}
    graph.pop("lbx")
    cycles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def walk(name: str, path: list[str]) -> None:
        state[name] = 1
        for target in sorted(graph.get(name, ())):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                walk(target, [*path, target])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            walk(name, [name])
    assert not cycles, [" -> ".join(cycle) for cycle in cycles]


def test_architecture_lists_every_module() -> None:
    text = ARCHITECTURE.read_text(encoding="utf-8")
    missing = [
        name
        for name, path in modules().items()
        if name != "lbx.builtin" and f"`{path.relative_to(KERNEL).as_posix()}`" not in text
    ]
    assert not missing, f"docs/architecture.md's module map lacks {missing}"
