"""``lbx.inprocess``'s in-memory upstream around an Upgrade request: after a ``101`` it carries
raw bytes both ways; answered otherwise, it goes on reading HTTP/1.1 requests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lbx.inprocess import InProcessProxy, MemoryUpstreamConnection, UpstreamRequest

UPGRADE = b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
SWITCH = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"


@pytest.fixture
def proxy() -> Iterator[InProcessProxy]:
    proxy = InProcessProxy()
    yield proxy
    assert proxy.errors == []
    proxy.close()


@pytest.mark.parametrize("cut", [len(SWITCH), 5, 10, 11, 30])
def test_after_a_101_the_upstream_carries_raw_bytes_both_ways(
    proxy: InProcessProxy, cut: int
) -> None:
    """Also when the 101 comes in two pieces (cut in its status line or after it)."""
    upstreams: list[MemoryUpstreamConnection] = []

    def switch(conn: MemoryUpstreamConnection, request: UpstreamRequest) -> None:
        upstreams.append(conn)
        conn.send(SWITCH[:cut])
        if cut < len(SWITCH):
            conn.send(SWITCH[cut:])

    proxy.upstream.handler = switch
    with proxy.client() as client:
        client.send(UPGRADE)
        assert client.received.startswith(b"HTTP/1.1 101 ")
        upstream = upstreams[0]
        upstream.send(b"from the server")  # not a status line: still the tunnel
        proxy.settle()
        client.send(b"GET /inside-the-tunnel HTTP/1.1\r\nHost: x\r\n\r\n\x00\x01")
        proxy.settle()
        assert client.received.endswith(b"from the server")
    assert [request.target for request in upstream.requests] == [b"/ws"]
    assert upstream.error is None
    assert bytes(upstream.raw).endswith(
        b"GET /inside-the-tunnel HTTP/1.1\r\nHost: x\r\n\r\n\x00\x01"
    )


def test_an_upgrade_answered_without_a_switch_leaves_http_going_on(proxy: InProcessProxy) -> None:

    def early_hints_then_ok(conn: MemoryUpstreamConnection, request: UpstreamRequest) -> None:
        if request.target == b"/ws":  # an interim answer, then the final one cut after "1"
            conn.send(b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\nHTTP/1.1 2")
            conn.send(b"00 OK\r\nContent-Length: 2\r\n\r\nok")
            return
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    proxy.upstream.handler = early_hints_then_ok
    with proxy.client() as client:
        client.send(UPGRADE)
        assert client.read_response().status == 200
        client.send(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
        assert client.read_response().status == 200
    assert [request.target for request in proxy.upstream.requests] == [b"/ws", b"/next"]


def test_a_head_that_comes_as_its_read_timeout_fires_is_not_the_sessions_response(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The response head's read timeout and the head itself in the same loop iteration: the
    client gets the 504, and the phases after it (logging, a selector's feedback) do not see
    the 200 that lbx never relayed as the session's upstream response."""
    plugin = Path(__file__).parent / "plugins" / "see_upstream_response.py"
    proxy = InProcessProxy(plugins=("roundrobin", str(plugin)), read_timeout=5)
    held: list[MemoryUpstreamConnection] = []
    proxy.upstream.handler = lambda conn, request: held.append(conn)
    with proxy.client() as client:
        client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        upstream = held[0]
        exchange = upstream.protocol.exchange  # type: ignore[attr-defined]

        def head_and_timeout() -> None:
            upstream.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")  # read first ...
            exchange.deadline_passed()  # ... then the task wakes to the timeout

        proxy.call(head_and_timeout)
        assert client.read_response().status == 504
    assert "logging sees upstream response None, error upstream ReadTimedout" in caplog.text
    assert proxy.errors == []
    proxy.close()
