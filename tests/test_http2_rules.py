"""HTTP/2 requests to an HTTP/1.1 upstream: RFC 9113 8.2-8.3 and lbx's request rules.

A real lbx (``h2c: true``) in front of a capture upstream that records the exact HTTP/1.1
request it receives; a raw HTTP/2 client (``tests/h2_helpers.py``).
"""

from __future__ import annotations

import socket
import time

import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from tests.h2_helpers import H2Client, frames_until_close, goaway_code, raw_connection
from tests.http_helpers import Client, lbx_in_front, respond_with, write_conf


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    yield from lbx_in_front(tmp_path_factory, h2c=True, max_body_size=1000)


def test_authority_becomes_host_and_the_request_is_canonical_http11(proxy, upstream):
    """``:authority`` is the upstream's Host; one canonical HTTP/1.1 request, no pseudo-fields."""
    with H2Client(proxy.address) as client:
        reply = client.get("/a?b=1", authority="example.test:8080", headers=[("x-one", "1")])
    assert (reply.status, reply.body) == (200, b"ok")
    (request,) = upstream.wait_requests(1)
    assert (request.method, request.target, request.version) == (b"GET", b"/a?b=1", "1.1")
    assert request.get("Host") == b"example.test:8080"
    assert request.get("x-one") == b"1"
    assert not [name for name in request.names() if name.startswith(b":")]
    assert request.get("Content-Length") is None and request.get("Transfer-Encoding") is None


def test_cookies_are_joined_for_http11(proxy, upstream):
    """RFC 9113 8.2.3: the cookie fields of an HTTP/2 request become one ``; ``-joined field."""
    with H2Client(proxy.address) as client:
        client.get("/", headers=[("cookie", "a=1"), ("cookie", "b=2")])
    (request,) = upstream.wait_requests(1)
    assert request.get_all("cookie") == [b"a=1; b=2"]


def test_te_trailers_is_accepted_and_not_forwarded_to_http11(proxy, upstream):
    with H2Client(proxy.address) as client:
        assert client.get("/", headers=[("te", "trailers")]).status == 200
    assert upstream.wait_requests(1)[0].get("TE") is None


def unchecked_client(address: str) -> tuple[H2Connection, object]:
    """An h2 client that sends header fields as given (no validation, no normalising)."""
    sock = raw_connection(address)
    conn = H2Connection(
        H2Configuration(
            client_side=True,
            header_encoding=None,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
    )
    conn.initiate_connection()
    conn.data_to_send()  # the preface went with raw_connection
    return conn, sock


def statuses_of_two_streams(conn: H2Connection, sock: socket.socket) -> dict[int, bytes]:
    """Send what ``conn`` queued, then read until two streams have their response status;
    the socket is closed after."""
    sock.sendall(conn.data_to_send())
    statuses: dict[int, bytes] = {}
    try:
        while len(statuses) < 2:
            chunk = sock.recv(65536)
            assert chunk, statuses
            for event in conn.receive_data(chunk):
                if type(event).__name__ == "ResponseReceived":
                    statuses[event.stream_id] = dict(event.headers)[b":status"]
            sock.sendall(conn.data_to_send())
    finally:
        sock.close()
    return statuses


@pytest.mark.parametrize(
    "field",
    [
        (b"connection", b"keep-alive"),
        (b"keep-alive", b"timeout=5"),
        (b"transfer-encoding", b"chunked"),
        (b"upgrade", b"websocket"),
        (b"te", b"gzip"),
        (b"X-Upper", b"1"),
        (b"host", b"other.test"),
    ],
    ids=lambda f: f[0].decode(),
)
def test_connection_specific_and_uppercase_fields_are_malformed(proxy, upstream, field):
    """RFC 9113 8.2.1-8.2.2 and 8.3.1: connection-specific fields, ``TE`` other than
    ``trailers``, upper-case names and a Host other than ``:authority`` make the request
    malformed: PROTOCOL_ERROR, nothing goes upstream."""
    conn, sock = unchecked_client(proxy.address)
    fields = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"x"), (b":path", b"/")]
    conn.send_headers(1, [*fields, field], end_stream=True)
    sock.sendall(conn.data_to_send())
    assert goaway_code(frames_until_close(sock)) == ErrorCodes.PROTOCOL_ERROR
    sock.close()
    assert upstream.requests == []


def test_request_body_with_and_without_content_length(proxy, upstream):
    """A body with ``content-length`` goes upstream with it; one without goes chunked."""
    with H2Client(proxy.address) as client:
        client.get("/", method="POST", body=b"hello", headers=[("content-length", "5")])
        client.get("/", method="POST", body=b"world")
    first, second = upstream.wait_requests(2)
    assert (first.get("Content-Length"), first.body) == (b"5", b"hello")
    assert (second.get("Transfer-Encoding"), second.body) == (b"chunked", b"world")


