"""lbx-adaptive ``leastconn``: weighted least outstanding requests across the service."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

import lbx
from lbx import Backend, Backends, LoadBalancer
from lbx_adaptive.leastconn import LeastConnections

A = Backend("10.0.0.1", 80)
B = Backend("10.0.0.2", 80)
C = Backend("10.0.0.3", 80)
SELECTIONS = 100_000


def balancer(*backends: Backend) -> LoadBalancer:
    return LoadBalancer(Backends(tuple(backends)), LeastConnections, {}, "leastconn")


def selector(lb: LoadBalancer) -> LeastConnections:
    assert isinstance(lb.selector, LeastConnections)
    return lb.selector


def start(lb: LoadBalancer, key: bytes = b"") -> Backend:
    """Select and start an attempt, as the proxy does."""
    backend = lb.select(key)
    assert backend is not None
    selector(lb).on_start(backend)
    return backend


def test_registered_through_the_plugin_hook() -> None:
    """Enabling ``leastconn`` registers only that selector, and it asks for feedback."""
    pm = lbx.get_plugin_manager(["leastconn"])
    registered: dict[str, Any] = {}
    pm.hook.register_selectors(register=registered.__setitem__)
    assert registered == {"leastconn": LeastConnections}
    assert balancer(A).tracks


@pytest.mark.parametrize("concurrency", [1, 20])
def test_weights_respected_within_one_percent(concurrency: int) -> None:
    """100k requests split by weight within 1%, sequential or 20 in flight ending at random.

    Least connections balances requests in flight, which are whole numbers: with few in flight
    per unit of weight a light backend gets more than its share (see the README).
    """
    weights = (1, 2, 3, 4)
    backends = [Backend("10.0.0.1", 80 + i, w) for i, w in enumerate(weights)]
    lb = balancer(*backends)
    rng = random.Random(5)
    in_flight: list[Backend] = []
    counts: Counter[Backend] = Counter()
    for _ in range(SELECTIONS):
        if len(in_flight) == concurrency:
            done = rng.randrange(concurrency)
            in_flight[done], in_flight[-1] = in_flight[-1], in_flight[done]
            selector(lb).on_finish(in_flight.pop(), 0.001, True)
        backend = start(lb)
        counts[backend] += 1
        in_flight.append(backend)
    for backend in backends:
        expected = SELECTIONS * backend.weight / sum(weights)
        assert counts[backend] == pytest.approx(expected, rel=0.01), counts


def test_new_requests_go_away_from_a_backend_holding_slow_ones() -> None:
    """While A holds 3 requests, the next ones go to B and C until they hold as many."""
    lb = balancer(A, B, C)
    lbs = selector(lb)
    for _ in range(3):
        lbs.on_start(A)
    picks = [start(lb) for _ in range(6)]
    assert Counter(picks) == {B: 3, C: 3}
    assert [lbs.outstanding_of(b) for b in (A, B, C)] == [3, 3, 3]
    lbs.on_finish(A, 5.0, True)
    assert lb.select(b"") == A


def test_candidates_follow_increasing_load() -> None:
    """The fallback order after the least loaded backend is by increasing load."""
    lb = balancer(A, B, C)
    lbs = selector(lb)
    for backend, count in ((A, 0), (B, 2), (C, 1)):
        for _ in range(count):
            lbs.on_start(backend)
    assert list(lbs.iter(b"")) == [A, C, B]
    lb.backends.set_healthy(A, False)
    assert lb.select(b"") == C
    lb.backends.set_enabled(C, False)
    assert lb.select(b"") == B
    lb.backends.set_healthy(B, False)
    assert lb.select(b"") is None
    assert lb.select(b"", max_iterations=1) is None


def test_max_iterations_bounds_the_walk() -> None:
    """With the least loaded backend down, one candidate is not enough, two are."""
    lb = balancer(A, B)
    selector(lb).on_start(B)
    lb.backends.set_healthy(A, False)
    assert lb.select(b"", max_iterations=1) is None
    assert lb.select(b"", max_iterations=2) == B


def test_update_keeps_counts_of_requests_in_flight() -> None:
    """A rebuild keeps in-flight counts; attempts started before it finish on the new selector."""
    lb = balancer(A, B)
    old = selector(lb)
    old.on_start(A)
    old.on_start(A)
    old.on_start(B)
    lb.update([A, B, C])
    new = selector(lb)
    assert new is not old
    assert [new.outstanding_of(b) for b in (A, B, C)] == [2, 1, 0]
    assert start(lb) == C  # the newcomer is least loaded
    new.on_finish(A, 0.1, True)  # started before the update
    lb.update([B, C])
    assert [selector(lb).outstanding_of(b) for b in (A, B, C)] == [0, 1, 1]
    selector(lb).on_finish(A, 0.1, True)  # a removed backend's attempt ends: ignored
    selector(lb).on_finish(B, 0.1, True)
    selector(lb).on_finish(B, 0.1, True)  # never below zero
    assert [selector(lb).outstanding_of(b) for b in (B, C)] == [0, 1]


def test_heap_stays_bounded() -> None:
    """Stale heap entries are compacted away: the heap stays O(n) over many requests."""
    lb = balancer(A, B, C)
    lbs = selector(lb)
    for _ in range(10_000):
        backend = start(lb)
        lbs.on_finish(backend, 0.001, True)
    assert len(lbs._heap) <= 4 * 3 + 64 + 1
    assert Counter(start(lb) for _ in range(3)) == {A: 1, B: 1, C: 1}


def test_empty_weight_zero_and_options() -> None:
    """No backends selects None; weight 0 and any selection_options are refused."""
    assert balancer().select(b"") is None
    with pytest.raises(ValueError, match="weight of at least 1"):
        LeastConnections([Backend("10.0.0.1", 80, 0)], {})
    with pytest.raises(ValueError, match="leastconn takes no selection_options"):
        LeastConnections([A], {"x": 1})
