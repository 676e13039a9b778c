"""A sample of the HTTP/1.1 conformance rules through a real lbx process and sockets: what the
in-process run (test_conformance.py) cannot show - the listener, the kernel's socket buffers,
lbx's close and linger - for one case of each kind.
"""

from __future__ import annotations

import pytest
from tests.http_helpers import Client, exchange, lbx_in_front


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    yield from lbx_in_front(tmp_path_factory)


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nBad Field\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n", 501),
        (b"GET / HTTP/2.0\r\nHost: x\r\n", 505),
        (b"GET / RTSP/1.0\r\nHost: x\r\n", 400),
    ],
)
def test_refused_and_closed(proxy, upstream, data, status):
    """lbx answers, closes (after draining what the client sends), and sends nothing upstream."""
    response, closed = exchange(proxy.address, data + b"\r\n0\r\n\r\n")
    assert response.status == status, response
    assert response.get("Connection") == b"close"
    assert closed
    assert upstream.requests == [] and upstream.raw == b""


def test_pipelined_requests_and_a_bad_one(proxy, upstream):
    """Pipelined requests are answered in order on the open connection; a bad one behind good
    ones is answered 400 after them, then the connection closes."""
    with Client(proxy.address) as client:
        client.send(
            b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST /2 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
            b"HEAD /3 HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /4 HTTP/1.1\r\n\r\n"
        )
        statuses = [client.read_response(m).status for m in (b"GET", b"POST", b"HEAD", b"GET")]
        assert statuses == [200, 200, 200, 400]
        assert client.closed()
    requests = upstream.wait_requests(3)
    assert [(r.method, r.target, r.body) for r in requests] == [
        (b"GET", b"/1", b""),
        (b"POST", b"/2", b"abc"),
        (b"HEAD", b"/3", b""),
    ]


def test_expect_100_continue_never_deadlocks(proxy, upstream):
    """The client waits for the 100 before sending its body: lbx sends it itself."""
    with Client(proxy.address) as client:
        client.send(
            b"POST /e HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"
        )
        client.sock.settimeout(5)
        interim = b""
        while b"\r\n\r\n" not in interim:
            interim += client.sock.recv(1)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        client.send(b"hello")
        response = client.read_response()
        assert response.status == 200 and response.informational == []
    (request,) = upstream.wait_requests(1)
    assert request.body == b"hello" and request.get("Expect") is None


def test_keepalive_and_forwarding(proxy, upstream):
    """A valid request leaves the connection open, one upstream connection serves them all, and
    the forwarding fields carry the real client address."""
    with Client(proxy.address) as client:
        for index in range(5):
            client.send(b"GET /%d HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n" % index)
            assert client.read_response().status == 200
        assert not client.closed(0.2)
    assert len({id(c) for c in upstream.conns if c.requests}) == 1
    request = upstream.requests[0]
    assert request.get_all("X-Forwarded-For") == [b"1.2.3.4, 127.0.0.1"]
