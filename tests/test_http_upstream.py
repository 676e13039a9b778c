"""Upstream faults end to end (issue 6; docs/http.md): each fault ends in the right status, the
client connection is kept or closed as it must be, and upstream connections are pooled only
after a complete exchange."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from tests.http_helpers import Client, Upstream, exchange, lbx_in_front, respond_with, write_conf

from lbx.upstream import MAX_RESPONSE_HEAD_BYTES, MAX_RESPONSE_HEADERS

TIMEOUTS = {"connect_timeout": 0.5, "read_timeout": 1, "write_timeout": 1}
GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
POST = b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi"
OK_FIRST = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst"


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    yield from lbx_in_front(tmp_path_factory, **TIMEOUTS)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_refused_is_502(lbx, tmp_path):
    proc = lbx("-c", write_conf(tmp_path, [f"127.0.0.1:{free_port()}"]))
    response, closed = exchange(proc.address, GET)
    assert response.status == 502 and not closed


def test_connect_timeout_is_504(lbx, tmp_path):
    """An upstream whose accept queue is full drops the SYN: connect times out, 504."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers = []
    try:
        for _ in range(8):  # fill the accept queue; further connects hang
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(listener.getsockname())
            fillers.append(filler)
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        proc = lbx("-c", write_conf(tmp_path, [address], connect_timeout=0.5))
        started = time.monotonic()
        response, _ = exchange(proc.address, GET)
        assert response.status == 504
        assert time.monotonic() - started < 3
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


def test_read_timeout_is_504_and_not_retried(proxy, upstream):
    upstream.handler = lambda conn, request: None  # never answers
    started = time.monotonic()
    response, _ = exchange(proxy.address, POST)
    assert response.status == 504
    assert 0.9 < time.monotonic() - started < 3
    assert len(upstream.requests) == 1


@pytest.mark.parametrize(
    ("answer", "then"),
    [
        (b"", "close"),
        (b"", "reset"),
        (b"garbage\r\n\r\n", None),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n", None),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok", None),
        (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: upgrade\r\n\r\n", None),
        (b"HTTP/1.1 200 OK\r\nContent-Le", "close"),
        (b"HTTP/1.1 200 OK\r\nX-Endless: " + b"a" * (MAX_RESPONSE_HEAD_BYTES + 1), None),
        (b"HTTP/1.1 200 OK\r\n" + b"X-F: v\r\n" * (MAX_RESPONSE_HEADERS + 1) + b"\r\n", None),
        # A status line lbx would relay as "HTTP/1.1 0", and framing llhttp reads to the close
        # where lbx would announce chunks: a lone "chunked" is the only Transfer-Encoding.
        *(
            (b"HTTP/1.1 %s Odd\r\nContent-Length: 2\r\n\r\nok" % status, None)
            for status in (b"000", b"001", b"099", b"600", b"999")
        ),
        *(
            (b"HTTP/1.1 200 OK\r\n%s\r\n\r\n5\r\nhello\r\n0\r\n\r\n" % te, None)
            for te in (
                b"Transfer-Encoding: chunked, gzip",
                b"Transfer-Encoding: gzip, chunked",
                b"Transfer-Encoding: identity",
                b"Transfer-Encoding: xchunked",
                b"Transfer-Encoding: chunked,",
                b"Transfer-Encoding: chunked\t",
                b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
            )
        ),
    ],
)
def test_failure_before_the_head_is_502(proxy, upstream, answer, then):
    """Closed, reset, garbage or ambiguous framing before a complete head: 502, client kept."""
    upstream.handler = respond_with(answer, then)
    with Client(proxy.address) as client:
        client.send(POST)
        assert client.read_response().status == 502
        upstream.handler = respond_with(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        client.send(GET)
        assert client.read_response().status == 200  # the client connection is still good


def test_a_large_response_head_within_the_limits_is_relayed(proxy, upstream):
    """A head just under both limits, sent in pieces, passes whole (no false 502)."""
    fields = [b"X-F%d: %s" % (i, b"v" * 200) for i in range(MAX_RESPONSE_HEADERS - 1)]
    head = b"HTTP/1.1 200 OK\r\n" + b"\r\n".join(fields) + b"\r\nContent-Length: 2\r\n\r\n"
    assert len(head) < MAX_RESPONSE_HEAD_BYTES

    def in_pieces(conn, request):
        for start in range(0, len(head), 1000):
            conn.send(head[start : start + 1000])
        conn.send(b"ok")

    upstream.handler = in_pieces
    response, _ = exchange(proxy.address, GET)
    assert response.status == 200 and response.body == b"ok"
    assert len([name for name, _ in response.headers if name.startswith(b"X-F")]) == len(fields)


def test_an_endless_response_head_is_cut_at_the_limit(proxy, upstream):
    """An upstream that never ends its head gets a 502 as soon as the limit is passed, not
    after read_timeout, and the log says why."""
    mark = len(proxy.lines)
    endless = b"HTTP/1.1 200 OK\r\nX-Endless: " + b"a" * (MAX_RESPONSE_HEAD_BYTES + 1)
    upstream.handler = respond_with(endless)
    with Client(proxy.address) as client:
        started = time.monotonic()
        client.send(GET)
        assert client.read_response().status == 502
        assert time.monotonic() - started < TIMEOUTS["read_timeout"]
    proxy.wait_for(
        f"no end of the response head within {MAX_RESPONSE_HEAD_BYTES} bytes", start=mark
    )


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\n",
    ],
)
def test_truncation_after_the_head_aborts_the_client(proxy, upstream, answer):
    """A client must never take a short body for a complete one: lbx cuts the connection."""
    upstream.handler = respond_with(answer, "close")
    with Client(proxy.address) as client:
        client.send(GET)
        response = client.read_response()
        assert response.status == 200 and not response.complete
        assert client.closed()
    # ...and the broken upstream connection was not pooled: the next request opens a new one.
    upstream.reset()
    response, _ = exchange(proxy.address, GET)
    assert response.status == 200
    assert len([c for c in upstream.conns if c.requests]) == 1
    assert upstream.conns[-1].requests  # a new connection


