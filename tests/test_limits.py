"""Client-side timeouts, raw sockets end to end (issue 6; docs/http.md): what needs time to
pass, through a real lbx process. The size and count limits run in this process, over in-memory
transports (test_limits_sizes.py).

One lbx with small limits serves the module; each test states the status, what the capture
upstream received and whether lbx closed the connection.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest
from tests.http_helpers import Client, Upstream, lbx_in_front, ok

LIMITS = {
    "max_request_line": 100,
    "max_header_size": 500,
    "max_headers": 10,
    "max_body_size": 1000,
    "header_timeout": 1,
    "body_timeout": 1,
    "keepalive_timeout": 1.5,
    "keepalive_requests": 3,
}


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    yield from lbx_in_front(tmp_path_factory, **LIMITS)


def test_header_timeout_is_408(proxy, upstream):
    """A head that does not complete within header_timeout: 408 and close (slowloris)."""
    with Client(proxy.address) as client:
        started = time.monotonic()
        client.send(b"GET / HTTP/1.1\r\nHost: x\r\n")
        for _ in range(10):
            try:
                client.send(b"X: y\r\n")
            except OSError:
                break
            time.sleep(0.2)
        response = client.read_response()
        elapsed = time.monotonic() - started
        assert response.status == 408
        assert client.closed()
    assert 0.9 < elapsed < 2.5, elapsed
    assert upstream.raw == b""


def test_body_timeout_is_408_and_upstream_is_closed(proxy, upstream):
    with Client(proxy.address) as client:
        client.send(b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
        started = time.monotonic()
        response = client.read_response()
        assert response.status == 408
        assert client.closed()
        assert 0.9 < time.monotonic() - started < 3
    assert upstream.wait(lambda: all(c.closed_by_peer.is_set() for c in upstream.conns if c.raw))
    assert all(not r.complete for r in upstream.requests)


def test_slow_but_moving_body_is_not_cut(proxy, upstream):
    """body_timeout is about inactivity: a body that keeps arriving is read to the end."""
    with Client(proxy.address) as client:
        client.send(b"POST /drip HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n\r\n")
        for _ in range(8):
            time.sleep(0.4)
            client.send(b"d")
        assert client.read_response().status == 200
    assert upstream.wait_requests(1)[0].body == b"d" * 8


def test_idle_keepalive_timeout_closes(proxy, upstream):
    with Client(proxy.address) as client:
        client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert client.read_response().status == 200
        started = time.monotonic()
        assert client.closed(5)
        assert 1.2 < time.monotonic() - started < 2.5


def test_a_request_in_flight_when_the_idle_deadline_passes_is_answered(proxy, upstream):
    """The keep-alive deadline armed after a response stays when the next request comes (it
    passes over a busy connection): that request is answered, and the connection then stays
    open for keepalive_timeout after the answer (a third request would get keepalive_requests'
    close)."""
    answer = threading.Event()

    def when_told(conn, request):
        answer.wait(30)
        ok(conn, request)

    get = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    with Client(proxy.address) as client:
        client.send(get)
        assert client.read_response().status == 200
        upstream.handler = when_told
        try:
            client.send(get)
            time.sleep(LIMITS["keepalive_timeout"] + 1)  # the idle deadline passes meanwhile
        finally:
            answer.set()
            upstream.handler = ok
        response = client.read_response()
        started = time.monotonic()
        assert response.status == 200
        assert response.get("Connection") != b"close"
        assert client.closed(5)
        assert 1.2 < time.monotonic() - started < 2.5


def test_shared_upstream_starts_idle():
    """The ``upstream`` fixture waits for an upload still arriving from the test before (here a
    raw client cut short mid-body) before forgetting what came: nothing of it shows up in the
    next test's ``raw``. (Resetting at once made test_header_timeout_is_408 fail once, on the
    bytes of test_chunked_body_over_limit_is_413_and_upstream_connection_closed.)"""
    server = Upstream()
    try:
        with socket.create_connection(server.address.rsplit(":", 1), timeout=10) as client:
            client.sendall(
                b"POST /big HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"c8\r\n" + b"x" * 200 + b"\r\n"
            )
            settled = threading.Thread(target=server.settle)
            settled.start()
            client.sendall(b"c8\r\n" + b"y" * 200 + b"\r\n")  # the rest of the cut upload
        settled.join(30)
        assert not settled.is_alive()
        assert server.raw == b""
        assert server.conns == []
    finally:
        server.close()
