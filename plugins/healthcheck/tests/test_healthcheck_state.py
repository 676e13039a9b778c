"""lbx-healthcheck's one view of health: thresholds, ejection back-off, limits, interplay."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Collection
from typing import Any

import anyio

from lbx import Backend, Backends, Health
from lbx_healthcheck import HealthCheckSettings, PassiveSettings, ServiceChecker, ServiceHealth

A = Backend("127.0.0.1", 8001)
B = Backend("127.0.0.1", 8002)
C = Backend("127.0.0.1", 8003)
D = Backend("127.0.0.1", 8004)


def service(
    *backends: Backend,
    active: HealthCheckSettings | None = None,
    passive: PassiveSettings | None = None,
) -> tuple[ServiceHealth, list[tuple[str, bool, str]]]:
    """A ``ServiceHealth`` plus the changes its ``Backends`` announced (what the kernel logs)."""
    changes: list[tuple[str, bool, str]] = []
    items = Backends(backends)

    def listener(backend: Backend, health: Health) -> None:
        changes.append((backend.addr, health.ready, health.reason))

    items.listeners.append(listener)
    return ServiceHealth("web", items, active, passive), changes


def run(function: Callable[[], Any]) -> Any:
    async def main() -> Any:
        return function()

    return asyncio.run(main())


def test_start_up_verdict_is_taken_as_is():
    """The first round decides at once, whatever consecutive_failure says."""
    health, changes = service(A, B, active=HealthCheckSettings(consecutive_failure=3))
    health.observe_check(A, False, "tcp check failed: connection refused", initial=True)
    health.observe_check(B, True, "", initial=True)
    assert changes == [
        ("127.0.0.1:8001", False, "tcp check failed: connection refused (first check)")
    ]
    assert not health.backends.ready(A) and health.backends.ready(B)


def test_consecutive_thresholds_as_in_pingora():
    """Flip only after N results in a row; a contrary result resets the count."""
    settings = HealthCheckSettings(consecutive_failure=2, consecutive_success=3)
    health, changes = service(A, active=settings)
    health.observe_check(A, False, "down")
    health.observe_check(A, True, "")
    health.observe_check(A, False, "down")
    assert changes == []
    health.observe_check(A, False, "down")
    assert changes == [("127.0.0.1:8001", False, "down (2 checks in a row)")]
    for _ in range(2):
        health.observe_check(A, True, "")
    assert len(changes) == 1
    health.observe_check(A, True, "")
    assert changes[-1] == ("127.0.0.1:8001", True, "")


def test_ejection_time_doubles_up_to_the_cap_and_resets_on_success():
    """Re-ejection right after re-admission doubles the time (capped); a success resets it."""
    passive = PassiveSettings(max_fails=2, ejection_time=10, max_ejection_time=30)

    def scenario() -> list[float]:
        health, changes = service(A, B, C, passive=passive)
        loop = asyncio.get_running_loop()
        times = []
        health.record_failure(A, "refused")
        assert changes == []
        health.record_failure(A, "refused")
        for _ in range(4):
            state = health.state(A)
            assert state.ejected and state.readmit is not None
            times.append(round(state.readmit.when() - loop.time()))
            health._readmit(A)  # the timer firing
            health.record_failure(A, "refused")  # on probation: one failure ejects again
        health._readmit(A)
        health.record_success(A)
        health.record_failure(A, "refused")
        assert not health.state(A).ejected  # max_fails again, not probation
        health.record_failure(A, "refused")
        state = health.state(A)
        assert state.readmit is not None
        times.append(round(state.readmit.when() - loop.time()))
        assert changes[0] == (
            "127.0.0.1:8001",
            False,
            "passive check: 2 consecutive proxy failures (last: refused); ejected for 10s",
        )
        assert changes[1] == ("127.0.0.1:8001", True, "")
        health.close()
        return times

    assert run(scenario) == [10, 20, 30, 30, 10]


def test_never_more_than_max_ejection_percent():
    """With 4 backends and 50%, a third failing backend stays in."""

    def scenario() -> None:
        health, changes = service(A, B, C, D, passive=PassiveSettings(max_fails=1))
        for backend in (A, B, C):
            health.record_failure(backend, "reset")
        assert [addr for addr, healthy, _ in changes if not healthy] == [A.addr, B.addr]
        assert health.backends.ready(C)
        health.close()

    run(scenario)
    lone, changes = service(A, passive=PassiveSettings(max_fails=1))
    lone.record_failure(A, "reset")  # one backend and 50%: never ejected
    assert changes == []


def test_ejection_over_while_active_check_fails_stays_down():
    """Passive re-admission never overrides a failing active check, and vice versa."""

    def scenario() -> None:
        health, changes = service(
            A, B, active=HealthCheckSettings(), passive=PassiveSettings(max_fails=1)
        )
        health.record_failure(A, "reset")
        health.observe_check(A, False, "tcp check failed")
        health._readmit(A)
        assert not health.backends.ready(A)
        health.observe_check(A, True, "")
        assert health.backends.ready(A)
        health.record_failure(A, "reset")  # probation: ejected again
        health.observe_check(A, True, "")
        assert not health.backends.ready(A)  # a passing check does not end an ejection
        assert [healthy for _, healthy, _ in changes] == [False, True, False]
        health.close()

    run(scenario)


def test_checker_bounds_each_check_with_the_timeout():
    """A check that hangs counts as a failure after ``timeout``, not later."""
    settings = HealthCheckSettings(timeout=0.05, max_parallel=2)
    health, changes = service(A, B, C, active=settings)

    class HangsOnB:
        async def __call__(self, backend: Backend) -> str | None:
            if backend == B:
                await anyio.sleep_forever()
            return None

        async def retain(self, backends: Collection[Backend]) -> None:
            pass

    checker = ServiceChecker(health, HangsOnB())

    async def main() -> float:
        started = anyio.current_time()
        await checker.run_round(initial=True)
        return anyio.current_time() - started

    elapsed = anyio.run(main)
    assert changes == [(B.addr, False, "tcp check timed out after 0.05s (first check)")]
    assert elapsed < 1


def test_checks_that_waited_for_a_slot_start_paced():
    """With ``max_parallel: 1`` a slow check of A holds the only slot while B, C and D fall due:
    they then start one by one, ``frequency / (2 x backends)`` apart, not back to back."""
    settings = HealthCheckSettings(frequency=0.4, max_parallel=1)
    health, _ = service(A, B, C, D, active=settings)
    starts: list[tuple[Backend, float]] = []

    class SlowOnceOnA:
        async def __call__(self, backend: Backend) -> str | None:
            starts.append((backend, time.monotonic()))
            if len(starts) == 1:
                await anyio.sleep(0.3)
            return None

        async def retain(self, backends: Collection[Backend]) -> None:
            pass

    checker = ServiceChecker(health, SlowOnceOnA())

    async def main() -> None:
        await checker.current_backends()
        # A falls due at once, B, C and D 0.1, 0.2 and 0.3 s later (the staggered schedule).
        with anyio.move_on_after(0.45):
            await checker.run_forever(time.monotonic() - settings.frequency)

    anyio.run(main)
    assert [backend for backend, _ in starts[:4]] == [A, B, C, D]
    moments = [moment for _, moment in starts[:4]]
    gaps = [later - earlier for earlier, later in itertools.pairwise(moments)]
    assert gaps[0] >= 0.29  # B waited for A's slot
    assert min(gaps[1:]) >= 0.045  # then C and D were paced (0.05 s), not started at once
