"""lbx-adaptive ``ewma``: power of two choices over peak-EWMA latency."""

from __future__ import annotations

import math
import random
from collections import Counter
from typing import Any

import pytest

import lbx
from lbx import Backend, Backends, LoadBalancer
from lbx_adaptive.ewma import PeakEwma

A = Backend("10.0.0.1", 80)
B = Backend("10.0.0.2", 80)
C = Backend("10.0.0.3", 80)
SELECTIONS = 100_000


class Clock:
    """A hand-driven monotonic clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def balancer(
    *backends: Backend, clock: Clock | None = None, options: dict[str, Any] | None = None
) -> LoadBalancer:
    rng = random.Random(3)

    def factory(items: Any, opts: Any) -> PeakEwma:
        return PeakEwma(items, opts, clock or Clock(), rng)

    return LoadBalancer(Backends(tuple(backends)), factory, options, "ewma")


def ewma(lb: LoadBalancer) -> PeakEwma:
    assert isinstance(lb.selector, PeakEwma)
    return lb.selector


def test_registered_through_the_plugin_hook() -> None:
    """Enabling ``ewma`` registers only that selector, and it asks for feedback."""
    pm = lbx.get_plugin_manager(["ewma"])
    registered: dict[str, Any] = {}
    pm.hook.register_selectors(register=registered.__setitem__)
    assert registered == {"ewma": PeakEwma}
    assert LoadBalancer(Backends((A,)), PeakEwma).tracks


@pytest.mark.parametrize("weights", [(1, 1, 1), (1, 2, 3, 4)])
def test_weights_respected_within_one_percent(weights: tuple[int, ...]) -> None:
    """With equal costs 100k selections split by weight within 1%."""
    backends = [Backend("10.0.0.1", 80 + i, w) for i, w in enumerate(weights)]
    lb = balancer(*backends)
    counts = Counter(lb.select(b"") for _ in range(SELECTIONS))
    for backend in backends:
        expected = SELECTIONS * backend.weight / sum(weights)
        assert counts[backend] == pytest.approx(expected, rel=0.01), counts


def test_most_traffic_avoids_a_backend_50ms_slower() -> None:
    """Simulated: A answers in 51 ms, B and C in 1 ms; A gets under 1% of 100k requests."""
    clock = Clock()
    lb = balancer(A, B, C, clock=clock)
    latency = {A: 0.051, B: 0.001, C: 0.001}
    counts: Counter[Backend] = Counter()
    for _ in range(SELECTIONS):
        backend = lb.select(b"")
        assert backend is not None
        counts[backend] += 1
        ewma(lb).on_start(backend)
        clock.now += 0.001
        ewma(lb).on_finish(backend, latency[backend], True)
    assert counts[A] / SELECTIONS < 0.01, counts
    assert counts[B] == pytest.approx(counts[C], rel=0.05)


def test_peak_then_ewma_then_idle_decay() -> None:
    """A higher sample replaces the estimate; a lower one is averaged in; idleness decays it."""
    clock = Clock()
    lbs = ewma(balancer(A, clock=clock, options={"decay": 10, "default_rtt": 0.02}))
    assert lbs.cost(A) == pytest.approx(0.02)
    lbs.on_finish(A, 0.5, True)
    assert lbs.rtt[0] == 0.5
    clock.now += 10
    assert lbs.cost(A) == pytest.approx(0.5 / math.e)
    lbs.on_finish(A, 0.1, True)
    keep = math.exp(-1)
    assert lbs.rtt[0] == pytest.approx(0.5 * keep + 0.1 * (1 - keep))


def test_outstanding_requests_raise_the_cost() -> None:
    """Cost is latency times (outstanding + 1), so a busy backend loses against an idle one."""
    lb = balancer(A, B)
    lbs = ewma(lb)
    lbs.on_start(A)
    lbs.on_start(A)
    assert lbs.cost(A) == pytest.approx(3 * lbs.cost(B))
    assert {lb.select(b"") for _ in range(50)} == {B}


def test_failures_count_as_slow() -> None:
    """A failed attempt counts as at least ``failure_penalty`` seconds."""
    lb = balancer(A, B, options={"failure_penalty": 2})
    ewma(lb).on_finish(A, 0.001, False)
    assert ewma(lb).rtt[0] == 2.0
    assert {lb.select(b"") for _ in range(50)} == {B}


def test_candidates_cover_every_backend_once() -> None:
    """The candidates are the better of two, the other one, then every other backend once."""
    backends = [Backend("10.0.0.1", 80 + i) for i in range(7)]
    lb = balancer(*backends)
    for _ in range(20):
        candidates = list(ewma(lb).iter(b""))
        assert sorted(candidates, key=Backend.sort_key) == backends
    for backend in backends[:-1]:
        lb.backends.set_healthy(backend, False)
    assert {lb.select(b"") for _ in range(20)} == {backends[-1]}
    lb.backends.set_enabled(backends[-1], False)
    assert lb.select(b"") is None


def test_max_iterations_bounds_the_walk() -> None:
    """With A down and cheaper, one candidate is not enough, two are."""
    lb = balancer(A, B)
    ewma(lb).on_finish(B, 1.0, True)
    lb.backends.set_healthy(A, False)
    assert lb.select(b"", max_iterations=1) is None
    assert lb.select(b"", max_iterations=2) == B


def test_update_keeps_estimates_and_counts() -> None:
    """A rebuild keeps estimates and in-flight counts; newcomers start at the mean estimate."""
    clock = Clock()
    lb = balancer(A, B, clock=clock)
    ewma(lb).on_finish(A, 0.2, True)
    ewma(lb).on_finish(B, 0.4, True)
    ewma(lb).on_start(B)
    lb.update([A, B, C])
    lbs = ewma(lb)
    assert lbs.rtt == pytest.approx([0.2, 0.4, 0.3])
    assert lbs.outstanding == [0, 1, 0]
    lbs.on_finish(B, 0.4, True)  # started before the update
    assert lbs.outstanding == [0, 0, 0]
    lb.update([C])
    ewma(lb).on_finish(A, 0.1, True)  # removed while in flight: ignored
    assert ewma(lb).rtt == pytest.approx([0.3])


def test_single_and_empty() -> None:
    """One backend is always chosen; none selects None."""
    assert balancer(A).select(b"") == A
    assert balancer().select(b"") is None


def test_options_are_checked() -> None:
    """Unknown options, non-positive values and weight 0 are ValueErrors."""
    with pytest.raises(ValueError, match=r"unknown selection_options \['tau'\]"):
        PeakEwma([A], {"tau": 1})
    with pytest.raises(ValueError, match="decay must be a positive number"):
        PeakEwma([A], {"decay": 0})
    with pytest.raises(ValueError, match="weight of at least 1"):
        PeakEwma([Backend("10.0.0.1", 80, 0)], {})
