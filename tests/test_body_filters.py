"""How a ``response_body_filter`` that changes the length frames the response, end to end.

A body that arrived whole with its head is filtered at once and sent with its new
``Content-Length``; a body still arriving when the head goes out is re-framed (chunked for
HTTP/1.1, to the close for HTTP/1.0). Over HTTP/2 (the same lbx: its listener is ``h2c``) the
filter sees the same chunks: the same bytes reach the client, in DATA frames, and the upstream's
trailers follow them. Real lbx, a capture upstream, raw client sockets.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest
from tests.h2_helpers import H2Client
from tests.http_helpers import (
    TIMEOUT,
    Client,
    Request,
    UpstreamConn,
    lbx_in_front,
    ok,
    respond_with,
)

SHOUT = Path(__file__).resolve().parent / "plugins" / "shout_body.py"


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    yield from lbx_in_front(tmp_path_factory, "--plugin", str(SHOUT), h2c=True)


def get(version: bytes = b"1.1", method: bytes = b"GET") -> bytes:
    return method + b" / HTTP/" + version + b"\r\nHost: x\r\n\r\n"


WHOLE_ANSWERS = pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n",
    ],
    ids=["content-length", "chunked"],
)


@WHOLE_ANSWERS
def test_a_whole_body_is_sent_with_its_filtered_length(proxy, upstream, answer):
    """The filtered body's real length, no chunked framing, and the connection stays open."""
    upstream.handler = respond_with(answer)
    with Client(proxy.address) as client:
        for _ in range(2):
            client.send(get())
            response = client.read_response()
            assert response.status == 200
            assert response.body == b"HELLO!"
            assert response.get("Content-Length") == b"6"
            assert response.get("Transfer-Encoding") is None
        assert not client.closed(0.2)


def test_an_http10_client_gets_the_filtered_length_too(proxy, upstream):
    upstream.handler = respond_with(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
    with Client(proxy.address) as client:
        client.send(get(b"1.0"))
        response = client.read_response()
        assert (response.body, response.get("Content-Length")) == (b"HELLO!", b"6")


def test_head_gets_no_body(proxy, upstream):
    with Client(proxy.address) as client:
        client.send(get(method=b"HEAD"))
        assert client.read_response(b"HEAD").status == 200
        client.send(get())
        assert client.read_response().body == b"OK!"


def streaming(release: threading.Event):
    """A handler that sends the head and part of the body, and the rest once released."""

    def handler(conn: UpstreamConn, request: Request) -> None:
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel")
        assert release.wait(TIMEOUT)
        conn.send(b"lo")

    return handler


def read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        piece = sock.recv(65536)
        assert piece, data
        data += piece
    head, _, rest = data.partition(b"\r\n\r\n")
    return head.lower(), rest


def read_to_close(sock: socket.socket, data: bytes) -> bytes:
    while piece := sock.recv(65536):
        data += piece
    return data


def test_a_body_still_arriving_is_chunked_for_http11(proxy, upstream):
    release = threading.Event()
    upstream.handler = streaming(release)
    with Client(proxy.address) as client:
        client.send(get())
        head, rest = read_head(client.sock)
        assert b"transfer-encoding: chunked" in head
        assert b"content-length" not in head
        release.set()
        client.buffer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + rest
        response = client.read_response()
        assert (response.body, response.complete) == (b"HELLO!", True)
        upstream.handler = ok  # the connection is still good for the next request
        client.send(get())
        assert client.read_response().body == b"OK!"


def test_a_body_still_arriving_ends_with_the_close_for_http10(proxy, upstream):
    release = threading.Event()
    upstream.handler = streaming(release)
    with Client(proxy.address) as client:
        client.send(get(b"1.0"))
        head, rest = read_head(client.sock)
        assert b"content-length" not in head
        assert b"transfer-encoding" not in head
        assert b"connection: close" in head
        release.set()
        assert read_to_close(client.sock, rest) == b"HELLO!"


@WHOLE_ANSWERS
def test_a_whole_body_is_filtered_over_http2(proxy, upstream, answer):
    """Over HTTP/2: the same filtered bytes, a length that is theirs (if any), and the
    connection goes on."""
    upstream.handler = respond_with(answer)
    with H2Client(proxy.address) as client:
        for _ in range(2):
            reply = client.get("/")
            assert (reply.status, reply.body, reply.reset) == (200, b"HELLO!", None)
            assert reply.get("content-length") in (None, b"6")
            assert reply.trailers == []


def test_head_gets_no_body_over_http2(proxy, upstream):
    with H2Client(proxy.address) as client:
        reply = client.get("/", method="HEAD")
        assert (reply.status, reply.body) == (200, b"")
        assert client.get("/").body == b"OK!"


def test_a_body_still_arriving_is_filtered_over_http2(proxy, upstream):
    """The head goes out before the body is whole; the rest is filtered as it comes."""
    release = threading.Event()
    upstream.handler = streaming(release)
    with H2Client(proxy.address) as client:
        stream_id = client.request("/")
        while not client.replies[stream_id].status:
            assert client.read_events(), "closed before the head"
        reply = client.replies[stream_id]
        assert reply.get("content-length") is None  # not the upstream's 5
        release.set()
        reply = client.response(stream_id)
        assert (reply.status, reply.body, reply.reset) == (200, b"HELLO!", None)
        upstream.handler = ok  # the connection is still good for the next request
        assert client.get("/").body == b"OK!"


def test_trailers_follow_the_filtered_body_over_http2(proxy, upstream):
    """A chunked body with trailers: the filter's last chunk (``!``) goes before the
    upstream's trailers, which reach the HTTP/2 client as they were."""
    upstream.handler = respond_with(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nhel\r\n2\r\nlo\r\n0\r\ngrpc-status: 0\r\nx-checksum: abc\r\n\r\n"
    )
    with H2Client(proxy.address) as client:
        reply = client.get("/")
    assert (reply.status, reply.body, reply.reset) == (200, b"HELLO!", None)
    assert reply.trailers == [(b"grpc-status", b"0"), (b"x-checksum", b"abc")]
