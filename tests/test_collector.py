"""The collector's youngest generation follows the open client connections (``lbx.collector``).

With a fixed threshold, thousands of requests in flight made the collector scan their live
objects over and over (9% of the CPU under 5,000 clients); the threshold now grows with the
connections, and comes back down when they close.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from hpack import Encoder
from hyperframe.frame import HeadersFrame, SettingsFrame

from lbx.collector import GC_GENERATION0_THRESHOLD, YOUNG_OBJECTS_PER_CONNECTION, YoungGeneration
from lbx.connections import Connections
from lbx.inprocess import InProcessProxy, MemoryUpstreamConnection


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


def test_http2_streams_count_like_connections(restored_threshold: None) -> None:
    """One HTTP/2 connection with a thousand requests running sizes the collector as a
    thousand connections would; it comes back to the floor when they end, and when the
    connection goes with its requests still running (their count is given back)."""
    streams = 1000
    proxy = InProcessProxy(h2c=True, h2_max_concurrent_streams=streams)
    connections = proxy.service.connections
    young = connections.young = YoungGeneration()
    held: list[MemoryUpstreamConnection] = []
    proxy.upstream.handler = lambda conn, request: held.append(conn)
    try:
        for ending in ("answered", "connection lost"):
            held.clear()
            client = proxy.client()
            encoder = Encoder()
            fields = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/")]
            fields.append((b":authority", b"x"))
            frames = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + SettingsFrame(0).serialize()
            flags = ["END_HEADERS", "END_STREAM"]
            for stream_id in range(1, 2 * streams, 2):
                frames += HeadersFrame(stream_id, encoder.encode(fields), flags=flags).serialize()
            client.send(frames)
            assert len(held) == streams, ending
            assert connections.streams == streams
            assert young_threshold() >= YOUNG_OBJECTS_PER_CONNECTION * (streams + 1)
            if ending == "answered":
                for conn in held:
                    conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                proxy.settle()
                assert connections.streams == 0
                assert young_threshold() == GC_GENERATION0_THRESHOLD
                assert client.received.count(b"ok") >= streams  # every DATA frame's "ok"
            client.close()
            assert connections.streams == 0, ending
            assert young_threshold() == GC_GENERATION0_THRESHOLD, ending
            assert young.threshold == GC_GENERATION0_THRESHOLD
        assert proxy.errors == []
    finally:
        proxy.close()