def test_a_body_over_the_limit_gets_413(proxy, upstream):
    with H2Client(proxy.address) as client:
        reply = client.get("/", method="POST", body=b"x" * 5000)
        assert reply.status == 413
        assert client.get("/").status == 200  # the connection goes on


@pytest.mark.parametrize(
    ("method", "path"),
    [
        (b"GET", b"/x HTTP/1.1"),
        (b"GET", b"/a b"),
        (b"GET", b"/\x01"),
        (b"GET", b"http://evil/x"),
        (b"GE T", b"/"),
        (b"get", b"/"),
    ],
)
def test_a_request_line_that_would_bend_http11_is_refused_on_its_stream(
    proxy, upstream, method, path
):
    """``:method`` and ``:path`` become the HTTP/1.1 request line: a space, a control byte, a
    lower-case method or an absolute-form path is a 400 on the stream, nothing goes upstream,
    and the connection serves the next stream."""
    conn, sock = unchecked_client(proxy.address)
    head = [(b":method", method), (b":scheme", b"http"), (b":authority", b"x"), (b":path", path)]
    conn.send_headers(1, head, end_stream=True)
    sound = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"x")]
    conn.send_headers(3, [*sound, (b":path", b"/next")], end_stream=True)
    assert statuses_of_two_streams(conn, sock) == {1: b"400", 3: b"200"}
    (request,) = upstream.wait_requests(1)
    assert request.target == b"/next"


H2_REQUEST = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"x"), (b":path", b"/")]


def _with(replaced: dict[bytes, bytes], *extra: tuple[bytes, bytes]) -> list[tuple[bytes, bytes]]:
    return [(name, replaced.get(name, value)) for name, value in H2_REQUEST] + list(extra)


@pytest.mark.parametrize(
    ("head", "end_stream"),
    [
        # Names HTTP/1.1 cannot carry: a lenient backend may cut them to Content-Length or Host.
        (
            _with({b":method": b"POST"}, (b"content-length;x", b"50"), (b"content-length", b"5")),
            False,
        ),
        (_with({}, (b"transfer-encoding,x", b"chunked")), True),
        (_with({}, (b"host/x", b"evil")), True),
        (_with({}, (b"x@y", b"1")), True),
        # Control bytes in a value, which llhttp refuses from an HTTP/1.1 client.
        (_with({}, (b"x", b"a\x0bb\x01c\x7fd")), True),
        # An authority, or a path, nginx refuses.
        (_with({b":authority": b".."}), True),
        (_with({b":authority": b":80"}), True),
        (_with({b":path": b"/%2e%2e/admin"}), True),
        # RFC 9113 8.1.1: content-length 5, and the stream ends with its HEADERS.
        (_with({b":method": b"POST"}, (b"content-length", b"5")), True),
    ],
)
def test_a_head_http11_cannot_carry_is_refused_on_its_stream(proxy, upstream, head, end_stream):
    """What the HTTP/1.1 side refuses from a client, refused on an HTTP/2 stream too (400):
    nothing goes upstream, and the connection serves the next stream."""
    conn, sock = unchecked_client(proxy.address)
    conn.send_headers(1, head, end_stream=end_stream)
    if not end_stream:
        conn.send_data(1, b"hello", end_stream=True)
    conn.send_headers(3, _with({b":path": b"/next"}), end_stream=True)
    assert statuses_of_two_streams(conn, sock) == {1: b"400", 3: b"200"}
    (request,) = upstream.wait_requests(1)
    assert request.target == b"/next"


@pytest.mark.parametrize("data", [b"", b"abc", b"abcdef"])
def test_a_body_that_trailers_end_short_of_its_content_length_is_refused(proxy, upstream, data):
    """h2 checks ``content-length`` against DATA that ends a stream, not against trailers that
    do: a POST of ``content-length: 5`` ended by trailers after 0 or 3 bytes is a 400, and its
    upstream connection (owed the rest) is closed, never handed to the next request; the
    next request, on another client connection too, goes upstream whole."""
    conn, sock = unchecked_client(proxy.address)
    head = _with({b":method": b"POST", b":path": b"/short"}, (b"content-length", b"5"))
    conn.send_headers(1, head)
    if data:
        conn.send_data(1, data)
    conn.send_headers(1, [(b"x-t", b"1")], end_stream=True)
    sock.sendall(conn.data_to_send())
    status = None
    try:
        while status is None:
            chunk = sock.recv(65536)
            if not chunk:
                break
            for event in conn.receive_data(chunk):
                if type(event).__name__ == "ResponseReceived":
                    status = dict(event.headers)[b":status"]
                if type(event).__name__ == "ConnectionTerminated":
                    status = b"GOAWAY"
            sock.sendall(conn.data_to_send())
    finally:
        sock.close()
    assert status in (b"400", b"GOAWAY")  # (h2 itself refuses DATA past the length)
    with H2Client(proxy.address) as client:
        reply = client.get("/second")
        assert reply.status == 200
    targets = [(r.target, r.complete) for r in upstream.wait_requests(1 if len(data) > 5 else 2)]
    assert targets[-1] == (b"/second", True)
    for conn in list(upstream.conns):
        if any(r.target == b"/short" for r in conn.requests):  # its head went upstream at once
            assert len(conn.requests) == 1 and not conn.requests[0].complete
            assert conn.closed_by_peer.wait(5)  # closed by lbx, never pooled


