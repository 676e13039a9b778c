"""Running background services (``register_background_services``): the ones that must be ready
before traffic first, the others once the server listens, all in a ``BackgroundGroup`` that a
reload can stop and replace without touching the listeners."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import anyio
import anyio.abc

from lbx.errors import StartupError, describe

log = logging.getLogger("lbx.server")

Registered = tuple[str, Callable[..., Any], bool]
"""(name, run, ready) as ``register(name, run, ready=...)`` received them."""


class BackgroundGroup:
    """The background services of one configuration, in a task group of their own."""

    def __init__(self, services: Sequence[Registered]) -> None:
        self.services = list(services)
        self.listening = anyio.Event()
        """Set once the server listens: the services that need not be ready start then."""
        self._scope: anyio.CancelScope | None = None
        self._done = anyio.Event()

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Start the ready services (``task_status.started()`` once they are), the others when
        ``listening`` is set; run until ``stop``."""
        try:
            async with anyio.create_task_group() as group:
                self._scope = group.cancel_scope
                await start_ready(group, self.services)
                task_status.started()
                await self.listening.wait()
                start_others(group, self.services)
        finally:
            self._done.set()

    async def stop(self) -> None:
        """Cancel every service and wait until they all ended."""
        if self._scope is not None:
            self._scope.cancel()
            await self._done.wait()


async def start_ready(tasks: anyio.abc.TaskGroup, services: Sequence[Registered]) -> None:
    """Start the services that must be ready before traffic (a first round of checks)."""
    for name, run, ready in services:
        if ready:
            await tasks.start(_run_ready, name, run, name=name)


def start_others(tasks: anyio.abc.TaskGroup, services: Sequence[Registered]) -> None:
    for name, run, ready in services:
        if not ready:
            tasks.start_soon(_run, name, run, name=name)


async def _run(name: str, run: Callable[[], Any]) -> None:
    try:
        await run()
    except Exception:
        log.exception("background service %s failed", name)


async def _run_ready(
    name: str,
    run: Callable[..., Any],
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Run a service registered with ``ready=True``: one that fails before it is ready is a
    failed start (one line, its traceback at debug level); once ready, like any service."""
    status = _ReadyStatus(task_status)
    try:
        await run(task_status=status)
    except Exception as exc:
        if status.ready:
            log.exception("background service %s failed", name)
            return
        log.debug("background service %s failed before it was ready", name, exc_info=True)
        raise StartupError(f"background service {name!r} failed to start: {describe(exc)}") from exc
    if not status.ready:
        raise StartupError(f"background service {name!r} returned before it was ready")


class _ReadyStatus:
    """The ``task_status`` handed to a ready=True service: remembers that it became ready."""

    def __init__(self, task_status: anyio.abc.TaskStatus[None]) -> None:
        self.task_status = task_status
        self.ready = False

    def started(self, value: None = None) -> None:
        self.ready = True
        self.task_status.started(value)
