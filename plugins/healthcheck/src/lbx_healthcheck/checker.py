"""The background service that runs the active checks of every service.

Every backend is checked every ``frequency`` seconds, each check bounded by ``timeout``:

- ``parallel: true`` (the default): one loop per backend, their start times spread evenly over
  the period, at most ``max_parallel`` checks in flight at once, and never two starts closer
  than half the spread allows (``ServiceChecker._pace``);
- ``parallel: false``: Pingora's sequential round, one backend after the other, rounds starting
  every ``frequency`` seconds from the start of the previous one (an overrunning round is
  followed by the next at once).

The first round of every service runs before lbx listens (the service is registered with
``ready=True``): backends failing it start unhealthy, so the first request never goes to a
backend that was already dead at start.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from logging import getLogger
from typing import Protocol

import anyio
import anyio.abc

from lbx import Backend, Change
from lbx_healthcheck.state import ServiceHealth

log = getLogger("lbx.healthcheck")


class Check(Protocol):
    """One kind of active check (``checks.TcpCheck``, ``checks.HttpCheck``)."""

    async def __call__(self, backend: Backend) -> str | None:
        """None when ``backend`` is healthy, else the reason it is not."""

    async def retain(self, backends: Collection[Backend]) -> None:
        """Let go of what is kept between checks (connections) for backends not in
        ``backends``: called when the service's backends change, and with ``()`` at the end."""


