"""One view of health per service: active verdicts and passive ejections, combined.

A backend is healthy when its active checks say so (or none are configured) *and* it is not
ejected by passive checking. Every change goes through ``Backends.set_healthy``, so the kernel
logs it (warning with the reason when a backend goes down, info when it comes back), calls the
``backend_health_changed`` hook, and selection skips the backend from the next request on.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from logging import getLogger

from lbx import Backend, Backends, Change
from lbx_healthcheck.settings import HealthCheckSettings, PassiveSettings

log = getLogger("lbx.healthcheck")


@dataclass
class BackendState:
    """What the plugin knows about one backend."""

    active_ok: bool = True
    active_counter: int = 0
    """Consecutive check results that contradict ``active_ok`` (Pingora's counter)."""
    active_reason: str = ""
    failures: int = 0
    """Consecutive proxy failures (passive)."""
    ejected: bool = False
    eject_reason: str = ""
    ejections: int = 0
    """Ejections in a row without a successful request in between (the back-off exponent)."""
    probation: bool = False
    """Re-admitted after an ejection and no request succeeded yet: one failure ejects again."""
    refused_logged: bool = False
    until: float = 0.0
    """When the current ejection ends (``time.monotonic()``), shared with every worker."""
    readmit: asyncio.TimerHandle | None = None


class ServiceHealth:
    """Health of one service's backends, written by active checks and by passive tracking."""

    def __init__(
        self,
        service: str,
        backends: Backends,
        active: HealthCheckSettings | None,
        passive: PassiveSettings | None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.service = service
        self.backends = backends
        self.active = active
        self.passive = passive
        self.clock = clock
        self.states: dict[Backend, BackendState] = {}
        backends.set_listeners.append(self._forget_departed)

    def _forget_departed(self, change: Change) -> None:
        """Backends that left the set (or changed weight: a new ``Backend``) lose their state."""
        for backend in [b for b in self.states if b not in self.backends.health]:
            state = self.states.pop(backend)
            if state.readmit is not None:
                state.readmit.cancel()

    def state(self, backend: Backend) -> BackendState:
        state = self.states.get(backend)
        if state is None:
            state = self.states[backend] = BackendState()
        return state

    def _apply_active(self, backend: Backend) -> None:
        state = self.state(backend)
        if backend in self.backends.health:
            self.backends.set_healthy(backend, state.active_ok, state.active_reason)

    def _apply_passive(self, backend: Backend) -> None:
        state = self.state(backend)
        if backend in self.backends.health:
            self.backends.set_ejected(backend, state.ejected, state.eject_reason, state.until)

    # -- active checks ----------------------------------------------------------------------
    def observe_check(
        self, backend: Backend, ok: bool, reason: str, initial: bool = False, when: str = ""
    ) -> None:
        """Record one active check result; ``initial``: a backend's first check (the start-up
        round, or one that joins later: ``when`` says which), taken as is."""
        when = when or "first check"
        state = self.state(backend)
        if initial:
            state.active_ok, state.active_counter = ok, 0
            state.active_reason = f"{reason} ({when})" if not ok else ""
            self._apply_active(backend)
            return
        if ok == state.active_ok:
            state.active_counter = 0
            return
        state.active_counter += 1
        settings = self.active or HealthCheckSettings()
        threshold = settings.consecutive_success if ok else settings.consecutive_failure
        if state.active_counter < threshold:
            return
        state.active_ok, state.active_counter = ok, 0
        if not ok:
            state.active_reason = (
                reason if threshold == 1 else f"{reason} ({threshold} checks in a row)"
            )
        self._apply_active(backend)

    # -- passive checks ---------------------------------------------------------------------
    def max_ejected(self) -> int:
        """How many backends may be ejected at once: ``max_ejection_percent`` of them, rounded
        down (so a service with one backend never ejects it unless the share is 100)."""
        assert self.passive is not None
        return math.floor(len(self.backends.items) * self.passive.max_ejection_percent / 100)

    def ejected_count(self) -> int:
        """Ejected backends of the service, by any worker process (the flags are shared)."""
        return sum(1 for health in self.backends.health.values() if health.ejected)

    def record_failure(self, backend: Backend, what: str) -> None:
        """A request to ``backend`` failed because of the backend (connect, reset, timeout...)."""
        passive = self.passive
        if passive is None:
            return
        state = self.state(backend)
        if state.ejected:
            return  # requests that were in flight when it was ejected
        state.failures += 1
        if state.failures < passive.max_fails and not state.probation:
            return
        if self.ejected_count() >= self.max_ejected():
            if not state.refused_logged:
                state.refused_logged = True
                log.warning(
                    "service %s: %s not ejected after %d failures (last: %s): already %d of %d "
                    "backends ejected, max_ejection_percent is %g",
                    self.service,
                    backend.addr,
                    state.failures,
                    what,
                    self.ejected_count(),
                    len(self.backends.items),
                    passive.max_ejection_percent,
                )
            return
        self._eject(backend, state, what)

    def record_success(self, backend: Backend) -> None:
        """A request to ``backend`` got a response (not a counted 5xx)."""
        state = self.states.get(backend)
        if state is None or state.ejected:
            return
        if state.failures or state.probation or state.ejections:
            state.failures = 0
            state.probation = False
            state.ejections = 0
            state.refused_logged = False

    def _eject(self, backend: Backend, state: BackendState, what: str) -> None:
        passive = self.passive
        assert passive is not None
        state.ejections += 1
        seconds = min(passive.ejection_time * 2 ** (state.ejections - 1), passive.max_ejection_time)
        if state.probation:
            cause = f"failed again after re-admission ({what})"
        else:
            cause = f"{state.failures} consecutive proxy failures (last: {what})"
        state.ejected = True
        state.failures = 0
        state.probation = False
        state.refused_logged = False
        state.eject_reason = f"passive check: {cause}; ejected for {seconds:g}s"
        state.until = time.monotonic() + seconds
        loop = asyncio.get_running_loop()
        state.readmit = loop.call_later(seconds, self._readmit, backend)
        self._apply_passive(backend)

    def _readmit(self, backend: Backend) -> None:
        state = self.state(backend)
        state.readmit = None
        state.ejected = False
        state.eject_reason = ""
        state.probation = True
        if not state.active_ok:
            log.info(
                "service %s: %s ejection over, still failing active checks",
                self.service,
                backend.addr,
            )
        self._apply_passive(backend)

    def close(self) -> None:
        for state in self.states.values():
            if state.readmit is not None:
                state.readmit.cancel()
                state.readmit = None
