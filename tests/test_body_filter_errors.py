"""A ``response_body_filter`` that raises as the response ends: the request ends with the
error (the client connection is cut, as for any failure after the head) instead of waiting
forever for an end that already came. Real lbx, a capture upstream, a raw client socket."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from tests.http_helpers import TIMEOUT, Client, Request, UpstreamConn, lbx_in_front

RAISE_AT_END = Path(__file__).resolve().parent / "plugins" / "raise_at_body_end.py"
GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    yield from lbx_in_front(tmp_path_factory, "--plugin", str(RAISE_AT_END))


def test_a_filter_raising_on_the_last_chunk_ends_the_request(proxy, upstream):
    release = threading.Event()

    def streaming(conn: UpstreamConn, request: Request) -> None:
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel")  # the head goes first
        assert release.wait(TIMEOUT)
        conn.send(b"lo")  # the end: the filter's last call raises

    upstream.handler = streaming
    mark = len(proxy.lines)
    with Client(proxy.address) as client:
        client.sock.settimeout(TIMEOUT)  # a request left waiting fails the test here
        client.send(b"GET / HTTP/1.1\r\nHost: x\r\nX-Raise: 1\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            data += client.sock.recv(65536)
        release.set()
        try:
            while piece := client.sock.recv(65536):
                data += piece
        except ConnectionResetError:
            pass
        assert data.startswith(b"HTTP/1.1 200 OK") and not data.endswith(b"0\r\n\r\n")
    proxy.wait_for("the filter's bug", start=mark)
    with Client(proxy.address) as client:  # lbx goes on
        upstream.handler = lambda conn, request: conn.send(b"HTTP/1.1 204 No Content\r\n\r\n")
        client.send(GET)
        assert client.read_response().status == 204


@pytest.mark.parametrize(
    ("method", "answer"),
    [
        (b"GET", b"HTTP/1.1 204 No Content\r\n\r\n"),
        (b"GET", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n"),
        (b"HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"),
        (b"GET", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"),
    ],
)
def test_a_filter_raising_on_a_response_that_came_whole_is_a_500(proxy, upstream, method, answer):
    """The response (a body-less one too) is all there before its head goes out: the filter's
    error is answered with the 500 that the log reports, and the connection stays usable."""
    upstream.handler = lambda conn, request: conn.send(answer)
    mark = len(proxy.lines)
    with Client(proxy.address) as client:
        client.send(method + b" / HTTP/1.1\r\nHost: x\r\nX-Raise: 1\r\n\r\n")
        assert client.read_response(method).status == 500
        proxy.wait_for("the filter's bug", start=mark)
        upstream.handler = lambda conn, request: conn.send(b"HTTP/1.1 204 No Content\r\n\r\n")
        client.send(GET)
        assert client.read_response().status == 204
