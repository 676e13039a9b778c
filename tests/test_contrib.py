"""Every contrib/ file is a loadable plugin with a docstring and is listed in contrib/README.md."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from lbx.plugins import LbxPluginManager, load_plugin_arg, plugin_hooks

CONTRIB = Path(__file__).resolve().parent.parent / "contrib"
FILES = sorted(CONTRIB.glob("*.py"))


def test_contrib_has_files() -> None:
    """contrib/ is not empty (so the parametrized tests below really run)."""
    assert FILES


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_contrib_file_loads(path: Path) -> None:
    """The file loads with ``--plugin path`` semantics into a fresh manager and implements hooks."""
    pm = LbxPluginManager()
    load_plugin_arg(pm, str(path))
    plugin = pm.get_plugin(path.stem)
    assert plugin is not None
    assert plugin_hooks(pm, plugin), f"{path.name} implements no lbx hook"
    assert pm.infos[path.stem].source == f"file {path}"


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_contrib_file_has_module_docstring(path: Path) -> None:
    """Each file starts with a docstring saying what it shows."""
    docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
    assert docstring, f"{path.name} has no module docstring"
    assert len(docstring.split()) >= 5


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_contrib_file_is_in_readme(path: Path) -> None:
    """contrib/README.md lists every file."""
    assert f"`{path.name}`" in (CONTRIB / "README.md").read_text(encoding="utf-8")
