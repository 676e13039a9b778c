"""Shared fixtures: real lbx processes and real backends on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lbx.testing import BackendThread, LbxProcess

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def backends() -> Iterator[BackendThread]:
    """Start ``DemoBackend`` servers with ``backends.start(name)``; all stop after the test."""
    thread = BackendThread()
    yield thread
    thread.close()


@pytest.fixture
def lbx() -> Iterator[Callable[..., LbxProcess]]:
    """``lbx(*args)`` starts ``lbx serve ARGS`` and waits until it is ready."""
    started: list[LbxProcess] = []

    def start(*args: str, env: dict[str, str] | None = None, ready: bool = True) -> LbxProcess:
        process = LbxProcess(*args, env=env, cwd=str(ROOT))
        started.append(process)
        return process.start() if ready else process

    yield start
    for process in started:
        process.close()
