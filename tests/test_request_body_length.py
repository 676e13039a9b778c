"""A ``request_body_filter`` must keep the length of a body sent with ``Content-Length``
(docs/hooks.md). One that does not cannot desynchronise the upstream connection: bytes past the
length would be read as the connection's next request, possibly another client's, and a short
body would leave the upstream waiting. lbx answers 500 and closes that connection instead.
Real lbx, a capture upstream, raw client sockets."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.http_helpers import Client, lbx_in_front

RESIZE = Path(__file__).resolve().parent / "plugins" / "resize_request_body.py"


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    yield from lbx_in_front(tmp_path_factory, "--plugin", str(RESIZE))


def post(resize: bytes, body: bytes = b"hello", chunked: bool = False) -> bytes:
    framing = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: %d" % len(body)
    data = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if chunked else body
    return b"POST /p HTTP/1.1\r\nHost: x\r\nX-Resize: %s\r\n%s\r\n\r\n%s" % (resize, framing, data)


@pytest.mark.parametrize("resize", [b"grow", b"shrink"])
def test_a_filter_that_changes_a_content_length_body_gets_500_not_a_desync(proxy, upstream, resize):
    mark = len(proxy.lines)
    with Client(proxy.address) as client:
        client.send(post(resize, b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"))
        assert client.read_response().status == 500
    proxy.wait_for("changed the length of a Content-Length body", start=mark)
    with Client(proxy.address) as client:  # the next request, another client's
        client.send(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
        assert client.read_response().status == 200
    targets = [r.target for conn in list(upstream.conns) for r in conn.requests]
    assert b"/smuggled" not in targets and b"/next" in targets
    for conn in list(upstream.conns):
        if any(r.target == b"/p" for r in conn.requests):
            assert conn.closed_by_peer.wait(5) and len(conn.requests) == 1


def test_a_chunked_body_may_change_length(proxy, upstream):
    """Chunked framing carries any length: the grown body goes upstream whole."""
    with Client(proxy.address) as client:
        client.send(post(b"grow", b"abc", chunked=True))
        assert client.read_response().status == 200
    (request,) = upstream.wait_requests(1)
    assert request.body == b"abcabc"


def test_a_filter_that_keeps_the_length_passes(proxy, upstream):
    with Client(proxy.address) as client:
        client.send(post(b"keep"))
        assert client.read_response().status == 200
    (request,) = upstream.wait_requests(1)
    assert request.body == b"hello"
