"""lbx.testing.make_session: a Session for unit-testing hooks, without a process or a socket."""

from __future__ import annotations

import asyncio

from lbx import Peer, ResponseHeader, Session, hookimpl
from lbx.testing import make_session, sent_to_client


def test_the_request_as_hooks_see_it() -> None:
    """Method, target, path, headers (Host added), client and service are those asked for."""
    session = make_session(
        "/a/b?x=1", {"X-Test": "yes"}, method="POST", client_addr="[2001:db8::1]:4000"
    )
    assert isinstance(session, Session)
    head = session.req_header
    assert (head.method, head.uri, head.path, head.version) == ("POST", "/a/b?x=1", "/a/b", "1.1")
    assert head.headers.get("x-test") == "yes"
    assert head.headers.get("host") == "example.com"
    assert (session.client_addr, session.client_ip) == ("[2001:db8::1]:4000", "2001:db8::1")
    assert session.server_addr == "127.0.0.1:6188"
    assert session.service.name == "test"
    assert session.peer is None and session.response_status is None
    assert make_session("/", {"host": "a.test"}).req_header.headers.get_all("host") == ["a.test"]


def test_a_response_from_a_hook_is_what_the_client_gets() -> None:
    """``respond`` and ``respond_error`` write the bytes a client would read."""
    session = make_session("/health")
    asyncio.run(session.respond(200, b"ok\n", {"X-From": "hook"}))
    assert session.response_status == 200 and session.response_written
    assert sent_to_client(session) == (
        b"HTTP/1.1 200 OK\r\nX-From: hook\r\nContent-Length: 3\r\n\r\nok\n"
    )
    refused = make_session("/admin", method="HEAD")
    asyncio.run(refused.respond_error(403))
    assert sent_to_client(refused).startswith(b"HTTP/1.1 403 Forbidden\r\n")


@hookimpl
async def request_filter(session: Session) -> bool | None:
    """A hook under test: answers /private itself."""
    if session.req_header.path == "/private":
        await session.respond_error(403)
        return True
    return None


@hookimpl
def response_filter(session: Session, upstream_response: ResponseHeader) -> None:
    assert session.peer is not None
    upstream_response.insert_header("X-Upstream", session.peer.addr)


def test_unit_testing_hooks() -> None:
    """Calling impls directly with a made session, as docs/plugins.md shows."""
    assert asyncio.run(request_filter(make_session("/public"))) is None
    private = make_session("/private")
    assert asyncio.run(request_filter(private)) is True
    assert private.response_status == 403
    session = make_session("/")
    session.peer = Peer("127.0.0.1:8001")
    head = ResponseHeader(200)
    response_filter(session, head)
    assert head.headers.get("x-upstream") == "127.0.0.1:8001"
