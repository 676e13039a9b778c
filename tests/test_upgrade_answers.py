"""A ``101`` from the upstream opens a tunnel only to a protocol lbx offered (issue 14, class 1).

The capture upstream answers each Upgrade request with a ``101`` naming some protocol: ``h2c``
(what a backend that speaks HTTP/2 cleartext does), one that was never offered, none at all.
lbx must answer 502, close that upstream connection, keep the client's connection HTTP, and
forward the next request normally. What lbx offers upstream is the client's list reduced to
``upgrades:`` (default ``[websocket]``).
"""

from __future__ import annotations

import pytest
from tests.http_helpers import Client, Request, UpstreamConn, lbx_in_front


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    yield from lbx_in_front(tmp_path_factory)


def switch_to(protocol: bytes | None):
    """A handler answering ``/chat`` with 101 and ``Upgrade: protocol`` (no Upgrade field for
    None), whether or not the request asked to switch; other targets with 200."""

    def handler(conn: UpstreamConn, request: Request) -> None:
        if request.target != b"/chat":
            conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            return
        upgrade = b"" if protocol is None else b"Upgrade: " + protocol + b"\r\n"
        switching = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
        conn.send(switching + upgrade + b"\r\n")

    return handler


def upgrade_request(upgrade: bytes, connection: bytes = b"Upgrade", extra: bytes = b"") -> bytes:
    return (
        b"GET /chat HTTP/1.1\r\nHost: x\r\nConnection: " + connection + b"\r\n"
        b"Upgrade: " + upgrade + b"\r\n" + extra + b"\r\n"
    )


CASES = [
    # (what the client offers, what lbx passes on, what the upstream switches to)
    (b"websocket, h2c", b"websocket", b"h2c"),
    (b"h2c, websocket", b"websocket", b"h2c"),
    (b"H2C , WebSocket", b"WebSocket", b"H2C"),
    (b"websocket", b"websocket", b"websocket, h2c"),
    (b"websocket", b"websocket", b"foo"),
    (b"websocket", b"websocket", b"foo/1, websocket"),
    (b"websocket", b"websocket", None),
    (b"websocket", b"websocket", b""),
    (b"h2c", None, b"h2c"),
    (b"h2c, foo", None, b"h2c"),
]


@pytest.mark.parametrize(("offer", "passed", "switch"), CASES)
def test_a_101_to_a_protocol_not_offered_is_502(proxy, upstream, offer, passed, switch):
    upstream.on_head = switch_to(switch)
    upstream.handler = lambda conn, request: None  # answered on the head
    with Client(proxy.address) as client:
        client.send(upgrade_request(offer, b"Upgrade, HTTP2-Settings", b"HTTP2-Settings: AAMA\r\n"))
        response = client.read_response()
        assert response.status == 502, response
        # What went upstream: the offer reduced to upgrades: (nothing for h2c), never h2c.
        (request,) = upstream.wait_requests(1)
        assert request.get_all("Upgrade") == ([] if passed is None else [passed])
        assert request.get("HTTP2-Settings") is None
        assert b"h2c" not in upstream.raw.lower()
        # The upstream connection that switched is closed by lbx, never reused.
        conn = upstream.conns[-1]
        assert conn.closed_by_peer.wait(5)
        # The client's connection is still HTTP: the next request on it is proxied.
        upstream.on_head = switch_to(None)
        client.send(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
        assert client.read_response().status == 200
    assert [r.target for r in upstream.wait_requests(2)][-1] == b"/next"


def test_a_101_to_the_offered_protocol_opens_the_tunnel(proxy, upstream):
    """The control: a 101 naming what was offered is relayed, and bytes flow both ways."""
    upstream.on_head = switch_to(b"websocket")
    upstream.handler = lambda conn, request: None
    with Client(proxy.address) as client:
        client.send(upgrade_request(b"h2c, websocket"))
        response_head = b""
        while b"\r\n\r\n" not in response_head:
            response_head += client.sock.recv(65536)
        assert response_head.startswith(b"HTTP/1.1 101")
        assert b"upgrade: websocket" in response_head.lower()
        (request,) = upstream.wait_requests(1)
        assert request.get_all("Upgrade") == [b"websocket"]
        client.send(b"tunnel bytes")
        conn = upstream.conns[-1]
        assert upstream.wait(lambda: conn.raw.endswith(b"tunnel bytes"))
