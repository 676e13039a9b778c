"""lbx-healthcheck's one view of health: thresholds, ejection back-off, limits, interplay."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
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
        ("127.0.0.1:8001", False, "tcp check failed: connection refused (at start-up)")
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

    async def check(backend: Backend) -> str | None:
        if backend == B:
            await anyio.sleep_forever()
        return None

    checker = ServiceChecker(health, check)

    async def main() -> float:
        started = anyio.current_time()
        await checker.run_round(initial=True)
        return anyio.current_time() - started

    elapsed = anyio.run(main)
    assert changes == [(B.addr, False, "tcp check timed out after 0.05s (at start-up)")]
    assert elapsed < 1
