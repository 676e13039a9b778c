"""Fixture plugin: a background service registered with ``ready=True`` that fails before it is
ready (as demo backends whose port is taken)."""

from __future__ import annotations

from collections.abc import Callable

import anyio.abc

from lbx import hookimpl
from lbx.server import Server


@hookimpl
def register_background_services(server: Server, register: Callable[..., None]) -> None:
    async def run(task_status: anyio.abc.TaskStatus[None]) -> None:
        raise LookupError("no such thing: the service cannot start")

    register("failing service", run, ready=True)
