"""A malformed chunked request body is answered, not met with a silent close (issue 14, class 4).

When no response byte was sent yet lbx answers 400 with ``Connection: close``; the upstream
exchange the request started is aborted and its connection closed (never pooled, since the
upstream holds half a request); the request ends once, with one log line and one outcome, also
when no upstream could be reached.
"""

from __future__ import annotations

import pytest
from tests.http_helpers import Client, Upstream, exchange, lbx_in_front

HEAD = b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"

MALFORMED = [
    b"zz\r\nab\r\n0\r\n\r\n",  # not a hex size
    b"3\r\nabcX\r\n0\r\n\r\n",  # no CRLF after the data
    b"3\r\nabc\r0\r\n\r\n",  # bare CR after the data
    b"3\r\nabc\n0\r\n\r\n",  # bare LF after the data
    b"3 \r\nabc\r\n0\r\n\r\n",  # a space after the size
    b"-3\r\nabc\r\n0\r\n\r\n",  # a negative size
    b"fffffffffffffffffff\r\n",  # a size that overflows
    b"3;a=\x01\r\nabc\r\n0\r\n\r\n",  # a control byte in an extension
    b"3\r\nabc\r\n0\r\nX-T: \x00\r\n\r\n",  # NUL in a trailer
    b"3\r\nabc\r\n0\r\nBad Trailer\r\n\r\n",  # a trailer that is no field
    b"3\r\nabc\r\n0\r\n\r",  # the last CRLF cut at its CR, then a byte that is not LF
]


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    yield from lbx_in_front(tmp_path_factory)


@pytest.mark.parametrize("body", MALFORMED)
def test_malformed_chunks_are_400(proxy, upstream, body):
    data = HEAD + body + (b"X" if body.endswith(b"\r") else b"")
    response, closed = exchange(proxy.address, data)
    assert response.status == 400, response
    assert response.get("Connection") == b"close"
    assert closed
    # The head may have gone upstream; the request never completed there, and lbx closed that
    # upstream connection instead of pooling it.
    for conn in list(upstream.conns):
        assert all(not request.complete for request in conn.requests)
        if conn.requests:
            assert conn.closed_by_peer.wait(5)
    # The next request, on a new connection, is proxied on a new upstream connection.
    with Client(proxy.address) as client:
        client.send(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
        assert client.read_response().status == 200
    assert upstream.wait_requests(1)[-1].target == b"/next"
    (carrier,) = [c for c in upstream.conns if any(r.target == b"/next" for r in c.requests)]
    assert all(request.complete for request in carrier.requests)


def test_malformed_chunk_after_the_upstream_answered_cuts_the_connection(proxy, upstream):
    """Once the response started, the only honest signal left is the cut: the client never
    takes a short exchange for a complete one."""
    upstream.on_head = lambda conn, request: conn.send(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n"
    )
    upstream.handler = lambda conn, request: None
    with Client(proxy.address) as client:
        client.send(HEAD + b"3\r\nabc\r\n")
        response_head = b""
        while b"\r\n\r\n" not in response_head:
            response_head += client.sock.recv(65536)
        assert response_head.startswith(b"HTTP/1.1 200")
        client.send(b"zz\r\n")
        assert client.closed()


def test_one_outcome_when_no_upstream_is_reachable(lbx):
    """The upstream refuses connections: the request still ends once, as the 400 it got, in one
    log line (before: a silent close and a second outcome, a 502)."""
    dead = Upstream(accept=False)
    address = dead.address
    dead.close()  # nothing listens there now: connections are refused
    proc = lbx("--plugin", "roundrobin", "--listen", "127.0.0.1:0", "--upstream", address)
    response, closed = exchange(proc.address, HEAD + b"zz\r\n")
    assert response.status == 400 and closed
    proc.wait_for(r"Fail to proxy: .*status: 400")
    with Client(proc.address) as client:  # a request after it: its own 502, logged after
        client.send(b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n")
        assert client.read_response().status == 502
    proc.wait_for(r"Fail to proxy: .*status: 502.*GET /after")
    outcomes = [line for line in proc.lines if "Fail to proxy" in line and "retry: false" in line]
    assert len(outcomes) == 2, outcomes
    assert "status: 400" in outcomes[0] and "POST /c" in outcomes[0]
