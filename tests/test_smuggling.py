"""Requests that fool proxies, issue 14 classes 1-4 (cases in tests/smuggling_cases.py): h2c
inside Upgrade lists, look-alikes of framing, routing and forwarding fields, request lines naming
another protocol, malformed chunked bodies. They run in this process over in-memory transports
(``lbx.inprocess``), every case in milliseconds; test_nginx_differential.py sends the same
classes through a real lbx process and sockets, next to nginx.

Each test states the status lbx answers, the exact bytes the upstream received (or that it
received nothing), whether lbx closed the client connection, and that the next request on a new
connection works.
"""

from __future__ import annotations

import re

import pytest
from tests.differential import capture_answer
from tests.smuggling_cases import (
    CASES,
    CHUNKED_HEAD,
    CHUNKED_LATE,
    CHUNKED_UPSTREAM,
    FORWARDING,
    Case,
)

from lbx.inprocess import InProcessProxy, MemoryClient, MemoryUpstream, Response


@pytest.fixture(scope="module")
def shared():
    proxy = InProcessProxy()
    yield proxy.upstream, proxy
    assert proxy.errors == []
    proxy.close()


def next_request_works(proxy: InProcessProxy, upstream: MemoryUpstream) -> None:
    """A new connection still gets its request through (and nothing else arrives upstream)."""
    upstream.reset()
    upstream.handler = capture_answer
    response, _ = proxy.exchange(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
    assert response.status == 200
    (request,) = upstream.wait_requests(1)
    assert (request.method, request.target, request.complete) == (b"GET", b"/next", True)
    assert upstream.raw == b"GET /next HTTP/1.1\r\nHost: x\r\n" + FORWARDING + b"\r\n"


def read_head(client: MemoryClient) -> bytes:
    """The first response head, 1xx included (b"" if lbx wrote none)."""
    return client.received.partition(b"\r\n\r\n")[0]


def read_answer(client: MemoryClient) -> Response | None:
    try:
        return client.read_response()
    except ConnectionError:
        return None


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_refused_or_forwarded_canonically(proxy, upstream: MemoryUpstream, case: Case) -> None:
    upstream.handler = capture_answer  # closes after an Upgrade request (httptools stops there)
    with proxy.client() as client:
        client.send(case.data)
        response = read_answer(client)
        assert response is not None, f"lbx closed without an answer; upstream got {upstream.raw!r}"
        closed = client.closed(0.3)
    if response.status in case.statuses:
        assert response.get("Server") == b"lbx", response  # lbx's own answer
        assert response.get("Connection") == b"close", response
        assert closed
        assert upstream.raw == b"", upstream.raw
    else:
        assert case.forwarded is not None, (response.status, upstream.raw)
        assert response.status == 200, response
        assert upstream.wait(lambda: any(r.complete for r in upstream.requests))
        assert case.forwarded.fullmatch(upstream.raw), f"upstream got {upstream.raw!r}"
        assert not closed
    next_request_works(proxy, upstream)


@pytest.mark.parametrize(("name", "rest"), CHUNKED_LATE, ids=[n for n, _ in CHUNKED_LATE])
def test_malformed_chunk_after_the_request_went_upstream(proxy, upstream, name, rest) -> None:
    """The head and a first chunk went upstream; then the body breaks: 400 with
    ``Connection: close`` (no response byte was sent yet), the upstream connection is closed
    (never reused), and it received the head, the good chunk and at most the data the bad chunk
    carried before its framing broke (lbx streams bodies: it cannot know a chunk's CRLF is
    missing before its data went on), never the last chunk: the request never completes there."""
    with proxy.client() as client:
        client.send(CHUNKED_HEAD + b"5\r\nhello\r\n")
        partial = CHUNKED_UPSTREAM + b"5\r\nhello\r\n"
        assert upstream.wait(lambda: upstream.raw == partial), upstream.raw
        (conn,) = [c for c in upstream.conns if c.raw]
        client.send(rest)
        response = read_answer(client)
        assert response is not None, "lbx closed without an answer"
        assert (response.status, response.get("Connection")) == (400, b"close"), response
        assert client.closed(1.0)
    assert conn.closed_by_peer.wait(2), "the upstream connection is still open"
    received = bytes(conn.raw)
    assert received.startswith(partial), received
    assert b"0\r\n\r\n" not in received[len(partial) :], received
    assert not any(r.complete for r in upstream.requests)
    next_request_works(proxy, upstream)
    assert conn not in upstream.conns


SWITCH = "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: {}\r\n\r\n"


@pytest.mark.parametrize(
    ("offered", "answered"),
    [
        ("websocket, h2c", "h2c"),
        ("h2c, websocket", "h2c"),
        ("WebSocket, H2C", "H2C"),
        ("websocket", "h2c"),
        ("websocket", "foo"),
        ("websocket", "websocket, h2c"),
    ],
)
def test_101_to_a_protocol_not_offered_and_allowed_is_502(proxy, upstream, offered, answered):
    """An upstream that switches to ``h2c`` (or to a protocol the client never offered): no
    tunnel. lbx answers 502 and closes that upstream connection (or refused the request)."""

    def switch(conn, request):
        conn.send(SWITCH.format(answered).encode())

    upstream.handler = switch
    request = f"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: {offered}\r\nConnection: Upgrade\r\n\r\n"
    with proxy.client() as client:
        client.send(request.encode())
        head = read_head(client)
        assert head, "lbx closed without an answer"
        status = int(head.split(b" ", 2)[1])
        assert status in (400, 502), head  # never the 101: no tunnel
        if status == 502:
            (conn,) = [c for c in upstream.conns if c.raw]
            assert conn.closed_by_peer.wait(2), "the upstream connection is still open"
            sent = bytes(conn.raw)
            upgrade = re.search(rb"\r\nUpgrade: ([^\r]*)\r\n", sent)
            assert upgrade is None or b"h2c" not in upgrade.group(1).lower(), sent
        else:
            assert upstream.raw == b""
    next_request_works(proxy, upstream)
