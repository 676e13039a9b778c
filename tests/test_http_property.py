"""Property: whatever a client sends, lbx either refuses it (4xx/5xx of its own, then closes) or
forwards exactly what a strict parser reads in it, canonically, without hop-by-hop fields.

Requests are generated (methods, targets, versions, framing, hop-by-hop and forwarding fields)
and then often mutated byte-wise. Each example goes over a new connection to one real lbx in
front of a capture upstream. The reference for "what the client meant" is httptools, the strict
parser lbx itself uses, run over the same bytes. The generators and the reference parse live in
tests/request_gen.py (shared with tests/test_nginx_differential.py). ``LBX_PROPERTY_EXAMPLES``
sets the number of examples (2,000 by default, as CI runs it).
"""

from __future__ import annotations

import os
import socket

import httptools
import pytest
from hypothesis import HealthCheck, event, given, settings
from tests.http_helpers import Upstream, write_conf
from tests.request_gen import Reference, mutated

from lbx.testing import LbxProcess

EXAMPLES = int(os.environ.get("LBX_PROPERTY_EXAMPLES", "2000"))


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    server = Upstream()
    conf = write_conf(
        tmp_path_factory.mktemp("conf"),
        [server.address],
        header_timeout=2,
        body_timeout=2,
        max_body_size=100000,
    )
    with LbxProcess("-c", conf) as process:
        yield server, process
    server.close()


def read_first_response(sock: socket.socket, method: bytes) -> tuple[bytes, bool]:
    """The first final response's head, and whether lbx closed the connection after it."""
    data = b""
    while True:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return data, True
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        if head.startswith(b"HTTP/1.1 1"):
            data = rest
            continue
        break
    lowered = head.lower()
    if b"server: lbx" in lowered and b"connection: close" in lowered:
        # An error from lbx itself: it must close; read to the end.
        try:
            while sock.recv(65536):
                pass
        except ConnectionResetError:
            pass
        return head, True
    return head, False


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=bool(os.environ.get("CI")),
)
@given(data=mutated())
def test_forwarded_or_refused(shared, data: bytes) -> None:
    upstream, proc = shared
    upstream.reset()
    reference = Reference(data)
    host, port = proc.address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(data)
        if reference.error:
            # Invalid for the strict parser: lbx answers 4xx / 505 and closes, or (if the error
            # is in a body already on its way) cuts the connection without an answer.
            event("refused by the parser")
            head, closed = read_first_response(sock, reference.method)
            assert closed, (data, head)
            if head:
                status = int(head.split(b" ", 2)[1])
                assert 400 <= status < 500 or status in (501, 505), (data, head)
            assert not any(r.complete for r in upstream.requests), (data, upstream.requests)
            return
        if not reference.complete:
            event("incomplete")
            # Incomplete for the strict parser: never forwarded as a whole request.
            sock.shutdown(socket.SHUT_WR)
            try:
                while sock.recv(65536):
                    pass
            except ConnectionResetError:
                pass
            assert not any(r.complete for r in upstream.requests), (data, upstream.requests)
            return
        head, closed = read_first_response(sock, reference.method)
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.1 ") else 0
    if status != 200 or not head.lower().count(b"content-length: 2"):
        event(f"refused by lbx: {status}")
        # Refused by lbx: a 4xx (or 501 / 505 for what it cannot relay), and the connection closed.
        assert 400 <= status < 600 and status not in (502, 503, 504), (data, head)
        assert closed, (data, head)
        assert not any(r.complete for r in upstream.requests), (data, upstream.requests)
        return
    event("forwarded")
    # Forwarded: exactly one request, the same method, target (origin-form) and body.
    assert upstream.wait(lambda: any(r.complete for r in upstream.requests)), data
    forwarded = [r for r in upstream.requests if r.complete]
    first = forwarded[0]
    assert [c.error for c in upstream.conns if c.error] == [], data
    assert first.method == reference.method, data
    target = reference.url
    if target[:7].lower() == b"http://" or target[:8].lower() == b"https://":
        parts = httptools.parse_url(target)
        target = (parts.path or b"/") + (b"?" + parts.query if parts.query is not None else b"")
    assert first.target == target, data
    assert first.body == reference.body, data
    assert first.hop_by_hop() == [], (data, first.headers)
    names = first.names()
    assert names.count(b"host") == 1, data
    assert names.count(b"content-length") + names.count(b"transfer-encoding") <= 1, data
    assert first.version == "1.1"
