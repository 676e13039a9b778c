"""Property: whatever a client sends, lbx either refuses it (4xx/5xx of its own, then closes) or
forwards exactly what a strict parser reads in it, canonically, without hop-by-hop fields.

Requests are generated (methods, targets, versions, framing, hop-by-hop and forwarding fields)
and then often mutated byte-wise. Each example goes over a new connection to one real lbx in
front of a capture upstream. The reference for "what the client meant" is httptools, the strict
parser lbx itself uses, run over the same bytes. ``LBX_PROPERTY_EXAMPLES`` sets the number of
examples (2,000 by default, as CI runs it).
"""

from __future__ import annotations

import os
import socket

import httptools
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from tests.http_helpers import Upstream, write_conf

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


# -- generation --------------------------------------------------------------------------------

TOKEN = st.text(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_", min_size=1, max_size=12
)
VALUE = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30).map(
    lambda v: v.strip()
)
METHODS = st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE"])
PATH = st.text("abcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=:@/%", max_size=40)
TARGETS = st.one_of(
    PATH.map(lambda p: "/" + p),
    st.tuples(PATH, PATH).map(lambda t: f"/{t[0]}?{t[1]}"),
    st.sampled_from(["*", "http://example.com/abs?x=1", "https://h:8443", "/a#f", "a", "//x"]),
)
HOP = st.sampled_from(
    [
        ("Connection", "keep-alive"),
        ("Connection", "close"),
        ("Connection", "X-Private, keep-alive"),
        ("X-Private", "secret"),
        ("Keep-Alive", "timeout=5"),
        ("Proxy-Connection", "keep-alive"),
        ("TE", "trailers"),
        ("Trailer", "X-T"),
        ("Upgrade", "h2c"),
        ("Proxy-Authorization", "Basic eA=="),
        ("X-Forwarded-For", "198.51.100.1"),
        ("Expect", "100-continue"),
        ("Host", "second.example"),
    ]
)


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    method = draw(METHODS)
    target = draw(TARGETS)
    version = draw(st.sampled_from(["1.1"] * 8 + ["1.0", "2.0", "1.2"]))
    fields: list[tuple[str, str]] = []
    if version == "1.1" or draw(st.booleans()):
        fields.append(("Host", draw(st.sampled_from(["example.com", "h:8080", "[::1]:80", ""]))))
    fields += draw(st.lists(st.tuples(TOKEN, VALUE), max_size=5))
    fields += draw(st.lists(HOP, max_size=3))
    body = draw(st.binary(max_size=300))
    framing = draw(st.sampled_from(["length", "length", "chunked", "none", "both", "wrong"]))
    if framing == "length" or (framing == "none" and body):
        fields.append(("Content-Length", str(len(body))))
    elif framing == "wrong":
        fields.append(("Content-Length", str(len(body) + draw(st.sampled_from([-1, 1, 1000])))))
    elif framing in ("chunked", "both"):
        fields.append(("Transfer-Encoding", "chunked"))
        if framing == "both":
            fields.append(("Content-Length", str(len(body))))
    order = draw(st.permutations(fields))
    head = f"{method} {target} HTTP/{version}\r\n" + "".join(f"{n}: {v}\r\n" for n, v in order)
    data = head.encode("latin-1") + b"\r\n"
    if framing in ("chunked", "both"):
        cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=3)))
        pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
        ext = draw(st.sampled_from(["", ";ext=1"]))
        data += b"".join(b"%x%s\r\n%s\r\n" % (len(p), ext.encode(), p) for p in pieces if p)
        data += b"0\r\n\r\n"
    elif framing != "none" or body:
        data += body
    return data


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(requests()))
    for _ in range(draw(st.sampled_from([0, 0, 1, 1, 2, 3]))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        kind = draw(st.sampled_from(["flip", "insert", "delete"]))
        byte = draw(st.sampled_from([0, 9, 10, 13, 32, 44, 58, 59, 0x7F, 0xFF, ord("a"), ord("0")]))
        if kind == "flip":
            data[at] = byte
        elif kind == "insert":
            data.insert(at, byte)
        else:
            del data[at]
    return bytes(data)


# -- the reference parse -------------------------------------------------------------------------


class Reference:
    """httptools over the client's bytes: the first message, or an error, or incomplete."""

    def __init__(self, data: bytes) -> None:
        self.url = b""
        self.body = b""
        self.method = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.complete = False
        self.error = False
        self._count = 0
        parser = httptools.HttpRequestParser(self)
        self.parser = parser
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass
        except httptools.HttpParserError:
            self.error = not self.complete

    def on_message_begin(self) -> None:
        self._count += 1

    def on_url(self, url: bytes) -> None:
        if self._count == 1:
            self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._count == 1 and not self.complete:
            self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self._count == 1:
            self.method = self.parser.get_method()

    def on_body(self, body: bytes) -> None:
        if self._count == 1 and not self.complete:
            self.body += body

    def on_message_complete(self) -> None:
        if self._count == 1:
            self.complete = True


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
