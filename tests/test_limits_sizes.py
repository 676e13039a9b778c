"""Size and count limits (issue 6; docs/http.md), in this process over in-memory transports
(``lbx.inprocess``): each test states the status, what the upstream received and whether lbx
closed the connection. The limits that need time to pass (timeouts) are in test_limits.py,
through a real lbx process.
"""

from __future__ import annotations

import pytest

from lbx.inprocess import InProcessProxy

LIMITS = {
    "max_request_line": 100,
    "max_header_size": 500,
    "max_headers": 10,
    "max_body_size": 1000,
    "keepalive_requests": 3,
}


@pytest.fixture(scope="module")
def shared():
    proxy = InProcessProxy(**LIMITS)
    yield proxy.upstream, proxy
    assert proxy.errors == []
    proxy.close()


def rejected(proxy, upstream, data: bytes, status: int, splits: list[int] | None = None) -> None:
    with proxy.client() as client:
        client.send(data, splits or [])
        response = client.read_response()
        assert response.status == status, response
        assert response.get("Connection") == b"close"
        assert client.closed()
    assert upstream.raw == b""


def test_request_line_limit_is_414(proxy, upstream):
    rejected(proxy, upstream, b"GET /" + b"a" * 100 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414)
    ok, _ = proxy.exchange(b"GET /" + b"a" * 90 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert ok.status == 200


def test_request_line_limit_when_dripped(proxy, upstream):
    """A target arriving a few bytes at a time is counted too."""
    rejected(proxy, upstream, b"GET /" + b"a" * 120, 414, list(range(5, 125, 10)))


def test_header_block_size_is_431(proxy, upstream):
    head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 600 + b"\r\n\r\n"
    rejected(proxy, upstream, head, 431)


def test_header_count_is_431(proxy, upstream):
    fields = b"".join(b"X-%d: v\r\n" % i for i in range(11))
    rejected(proxy, upstream, b"GET / HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n", 431)


def test_header_line_dripped_without_end_is_431(proxy, upstream):
    """httptools buffers a header line until it ends: lbx bounds the head by bytes received."""
    head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: " + b"v" * 4000
    rejected(proxy, upstream, head, 431, list(range(31, len(head), 200)))


def test_body_over_limit_by_content_length_is_413_before_reading(proxy, upstream):
    """413 is answered from Content-Length alone: no 100 Continue, nothing sent upstream."""
    head = b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 1001\r\n\r\n"
    with proxy.client() as client:
        client.send(head)
        response = client.read_response()
        assert response.status == 413 and response.informational == []
        assert client.closed()
    assert upstream.raw == b""


def test_chunked_body_over_limit_is_413_and_upstream_connection_closed(proxy, upstream):
    chunks = b"".join(b"c8\r\n" + b"x" * 200 + b"\r\n" for _ in range(6))
    head = b"POST /big HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    with proxy.client() as client:
        client.send(head + chunks, [len(head) + 206 * n for n in range(6)])
        assert client.read_response().status == 413
        assert client.closed()
    # The partial request that went upstream is not completed: its connection is closed.
    assert all(conn.closed_by_peer.is_set() for conn in upstream.conns if conn.raw)
    assert upstream.raw and all(not r.complete for r in upstream.requests)


def test_keepalive_requests_limit(proxy, upstream):
    """The third request on a connection (keepalive_requests: 3) is answered with close."""
    with proxy.client() as client:
        for index in range(3):
            client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            response = client.read_response()
            assert response.status == 200
            assert (response.get("Connection") == b"close") == (index == 2)
        assert client.closed()


def test_max_connections():
    """Past max_connections, a new client gets 503 and is closed; the others are served."""
    proxy = InProcessProxy(max_connections=2)
    first, second = proxy.client(), proxy.client()
    response, closed = proxy.exchange(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert response.status == 503 and closed
    first.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert first.read_response().status == 200
    first.close()
    second.close()
    response, _ = proxy.exchange(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert response.status == 200
    proxy.close()


def test_partial_head_then_close_leaves_no_state(proxy, upstream):
    """Clients that vanish mid-head are forgotten at once (nothing upstream, lbx still serves)."""
    for _ in range(20):
        with proxy.client() as client:
            client.send(b"GET / HTTP/1.1\r\nHo")
    assert not proxy.service.connections.open
    response, _ = proxy.exchange(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert response.status == 200
    assert len(upstream.requests) == 1
