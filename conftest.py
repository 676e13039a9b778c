"""Fixtures for every test in the repository (kernel and plugins): see lbx.pytest_plugin.

Also refuses to run against a stale compiled request path: after an edit of one of the modules
mypyc compiles (``[tool.lbx] compiled`` in pyproject.toml), the C extension built from the old
source would still be the one imported.
"""

from __future__ import annotations

import importlib
import tomllib
from pathlib import Path

import pytest

pytest_plugins = ["lbx.pytest_plugin"]

ROOT = Path(__file__).resolve().parent


def compiled_modules() -> list[str]:
    with (ROOT / "pyproject.toml").open("rb") as project:
        return [f"lbx.{name}" for name in tomllib.load(project)["tool"]["lbx"]["compiled"]]


def pytest_sessionstart(session: pytest.Session) -> None:
    stale = []
    for name in compiled_modules():
        built = Path(str(importlib.import_module(name).__file__))
        source = built.parent / (name.rsplit(".", 1)[1] + ".py")
        if built.suffix != ".py" and source.stat().st_mtime > built.stat().st_mtime:
            stale.append(str(source.relative_to(ROOT)))
    if stale:
        pytest.exit(
            f"{', '.join(stale)} changed since mypyc compiled it: run `make test` (it rebuilds), "
            "or `LBX_PURE_PYTHON=1 .venv/bin/pip install -e .` to test plain Python",
            returncode=2,
        )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "over_both: run the test over HTTP/1.1, then over HTTP/2 (h2c): see tests/over_both.py",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.definition.get_closest_marker("over_both") is not None:
        from tests.over_both import VERSIONS

        metafunc.parametrize("lbx", VERSIONS, indirect=True)


@pytest.fixture
def lbx(lbx, request):
    """lbx.pytest_plugin's ``lbx``; in an ``over_both`` test's ``[2]`` run, the services it
    starts also speak HTTP/2 by prior knowledge (tests/over_both.py)."""
    from tests.over_both import lbx_over

    yield from lbx_over(lbx, request)