@pytest.mark.parametrize(
    ("method", "answer"),
    [
        (b"GET", OK_FIRST + b"HTTP/1.1 200 OK\r\nX-Half: 1\r\n"),
        (b"GET", OK_FIRST + b"HTTP/1.1 200 OK\r\nContent-Length: 64\r\n\r\n"),
        (b"GET", OK_FIRST + b"H"),
        (b"GET", OK_FIRST + b"\r\n\r\nHTTP/1.1 200 OK\r\n"),
        (
            b"GET",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n0\r\n\r\n"
            b"HTTP/1.1 200 OK\r\n",
        ),
        (
            b"GET",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n0\r\n"
            b"X-Trailer: 1\r\n\r\nHTTP/1.1 200 OK\r\n",
        ),
        (b"HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst"),
        (b"HEAD", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    ],
)
def test_bytes_after_a_complete_response_are_not_handed_to_the_next_request(
    proxy, upstream, method, answer
):
    """What an upstream sends beyond a complete response (past its length, after its last
    chunk, after a HEAD's head) closes that connection, as nginx does ("upstream sent more
    data than specified"): pooled, it would be read as the next request's response. The
    response itself is relayed whole; the next request gets a new connection."""
    mark = len(proxy.lines)
    upstream.reset()
    upstream.handler = respond_with(answer)
    with Client(proxy.address) as client:
        client.send(method + b" /first HTTP/1.1\r\nHost: x\r\n\r\n")
        response = client.read_response(method)
        assert response.status == 200 and response.complete
        assert response.body == (b"first" if method == b"GET" else b"")
        upstream.handler = respond_with(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext")
        client.send(GET)
        response = client.read_response()
        assert (response.status, response.body) == (200, b"next")
    used = [len(conn.requests) for conn in upstream.conns if conn.requests]
    assert used == [1, 1]  # the first connection was not pooled
    proxy.wait_for("more bytes after the complete response; connection closed", start=mark)


def test_connection_cannot_take_a_responses_content_length_away(proxy, upstream):
    """``Connection: Content-Length`` drops the field as a hop-by-hop one would be, but the
    response would reach the client without any framing: it keeps its Content-Length."""
    upstream.handler = respond_with(
        b"HTTP/1.1 200 OK\r\nConnection: Content-Length, X-Gone\r\nX-Gone: 1\r\n"
        b"Content-Length: 5\r\n\r\nhello"
    )
    with Client(proxy.address) as client:
        for _ in range(2):
            client.send(GET)
            response = client.read_response()
            assert (response.status, response.body) == (200, b"hello")
            assert response.get("Content-Length") == b"5" and response.get("X-Gone") is None


def _trailers_then(trailers: list[bytes]):
    """A handler: a chunked body, then its trailers sent piece by piece (lbx may cut it)."""

    def handler(conn, request):
        conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n")
        try:
            for piece in trailers:
                conn.send(piece)
        except OSError:
            pass  # lbx closed the connection: what the test expects

    return handler


@pytest.mark.parametrize(
    ("trailers", "said"),
    [
        ([b"X-T: v\r\n"] * (MAX_RESPONSE_HEADERS * 2), "trailer fields"),
        ([b"X-T: " + b"v" * 1000 + b"\r\n"] * 80, "trailers longer than"),
        ([b"X-Endless: "] + [b"v" * 16384] * 64, "trailers longer than"),
    ],
)
def test_response_trailers_are_bounded_as_a_head_is(proxy, upstream, trailers, said):
    """Trailers after a chunked body, endless or too many, cut the response (and its upstream
    connection) at the head's limits instead of growing lbx's memory until the backend stops."""
    mark = len(proxy.lines)
    upstream.handler = _trailers_then(trailers)
    with Client(proxy.address) as client:
        client.send(GET)
        response = client.read_response()
        assert response.status == 200 and not response.complete
        assert client.closed()
    proxy.wait_for(said, start=mark)


def test_trailers_under_the_limits_pass_after_a_large_head(proxy, upstream):
    """The trailers' limits are their own (not what is left of the head's), and a long
    trailer line that arrives in pieces is counted once: a response just under both limits
    is relayed whole."""
    head_fields = b"".join(b"X-H%d: %s\r\n" % (i, b"h" * 200) for i in range(150))
    long_trailer = b"X-Long: " + b"t" * 40_000 + b"\r\n"
    pieces = [long_trailer[i : i + 4096] for i in range(0, len(long_trailer), 4096)]

    def handler(conn, request):
        conn.send(b"HTTP/1.1 200 OK\r\n" + head_fields + b"Transfer-Encoding: chunked\r\n\r\n")
        conn.send(b"5\r\nhello\r\n0\r\n")
        for piece in pieces:
            conn.send(piece)
            time.sleep(0.001)  # (separate reads are likelier; the test holds either way)
        conn.send(b"X-Short: 1\r\n\r\n")

    upstream.handler = handler
    with Client(proxy.address) as client:
        client.send(GET)
        response = client.read_response()
        assert (response.status, response.body, response.complete) == (200, b"hello", True)
        client.send(GET)  # the connection goes on
        assert client.read_response().status == 200


def test_informational_responses_are_relayed(proxy, upstream):
    upstream.handler = respond_with(
        b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    )
    with Client(proxy.address) as client:
        client.send(GET)
        response = client.read_response()
    assert response.informational == [103, 100]
    assert (response.status, response.body) == (200, b"ok")


@pytest.mark.parametrize(
    ("method", "answer", "cl"),
    [
        (b"GET", b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello", None),
        (b"GET", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n", b"10"),
        (b"HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", b"10"),
        (b"HEAD", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", None),
    ],
)
def test_head_204_304_carry_no_body(proxy, upstream, method, answer, cl):
    """No body after HEAD / 204 / 304 whatever the upstream says; framing stays right for the
    next response on the same client connection."""
    upstream.handler = respond_with(answer)
    with Client(proxy.address) as client:
        client.send(method + b" / HTTP/1.1\r\nHost: x\r\n\r\n")
        response = client.read_response(method)
        assert response.get("Content-Length") == cl
        assert response.get("Transfer-Encoding") is None
        upstream.handler = respond_with(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext")
        client.send(GET)
        response = client.read_response()
        assert (response.status, response.body) == (200, b"next")  # no stray body in between


def test_upstream_connection_reused_only_after_complete_exchange(proxy, upstream):
    """Complete exchanges share one pooled connection; Connection: close and an early answer
    (before the request body was sent) do not go back to the pool."""
    for _ in range(3):
        assert exchange(proxy.address, GET)[0].status == 200
    assert len([c for c in upstream.conns if c.requests]) == 1
    upstream.reset()
    upstream.handler = respond_with(
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )
    assert exchange(proxy.address, GET)[0].status == 200
    upstream.handler = respond_with(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert exchange(proxy.address, GET)[0].status == 200
    assert len([c for c in upstream.conns if c.requests]) == 2
    # An early answer while the body is still coming: the client connection closes after it.
    upstream.reset()
    upstream.on_head = lambda conn, request: conn.send(
        b"HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\n\r\n"
    )
    with Client(proxy.address) as client:
        client.send(
            b"POST /early HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + b"x" * 10
        )
        assert client.read_response().status == 413
        assert client.closed()
    upstream.on_head = None
    assert upstream.wait(lambda: all(c.closed_by_peer.is_set() for c in upstream.conns))


def test_client_disconnect_cancels_the_upstream_request(proxy, upstream):
    upstream.handler = lambda conn, request: None
    with Client(proxy.address) as client:
        client.send(GET)
        assert upstream.wait(lambda: len(upstream.requests) == 1)
    conn = next(c for c in upstream.conns if c.requests)
    assert conn.closed_by_peer.wait(3), "lbx kept the upstream request after the client left"


def test_a_response_body_that_stalls_is_cut_after_read_timeout(proxy, upstream):
    """The upstream sends the head and part of the body, then nothing: after ``read_timeout``
    without a byte lbx cuts the response (the client connection closes, as nginx does) and
    closes the upstream connection, never pooled."""
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"
    upstream.handler = lambda conn, request: conn.send(head)
    with Client(proxy.address) as client:
        client.send(GET)
        response = client.read_response()
    assert (response.status, response.body, response.complete) == (200, b"abc", False)
    conn = next(c for c in upstream.conns if c.requests)
    assert conn.closed_by_peer.wait(10), "lbx kept the stalled upstream connection"


def test_a_response_body_that_trickles_is_not_cut(proxy, upstream):
    """``read_timeout`` is the longest wait between two bytes, not for the whole body: a body
    that takes longer than it in all, a byte at a time, arrives whole."""

    def trickle(conn, request):
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n")
        for byte in b"slow":
            time.sleep(0.3)  # 1.2 s in all against a read_timeout of 1 s
            conn.send(bytes([byte]))

    upstream.handler = trickle
    response, closed = exchange(proxy.address, GET)
    assert (response.status, response.body, response.complete, closed) == (
        200,
        b"slow",
        True,
        False,
    )


def test_write_timeout_is_504(proxy, upstream):
    """An upstream that stops reading the request body: 504 after write_timeout, client closed."""
    release = threading.Event()
    upstream.on_head = lambda conn, request: release.wait(10)  # stops this connection's reads
    with Client(proxy.address) as client:
        client.send(b"POST /w HTTP/1.1\r\nHost: x\r\nContent-Length: 200000000\r\n\r\n")

        def send_body() -> None:
            piece = b"x" * 65536
            try:
                for _ in range(3000):
                    client.sock.sendall(piece)
            except OSError:
                pass

        sender = threading.Thread(target=send_body, daemon=True)
        sender.start()
        try:
            response = client.read_response()
            assert response.status == 504
            assert client.closed()
        finally:
            release.set()


def test_max_upstream_connections_bounded_wait_503(lbx, tmp_path):
    """With max_upstream_connections: 1, a second concurrent request waits at most
    upstream_queue_timeout for the connection, then gets 503; later requests reuse it."""

    def slow(conn, request):
        if request.target == b"/slow":
            time.sleep(1.5)
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    upstream = Upstream(slow)
    try:
        conf = write_conf(
            tmp_path, [upstream.address], max_upstream_connections=1, upstream_queue_timeout=0.3
        )
        proc = lbx("-c", conf)
        with Client(proc.address) as busy:
            busy.send(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
            assert upstream.wait(lambda: len(upstream.requests) == 1)
            started = time.monotonic()
            response, _ = exchange(proc.address, GET)
            assert response.status == 503
            assert 0.25 < time.monotonic() - started < 1.4
            assert busy.read_response().status == 200
        for _ in range(3):
            assert exchange(proc.address, GET)[0].status == 200
        assert len(upstream.conns) == 1
    finally:
        upstream.close()
