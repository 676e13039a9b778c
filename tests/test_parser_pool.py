"""Client connections borrow their request parser (``lbx.h1parse``): an idle connection holds
none, and a parser goes back to the pool only in its start state, so the next connection to take
it parses from scratch. In this process, over in-memory transports (``lbx.inprocess``)."""

from __future__ import annotations

import gc
import socket

import pytest

from lbx.h1parse import PARSERS_KEPT, Relay
from lbx.inprocess import InProcessProxy

GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.fixture
def proxy():
    proxy = InProcessProxy(max_body_size=100)
    yield proxy
    assert proxy.errors == []
    proxy.close()


def idle_parsers(proxy: InProcessProxy) -> int:
    return len(proxy.service.connections.parsers)


def test_a_connection_holds_its_parser_only_while_it_reads_a_request(proxy):
    head = b"GET /a HTTP/1.1\r\nHost: x\r\n"
    with proxy.client() as first, proxy.client() as second:
        first.send(head)  # half a head: the parser is this connection's
        assert first.protocol._parser is not None
        assert idle_parsers(proxy) == 0
        first.send(b"\r\n")
        assert first.read_response().status == 200
        assert first.protocol._parser is None
        assert idle_parsers(proxy) == 1
        second.send(GET)  # the same parser, from its start state
        assert second.read_response().status == 200
        assert idle_parsers(proxy) == 1
        first.send(GET)
        assert first.read_response().status == 200
    assert [r.target for r in proxy.upstream.requests] == [b"/a", b"/", b"/"]


def test_a_read_that_ends_in_a_body_keeps_the_parser(proxy):
    with proxy.client() as client:
        client.send(b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhello")
        assert client.protocol._parser is not None
        assert idle_parsers(proxy) == 0
        client.send(b"world")
        assert client.read_response().status == 200
        assert idle_parsers(proxy) == 1
    assert proxy.upstream.requests[-1].body == b"helloworld"


def test_pipelined_requests_then_half_a_head_keep_the_parser(proxy):
    with proxy.client() as client:
        client.send(GET + GET + b"GET /third HTTP/1.1\r\n")
        assert client.read_response().status == 200
        assert client.read_response().status == 200
        assert client.protocol._parser is not None
        client.send(b"Host: x\r\n\r\n")
        assert client.read_response().status == 200
        assert idle_parsers(proxy) == 1


# A parser that is not in its start state after the read, or whose connection llhttp ends.
NOT_AT_A_START = {
    "length over the limit": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\nxx",
    "chunks over the limit": b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    + b"70\r\n"
    + b"x" * 112,
    "malformed chunk": b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    "bad request line": b"GET / HTTP/1.1 x\r\nHost: x\r\n\r\n",
    "Connection: close": b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    "HTTP/1.0 without keep-alive": b"GET / HTTP/1.0\r\nHost: x\r\n\r\n",
    "upgrade": b"GET / HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
    "half a head, then the client goes": b"GET / HTTP/1.1\r\nHost:",
    "Connection: close in trailers": b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
    + b"\r\n1\r\na\r\n0\r\nConnection: close\r\n\r\n",
    "a request, then bytes that are none": GET + b"\x00\r\n\r\n",
}


@pytest.mark.parametrize("data", NOT_AT_A_START.values(), ids=NOT_AT_A_START.keys())
def test_a_parser_goes_back_only_in_its_start_state(proxy, data):
    """Whatever the first connection left its parser in, the next connection's request is
    parsed from its first byte (a parser given back in the middle of a body took the next
    client's request line for body bytes, or refused it)."""
    with proxy.client() as client:
        client.send(data)
        proxy.settle()
    assert idle_parsers(proxy) == 0
    with proxy.client() as client:
        client.send(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
        assert client.read_response().status == 200
    assert proxy.upstream.requests[-1].target == b"/next"
    assert idle_parsers(proxy) == 1


def test_the_pool_keeps_a_bounded_number(proxy):
    """A burst of clients in the middle of their heads takes a parser each; once they are
    answered the pool keeps ``PARSERS_KEPT`` of them, and frees the rest."""
    clients = [proxy.client() for _ in range(PARSERS_KEPT + 10)]
    for client in clients:
        client.send(b"GET / HTTP/1.1\r\n")
    assert idle_parsers(proxy) == 0
    for client in clients:
        client.send(b"Host: x\r\n\r\n")
        assert client.read_response().status == 200
    assert idle_parsers(proxy) == PARSERS_KEPT
    for client in clients:
        client.close()


def test_an_http_1_0_keep_alive_request_gives_its_parser_back(proxy):
    with proxy.client() as client:
        client.send(b"GET / HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n")
        assert client.read_response().status == 200
        assert not client.closed()
        assert idle_parsers(proxy) == 1


def test_no_relay_keeps_a_closed_connection(proxy):
    """A parser given back, or discarded with its connection, leaves no reference to the
    connection in its relay (reference counting frees the connection, not the collector)."""
    for data in (GET, b"GET / HTTP/1.1\r\nHost: x\r\n"):  # answered; half a head
        client = proxy.client()
        client.send(data)
        proxy.settle()
        client.close()
        relays = [r for r in gc.get_referrers(client.protocol) if isinstance(r, Relay)]
        assert relays == []
    assert idle_parsers(proxy) == 0  # the second took the first's parser; its close dropped it


def test_no_client_can_close_the_parsers_of_a_real_lbx(lbx, backends):
    """A real lbx: more clients than the pool keeps each end a chunked upload with a
    ``Connection: close`` trailer (llhttp closes its parser then), and each spelling of it;
    another client's request after them is still answered."""
    upstream = backends.start("a").address
    proc = lbx("--plugin", "roundrobin", "--listen", "127.0.0.1:0", "--upstream", upstream)
    host, port = proc.address.rsplit(":", 1)
    trailers = [b"Connection: close", b"connection: CLOSE", b"Proxy-Connection: close"]
    for index in range(PARSERS_KEPT + 6):
        upload = (
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n"
            + trailers[index % len(trailers)]
            + b"\r\n\r\n"
        )
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(upload)
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(GET)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
