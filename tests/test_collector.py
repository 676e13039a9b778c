"""The collector's youngest generation follows the open client connections (``lbx.collector``).

With a fixed threshold, thousands of requests in flight made the collector scan their live
objects over and over (9% of the CPU under 5,000 clients); the threshold now grows with the
connections, and comes back down when they close.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from lbx.collector import GC_GENERATION0_THRESHOLD, YOUNG_OBJECTS_PER_CONNECTION, YoungGeneration
from lbx.connections import Connections


class FakeConnection:
    """Only counted: ``Connections`` keeps it in a set."""


@pytest.fixture
def restored_threshold() -> Iterator[None]:
    saved = gc.get_threshold()
    try:
        yield
    finally:
        gc.set_threshold(*saved)


def young_threshold() -> int:
    return gc.get_threshold()[0]


def test_the_threshold_follows_the_open_connections(restored_threshold: None) -> None:
    generation1, generation2 = gc.get_threshold()[1:]
    connections = Connections()
    young = connections.young = YoungGeneration()
    opened = [FakeConnection() for _ in range(5000)]
    resizes = 0
    for conn in opened[:500]:
        connections.add(conn)  # type: ignore[arg-type]  # counted only
    assert young_threshold() == GC_GENERATION0_THRESHOLD  # a few hundred clients: the floor
    seen = young.threshold
    for conn in opened[500:]:
        connections.add(conn)  # type: ignore[arg-type]
        if young.threshold != seen:
            resizes += 1
            seen = young.threshold
        assert young_threshold() >= YOUNG_OBJECTS_PER_CONNECTION * len(connections.open)
    assert young_threshold() == young.threshold
    assert resizes <= 10  # grown in steps, not at each connection
    assert gc.get_threshold()[1:] == (generation1, generation2)  # the older ones as they were

    for conn in opened[1000:]:
        connections.remove(conn)  # type: ignore[arg-type]
    assert young_threshold() < YOUNG_OBJECTS_PER_CONNECTION * 5000
    assert young_threshold() >= YOUNG_OBJECTS_PER_CONNECTION * 1000
    for conn in opened[:1000]:
        connections.remove(conn)  # type: ignore[arg-type]
    assert young_threshold() == GC_GENERATION0_THRESHOLD


def test_connections_leave_the_collector_alone_unless_serving(restored_threshold: None) -> None:
    """In-process uses (tests, the testing helpers) do not retune the process's collector."""
    before = gc.get_threshold()
    connections = Connections()
    for conn in [FakeConnection() for _ in range(3000)]:
        connections.add(conn)  # type: ignore[arg-type]
    assert gc.get_threshold() == before