class ServiceChecker:
    """The active checks of one service."""

    def __init__(self, health: ServiceHealth, check: Check) -> None:
        assert health.active is not None
        self.health = health
        self.settings = health.active
        self.check = check
        self.limiter = anyio.CapacityLimiter(self.settings.max_parallel)
        self.rounds = 0
        self._backends: tuple[Backend, ...] = ()
        self._next_start = 0.0
        """The earliest start of the next paced check (``time.monotonic()``)."""
        self._checked: set[Backend] = set()
        """Backends checked at least once: any other one's first check decides alone, as at
        start-up (a backend that joins takes no traffic before it passes one)."""
        self._joined: anyio.Event | None = None
        self._fresh: set[Backend] = set()
        """Backends that joined since the schedule last looked (possibly back again)."""
        health.backends.set_listeners.append(self._set_changed)

    def _set_changed(self, change: Change) -> None:
        self._checked.difference_update(change.removed)
        self._fresh.update(change.added)
        self._fresh.update(change.reweighted)
        if self._joined is not None:
            self._joined.set()

    async def current_backends(self) -> tuple[Backend, ...]:
        """The service's backends; when they changed, the check lets go of those that left.

        The load balancer replaces its tuple on every change, so an identity test is enough and
        costs nothing in the periods where nothing changed.
        """
        items = self.health.backends.items
        if items is not self._backends:
            self._backends = items
            await self.check.retain(items)
        return items

    async def _verdict(self, backend: Backend) -> str | None:
        """One check within ``timeout``: None when healthy, else why not."""
        timeout = self.settings.timeout
        try:
            with anyio.fail_after(timeout):
                return await self.check(backend)
        except TimeoutError:
            return f"{self.settings.type} check timed out after {timeout:g}s"
        except Exception as exc:  # a bug in a check (or a validator) must not stop checking
            return f"{self.settings.type} check error: {exc!r}"

    async def precheck(self, backends: Sequence[Backend]) -> dict[str, str]:
        """Check backends about to join (discovery, ``lbx backend add``) before they do: the
        update waits for this, so they never take traffic before a check passed, and the
        backends they replace keep serving until then. Returns the verdicts by address: ``""``
        when healthy, else the reason ``lbx status`` shows."""
        verdicts: dict[str, str] = {}

        async def one(backend: Backend) -> None:
            async with self.limiter:
                reason = await self._verdict(backend)
            self._checked.add(backend)
            self.health.observe_check(
                backend, reason is None, reason or "", initial=True, when="before joining"
            )
            verdicts[backend.addr] = self.health.state(backend).active_reason

        async with anyio.create_task_group() as tasks:
            for backend in backends:
                tasks.start_soon(one, backend)
        return verdicts

    async def check_one(self, backend: Backend, initial: bool = False) -> None:
        initial = initial or backend not in self._checked
        reason = await self._verdict(backend)
        if backend in self.health.backends.health:  # still a member when the check ended
            self._checked.add(backend)
            self.health.observe_check(backend, reason is None, reason or "", initial)

    async def _limited(self, backend: Backend, initial: bool) -> None:
        async with self.limiter:
            await self.check_one(backend, initial)

    async def run_round(self, initial: bool = False) -> None:
        backends = await self.current_backends()
        if self.settings.parallel:
            async with anyio.create_task_group() as tasks:
                for backend in backends:
                    tasks.start_soon(self._limited, backend, initial)
        else:
            for backend in backends:
                await self.check_one(backend, initial)
        self.rounds += 1

    def log_first_round(self) -> None:
        """The line that tells an operator the checks run (at start, and after a reload that
        turned them on or changed them), with what their first round found."""
        settings = self.settings
        backends = self.health.backends
        healthy = sum(1 for backend in backends.items if backends.health[backend].healthy)
        kind = f"http {settings.method} {settings.path}" if settings.type == "http" else "tcp"
        log.info(
            "service %s: %s health checks every %gs: %d of %d backends healthy",
            self.health.service,
            kind,
            settings.frequency,
            healthy,
            len(backends.items),
        )

    async def run_forever(self, first_round_started: float) -> None:
        """Check every backend every ``frequency`` seconds until cancelled."""
        if self.settings.parallel:
            await self._run_staggered(first_round_started)
            return
        frequency = self.settings.frequency
        next_round = first_round_started + frequency
        while True:
            await anyio.sleep(max(0.0, next_round - time.monotonic()))
            started = time.monotonic()
            await self.run_round()
            next_round = max(started + frequency, time.monotonic())

    async def _run_staggered(self, first_round_started: float) -> None:
        """One loop per backend, their start times spread evenly over the period.

        Each backend is still checked every ``frequency`` seconds, but the checks of a large
        service do not all land on the event loop in the same millisecond, and a slow check
        delays only its own backend. The backend list is re-read every period, so backends
        added or removed by the load balancer are followed: one that joins is checked at once
        (it takes no traffic before it passed a check), then on the schedule.
        """
        frequency = self.settings.frequency
        self._joined = anyio.Event()
        running: dict[Backend, anyio.CancelScope] = {}
        async with anyio.create_task_group() as tasks:
            next_sync = first_round_started
            scheduled: tuple[Backend, ...] = ()
            while True:
                items = await self.current_backends()
                if items is not scheduled or self._fresh:
                    scheduled = items
                    for backend in (set(running) - set(items)) | (self._fresh & set(running)):
                        running.pop(backend).cancel()
                    self._fresh.clear()
                    count = len(items)
                    for index, backend in enumerate(items):
                        if backend not in running:
                            offset = frequency * index / count
                            first = max(next_sync + frequency + offset, time.monotonic())
                            if backend not in self._checked:
                                first = time.monotonic()
                            running[backend] = scope = anyio.CancelScope()
                            tasks.start_soon(self._backend_loop, backend, first, scope)
                    continue  # look again at once: the set may have changed meanwhile
                next_sync += frequency
                with anyio.move_on_after(max(0.0, next_sync - time.monotonic())):
                    await self._joined.wait()
                if self._joined.is_set():
                    self._joined = anyio.Event()
                    next_sync -= frequency  # woken early: same period

    async def _backend_loop(self, backend: Backend, first: float, scope: anyio.CancelScope) -> None:
        frequency = self.settings.frequency
        with scope:
            next_check = first
            while True:
                await anyio.sleep(max(0.0, next_check - time.monotonic()))
                async with self.limiter:
                    await self._pace()
                    await self.check_one(backend)
                next_check = max(next_check + frequency, time.monotonic())

    async def _pace(self) -> None:
        """Start checks at least ``frequency / (2 x backends)`` apart, whatever delayed them.

        The schedule alone spreads them, but checks that waited for a slot (``max_parallel``
        checks in flight: with black-holed backends each holds one for ``timeout``) or for a
        busy event loop would otherwise all start as soon as they can, back to back. Paced, they
        catch up at twice the scheduled rate at most.
        """
        now = time.monotonic()
        start = max(now, self._next_start)
        self._next_start = start + self.settings.frequency / (2 * max(1, len(self._backends)))
        if start > now:
            await anyio.sleep(start - now)


async def run_checks(
    checkers: Sequence[ServiceChecker],
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """First round everywhere (lbx waits for it before listening), then a loop per service."""
    started = time.monotonic()
    try:
        async with anyio.create_task_group() as first:
            for checker in checkers:
                first.start_soon(checker.run_round, True)
        for checker in checkers:
            checker.log_first_round()
        task_status.started()
        async with anyio.create_task_group() as tasks:
            for checker in checkers:
                tasks.start_soon(checker.run_forever, started)
    finally:
        with anyio.CancelScope(shield=True):  # lbx stops: close the kept connections
            for checker in checkers:
                await checker.check.retain(())
