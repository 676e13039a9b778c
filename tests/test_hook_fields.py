"""What a hook sets goes into the heads lbx writes byte for byte, so lbx refuses what would
change their shape: a CR or LF (a field or a whole message of the caller's choosing), a name
that is not a token, a framing field lbx did not write, a request line or status line that
would split. The hook's call raises ValueError, the request gets the 500 of any hook error,
nothing of it reaches the upstream or the client, and the next request is served. Real lbx, a
capture upstream, raw client sockets."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.http_helpers import Client, lbx_in_front
from tests.plugins.hook_fields import REQUEST_SIDE, RESPONSE_SIDE

HOOK_FIELDS = Path(__file__).resolve().parent / "plugins" / "hook_fields.py"


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    yield from lbx_in_front(tmp_path_factory, "--plugin", str(HOOK_FIELDS))


def ask(how: str, method: bytes = b"GET") -> bytes:
    return method + b" / HTTP/1.1\r\nHost: x\r\nX-Set: %s\r\n\r\n" % how.encode()


@pytest.mark.parametrize(
    ("how", "method"), [*((how, b"GET") for how in sorted(REQUEST_SIDE)), ("method-head", b"HEAD")]
)
def test_a_request_head_a_hook_would_bend_is_refused(proxy, upstream, how, method):
    mark = len(proxy.lines)
    with Client(proxy.address) as client:
        client.send(ask(how, method))
        assert client.read_response(method).status == 500
        proxy.wait_for("ValueError", start=mark)
        client.send(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
        assert client.read_response().status == 200
    (request,) = upstream.wait_requests(1)  # the next one only
    assert request.target == b"/next" and b"X-A" not in upstream.raw


@pytest.mark.parametrize("how", sorted(RESPONSE_SIDE))
def test_a_response_head_a_hook_would_bend_is_refused(proxy, upstream, how):
    mark = len(proxy.lines)
    with Client(proxy.address) as client:
        client.send(ask(how))
        response = client.read_response()
        assert (response.status, response.body) == (500, b"")
        assert response.get("X-A") is None and response.get("Set-Cookie") is None
        proxy.wait_for("ValueError", start=mark)
        client.send(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
        response = client.read_response()
        assert (response.status, response.body) == (200, b"ok")
    # The upstream connection of the refused response is closed, neither pooled nor left open
    # (5 of them used to take all of max_upstream_connections: 5 for good).
    (used,) = [c for c in list(upstream.conns) if any(r.target == b"/" for r in c.requests)]
    assert used.closed_by_peer.wait(5)


def test_respond_refuses_a_control_byte_and_drops_framing_fields(proxy, upstream):
    """``Session.respond``: lbx frames the body (Content-Length) whatever framing the hook
    gave; a CR or LF in a field is the hook's error."""
    with Client(proxy.address) as client:
        client.send(ask("respond-framing"))
        response = client.read_response()
        assert (response.status, response.body) == (200, b"body")
        assert response.get("Transfer-Encoding") is None and response.get("X-Kept") == b"1"
        client.send(ask("respond-crlf"))
        response = client.read_response()
        assert (response.status, response.get("X-B")) == (500, None)
    assert upstream.raw == b""


@pytest.mark.parametrize(
    ("how", "logged"),
    [
        ("respond-informational", "status 103 is not a final status"),
        ("respond-error-switch", "status 101 is not a final status"),
        ("fail-with-103", "status 103 is not a final status .200-599.: answered 500"),
        ("fail-with-float", "status 404.5 is not a final status .200-599.: answered 500"),
        ("fail-with-text", "status '404' is not a final status .200-599.: answered 500"),
        ("set-upgrade", "AttributeError"),  # session.upgrade is read-only
    ],
)
def test_a_status_that_is_not_final_is_never_sent(proxy, upstream, how, logged):
    """A 1xx or a 101 as a hook's answer would leave the client waiting for the response after
    it (or speaking another protocol): ``respond``, ``respond_error`` and ``fail_to_proxy``."""
    mark = len(proxy.lines)
    with Client(proxy.address) as client:
        client.send(ask(how))
        response = client.read_response()
        assert (response.status, response.informational) == (500, [])
        client.send(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
        assert client.read_response().status == 200
    proxy.wait_for(logged, start=mark)


@pytest.mark.parametrize("how", ["replace-head", "replace-version"])
def test_a_request_head_replaced_whole_gets_the_same_checks(proxy, upstream, how):
    """``session.req_header = RequestHeader(...)``: checked as if each part had been set."""
    mark = len(proxy.lines)
    with Client(proxy.address) as client:
        client.send(ask(how))
        assert client.read_response().status == 500
    proxy.wait_for("ValueError", start=mark)
    assert upstream.raw == b""


def test_a_sound_replacement_head_goes_upstream(proxy, upstream):
    with Client(proxy.address) as client:
        client.send(ask("replace-fine"))
        assert client.read_response().status == 200
    (request,) = upstream.wait_requests(1)
    assert (request.target, request.get("X-Replaced")) == (b"/replaced", b"yes")


@pytest.mark.parametrize("how", ["respond-204", "respond-error-204"])
def test_respond_sends_no_length_with_a_204(proxy, upstream, how):
    """RFC 9110 8.6: no Content-Length in a 204 (nor a body, whatever the hook passed)."""
    with Client(proxy.address) as client:
        client.send(ask(how))
        response = client.read_response()
        assert (response.status, response.get("Content-Length")) == (204, None)
        client.send(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
        assert client.read_response().status == 200


def test_sound_values_pass(proxy, upstream):
    """Tokens, visible values (HTAB inside), a new target, method, status and reason."""
    with Client(proxy.address) as client:
        client.send(ask("fine")[:-2] + b"Connection: close\r\n\r\n")
        data = b""
        while chunk := client.sock.recv(65536):
            data += chunk
    head = data.split(b"\r\n\r\n")[0].split(b"\r\n")
    assert head[0] == b"HTTP/1.1 201 Made"
    assert [line for line in head if line.startswith(b"X-Fine")] == [b"X-Fine: a\tb", b"X-Fine: c"]
    assert b"X-Built: 1" in head and data.endswith(b"\r\n\r\nok")
    (request,) = upstream.wait_requests(1)
    assert (request.method, request.target) == (b"PUT", b"/fine?q=1")
    assert request.get_all("X-Fine") == [b"a\tb", b"c"]
