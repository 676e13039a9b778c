"""Plugins and contrib modules use the public plugin API only: names in ``lbx.__all__``, in
``lbx.admin.__all__`` and in ``lbx.testing.__all__`` (docs/plugins.md, "The plugin API").

A plugin that reaches into ``lbx.server`` or ``lbx.proxy`` breaks when the kernel moves; the
first-party plugins show third-party authors the way, so they keep to the same API.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PUBLIC_MODULES = ("lbx", "lbx.admin", "lbx.testing")


def public_names(module: str) -> set[str]:
    return set(importlib.import_module(module).__all__)


def plugin_sources() -> list[Path]:
    sources = sorted(ROOT.glob("plugins/*/src/**/*.py")) + sorted(ROOT.glob("contrib/*.py"))
    assert len(sources) > 20
    return sources


def kernel_imports(path: Path) -> list[tuple[int, str, str | None]]:
    """Every import of the kernel in ``path`` (TYPE_CHECKING ones too): (line, module, name)."""
    found: list[tuple[int, str, str | None]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            if node.module == "lbx" or node.module.startswith("lbx."):
                found += [(node.lineno, node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "lbx" or alias.name.startswith("lbx."):
                    found.append((node.lineno, alias.name, None))
    return found


@pytest.mark.parametrize("path", plugin_sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_plugin_imports_only_public_names(path: Path) -> None:
    private = []
    for line, module, name in kernel_imports(path):
        if name is None:
            if module not in PUBLIC_MODULES:
                private.append(f"{path.name}:{line}: import {module}")
        elif module == "lbx" and name in ("admin", "testing"):
            continue  # from lbx import admin
        elif module not in PUBLIC_MODULES or name not in public_names(module):
            private.append(f"{path.name}:{line}: from {module} import {name}")
    assert not private, "private kernel names: " + "; ".join(private)


def test_public_names_exist_and_are_documented() -> None:
    """Every public name resolves, and docs/plugins.md lists each one of ``lbx.__all__``."""
    text = (ROOT / "docs" / "plugins.md").read_text(encoding="utf-8")
    for module in PUBLIC_MODULES:
        imported = importlib.import_module(module)
        for name in public_names(module):
            assert hasattr(imported, name), f"{module}.{name}"
            assert f"`{name}`" in text, f"docs/plugins.md does not mention {module}.{name}"