@pytest.mark.parametrize(
    "head",
    [
        [(b":method", b"CONNECT"), (b":authority", b"x:443")],
        _with({b":method": b"TRACE"}, (b"cookie", b"secret=1")),
    ],
)
def test_connect_and_trace_are_405_on_their_stream(proxy, upstream, head):
    """As on HTTP/1.1 (nginx too); the connection's next stream is served."""
    conn, sock = unchecked_client(proxy.address)
    conn.send_headers(1, head, end_stream=True)
    conn.send_headers(3, H2_REQUEST, end_stream=True)
    assert statuses_of_two_streams(conn, sock) == {1: b"405", 3: b"200"}
    assert [request.method for request in upstream.wait_requests(1)] == [b"GET"]


def test_trace_is_405_over_http11_too(proxy, upstream):
    with Client(proxy.address) as client:
        client.send(b"TRACE / HTTP/1.1\r\nHost: x\r\nCookie: secret=1\r\n\r\n")
        assert client.read_response().status == 405
    assert upstream.raw == b""


def test_response_trailers_of_a_chunked_upstream_reach_the_client(proxy, upstream):
    """Trailer fields after an HTTP/1.1 chunked body go to the HTTP/2 client as trailers."""
    upstream.handler = respond_with(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\ngrpc-status: 0\r\nx-checksum: abc\r\n\r\n"
    )
    with H2Client(proxy.address) as client:
        reply = client.get("/")
    assert reply.body == b"hello"
    assert reply.trailers == [(b"grpc-status", b"0"), (b"x-checksum", b"abc")]


def test_response_fields_are_lowercase_without_connection_specific_ones(proxy, upstream):
    upstream.handler = respond_with(
        b"HTTP/1.1 200 OK\r\nX-Mixed-Case: v\r\nConnection: keep-alive\r\nKeep-Alive: 5\r\n"
        b"Content-Length: 2\r\n\r\nok"
    )
    with H2Client(proxy.address) as client:
        reply = client.get("/")
    names = [name for name, _ in reply.headers]
    assert b"x-mixed-case" in names
    assert not {b"connection", b"keep-alive", b"transfer-encoding"} & set(names)
    assert reply.get("content-length") == b"2"


def test_head_and_204_end_with_the_head(proxy, upstream):
    upstream.handler = respond_with(b"HTTP/1.1 204 No Content\r\n\r\n")
    with H2Client(proxy.address) as client:
        reply = client.get("/")
    assert (reply.status, reply.body) == (204, b"")


def test_an_unreachable_upstream_is_a_502_on_the_stream(lbx, tmp_path):
    """A dead backend: 502 as over HTTP/1.1, and the connection goes on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{probe.getsockname()[1]}"
    proc = lbx("-c", write_conf(tmp_path, [dead], h2c=True))
    with H2Client(proc.address) as client:
        assert client.get("/").status == 502
        assert client.get("/").status == 502


def test_an_idle_http2_connection_gets_goaway_and_is_closed(lbx, tmp_path):
    """``keepalive_timeout`` with no stream open: GOAWAY NO_ERROR "idle", the end of lbx's
    stream, then, once the linger is over, the close (what the client sends then is reset)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        unused = f"127.0.0.1:{probe.getsockname()[1]}"
    proc = lbx("-c", write_conf(tmp_path, [unused], h2c=True, keepalive_timeout=1))
    with raw_connection(proc.address) as sock:
        frames = frames_until_close(sock)
        assert goaway_code(frames) == ErrorCodes.NO_ERROR
        assert frames[-1].additional_data == b"idle"
        while sock.recv(65536):  # until lbx's end of the stream
            pass
        deadline = time.monotonic() + 30
        with pytest.raises((ConnectionResetError, BrokenPipeError)):
            while time.monotonic() < deadline:  # lbx reads and drops this until it closes
                sock.sendall(b"\x00")
                time.sleep(0.05)
