"""Builds lbx with its request path compiled by mypyc (the rest of the metadata: pyproject.toml).

The modules listed under ``[tool.lbx] compiled`` in pyproject.toml run for every request. They
are strictly typed Python, which mypyc turns into C extensions: the same code, about half the
CPU per request (docs/performance.md).
``LBX_PURE_PYTHON=1`` builds plain Python instead, for py-spy profiles and for fuzzing (atheris
only sees Python code); so does a machine without a C compiler.
"""

from __future__ import annotations

import glob
import os
import tomllib

from setuptools import Extension, setup

with open("pyproject.toml", "rb") as project:
    NAMES = tomllib.load(project)["tool"]["lbx"]["compiled"]
COMPILED = [f"core/lbx/{name}.py" for name in NAMES]


def remove_extensions() -> None:
    """Delete the extension modules an earlier compiled build left in the source tree: an
    editable install imports from there, and an extension module shadows its ``.py`` file."""
    stale = [path for name in NAMES for path in glob.glob(f"core/lbx/{name}.*.so")]
    for path in stale + glob.glob("core/*__mypyc.*.so"):
        os.remove(path)


def extensions() -> list[Extension]:
    if os.environ.get("LBX_PURE_PYTHON"):
        remove_extensions()
        return []
    from mypyc.build import mypycify

    # No config file: the project's mypy settings cover the plugins too, which are not built here.
    built = mypycify(["--config-file=", *COMPILED], opt_level="3")
    for extension in built:
        extension.optional = True  # no C compiler: lbx installs as plain Python (same behaviour)
    return built


setup(ext_modules=extensions())
