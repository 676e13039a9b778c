"""pytest fixtures for testing lbx and lbx plugins with real processes and real backends.

Enable them in a ``conftest.py`` with ``pytest_plugins = ["lbx.pytest_plugin"]``:

- ``backends``: ``backends.start(name)`` starts a ``DemoBackend`` on 127.0.0.1 (any free port);
  all stop after the test.
- ``lbx``: ``lbx(*args)`` runs ``lbx serve ARGS`` and returns the ready ``LbxProcess``; every
  process a test started is ended (by its pid) after the test.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from lbx.testing import BackendThread, LbxProcess


@pytest.fixture
def backends() -> Iterator[BackendThread]:
    """Start ``DemoBackend`` servers with ``backends.start(name)``; all stop after the test."""
    thread = BackendThread()
    yield thread
    thread.close()


@pytest.fixture
def lbx(request: pytest.FixtureRequest) -> Iterator[Callable[..., LbxProcess]]:
    """``lbx(*args)`` starts ``lbx serve ARGS`` (in the rootdir) and waits until it is ready."""
    started: list[LbxProcess] = []
    cwd = str(request.config.rootpath) if os.path.isdir(request.config.rootpath) else None

    def start(*args: str, env: dict[str, str] | None = None, ready: bool = True) -> LbxProcess:
        process = LbxProcess(*args, env=env, cwd=cwd)
        started.append(process)
        return process.start() if ready else process

    yield start
    for process in started:
        process.close()
