"""HTTP/1.1 request conformance (issue 6; rules in docs/http.md), in this process over in-memory
transports (``lbx.inprocess``): the real protocol and phases, no sockets, so every rule and its
variants run in a few seconds. test_conformance_e2e.py runs a sample of them through a real
lbx process and sockets.

Each test states the status lbx answers, what the upstream received (exact bytes parsed
strictly), and whether lbx closed the client connection.
"""

from __future__ import annotations

import pytest

from lbx.http import HOP_BY_HOP
from lbx.inprocess import InProcessProxy, MemoryUpstream


@pytest.fixture(scope="module")
def shared():
    """One in-process lbx (default config) and its upstream for the module's tests."""
    proxy = InProcessProxy()
    yield proxy.upstream, proxy
    assert proxy.errors == []
    proxy.close()


def serving(handler=None, **service):
    """An in-process lbx with ``service`` keys, its upstream answering with ``handler``."""
    proxy = InProcessProxy(**service)
    if handler is not None:
        proxy.upstream.handler = handler
    return proxy


def rejected(proxy, upstream, data: bytes, status: int) -> None:
    """``data`` gets ``status``, lbx closes, and nothing reached the upstream."""
    response, closed = proxy.exchange(data)
    assert response.status == status, response
    assert response.get("Connection") == b"close"
    assert closed
    assert upstream.requests == []
    assert upstream.raw == b""


# -- framing --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "framing",
    [
        b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n",
        b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n",
        b"Content-Length: 3\r\nContent-Length: 3\r\n",
        b"Content-Length: 3\r\nContent-Length: 4\r\n",
        b"Content-Length: 3, 3\r\n",
        b"Content-Length: +3\r\n",
        b"Content-Length: -3\r\n",
        b"Content-Length: 0x3\r\n",
        b"Content-Length: 99999999999999999999999\r\n",
        b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
        b"Transfer-Encoding: chunked, gzip\r\n",
        b"Transfer-Encoding : chunked\r\n",
        b"Transfer-Encoding:\x0bchunked\r\n",
    ],
)
def test_bad_framing_is_400(proxy, upstream, framing):
    """Ambiguous or invalid Content-Length / Transfer-Encoding: 400 and close (no smuggling)."""
    rejected(proxy, upstream, b"POST / HTTP/1.1\r\nHost: x\r\n" + framing + b"\r\n0\r\n\r\n", 400)


def test_transfer_encoding_in_http10_is_400(proxy, upstream):
    rejected(
        proxy,
        upstream,
        b"POST / HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        400,
    )


@pytest.mark.parametrize("coding", [b"gzip, chunked", b"gzip", b"identity", b"xchunked"])
def test_unknown_transfer_coding_is_501(proxy, upstream, coding):
    """Only ``chunked`` is a transfer coding lbx relays; any other is 501 (RFC 9112 6.1)."""
    rejected(
        proxy,
        upstream,
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: " + coding + b"\r\n\r\n0\r\n\r\n",
        501,
    )


def test_body_is_reframed_canonically(proxy, upstream):
    """Chunk extensions, trailers and odd chunk sizes are not passed through: the upstream gets
    ``Transfer-Encoding: chunked`` with plain chunks; Content-Length is re-written as digits."""
    with proxy.client() as client:
        client.send(
            b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked \r\n\r\n"
            b"003;ext=1\r\nabc\r\n2;x\r\nde\r\n0\r\nTrailer-Field: t\r\n\r\n"
            b"POST /l HTTP/1.1\r\nHost: x\r\nContent-Length: 5 \r\n\r\nhello"
        )
        assert client.read_response().status == 200
        assert client.read_response().status == 200
        assert not client.closed(0.3)
    chunked, length = upstream.wait_requests(2)
    assert (chunked.body, chunked.get_all("Transfer-Encoding")) == (b"abcde", [b"chunked"])
    assert chunked.get("Trailer-Field") is None
    raw = upstream.raw
    assert b"ext" not in raw and b";x" not in raw
    assert b"Content-Length: 5\r\n" in raw and length.body == b"hello"


# -- header syntax ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field",
    [
        b"Bad Header: x",
        b"X-A : x",
        b": empty-name",
        b"X-A: a\x00b",
        b"X-A: a\rb",
        b"X-A: folded\r\n continued",
        b"X\x7fA: x",
        b"X-A\r\n",
    ],
)
def test_bad_header_syntax_is_400(proxy, upstream, field):
    rejected(proxy, upstream, b"GET / HTTP/1.1\r\nHost: x\r\n" + field + b"\r\n\r\n", 400)


def test_bare_lf_line_endings_are_400(proxy, upstream):
    rejected(proxy, upstream, b"GET / HTTP/1.1\nHost: x\n\n", 400)


# -- Host -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "hosts",
    [
        b"",
        b"Host: a\r\nHost: b\r\n",
        b"Host: a\r\nHost: a\r\n",
        b"Host: a b\r\n",
        b"Host: a/b\r\n",
        b"Host: a@b\r\n",
        b"Host: [::1\r\n",
        b"Host: a:b\r\n",
        # A name as nginx requires one: not empty, not only a port, no empty label.
        b"Host: \r\n",
        b"Host: :80\r\n",
        b"Host: .\r\n",
        b"Host: ..\r\n",
        b"Host: ...\r\n",
        b"Host: a..b\r\n",
    ],
)
def test_bad_host_is_400(proxy, upstream, hosts):
    """HTTP/1.1 needs exactly one valid Host (RFC 9112 3.2), with a name nginx would take."""
    rejected(proxy, upstream, b"GET / HTTP/1.1\r\n" + hosts + b"\r\n", 400)


def test_http10_without_host_gets_empty_host_upstream(proxy, upstream):
    response, closed = proxy.exchange(b"GET /old HTTP/1.0\r\n\r\n")
    assert response.status == 200 and closed
    (request,) = upstream.wait_requests(1)
    assert request.version == "1.1" and request.get_all("Host") == [b""]


def test_absolute_form_becomes_origin_form_with_its_host(proxy, upstream):
    """``GET http://h/p`` goes upstream as ``GET /p`` with ``Host: h`` (RFC 9112 3.2.2)."""
    with proxy.client() as client:
        client.send(b"GET http://example.com:8080/p?q=1 HTTP/1.1\r\nHost: other\r\n\r\n")
        client.send(b"GET HTTP://example.org HTTP/1.1\r\nHost: example.org\r\n\r\n")
        assert client.read_response().status == 200
        assert client.read_response().status == 200
    first, second = upstream.wait_requests(2)
    assert (first.target, first.get_all("Host")) == (b"/p?q=1", [b"example.com:8080"])
    assert (second.target, second.get_all("Host")) == (b"/", [b"example.org"])


# -- request target and version ---------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        b"GET /a#frag HTTP/1.1",
        b"GET * HTTP/1.1",
        b"GET a/b HTTP/1.1",
        b"GET example.com:80 HTTP/1.1",
        b"GET http://user@example.com/ HTTP/1.1",
        b"GET ftp://example.com/ HTTP/1.1",
        b"GET /a b HTTP/1.1",
        b"GET /\xff HTTP/1.1",
        b"get / HTTP/1.1",
        # Dot segments above the root, as nginx reads them (%2e a dot, %2f a slash): 400.
        b"GET /../admin HTTP/1.1",
        b"GET /a/../../admin HTTP/1.1",
        b"GET /%2e%2e/admin HTTP/1.1",
        b"GET /%2E%2e/admin?x=1 HTTP/1.1",
        b"GET /a%2f..%2f..%2fadmin HTTP/1.1",
        b"GET //../admin HTTP/1.1",
        b"GET http://a/%2e%2e/b HTTP/1.1",
    ],
)
def test_bad_request_target_is_400(proxy, upstream, line):
    rejected(proxy, upstream, line + b"\r\nHost: x\r\n\r\n", 400)


def test_dot_segments_below_the_root_go_upstream_as_sent(proxy, upstream):
    """``/a/../b`` stays below ``/``: forwarded unchanged, as nginx's ``proxy_pass`` without a
    URI does (a hook deciding on the path reads ``normalized_path``)."""
    with proxy.client() as client:
        for target in (b"/a/../b", b"/.well-known/x", b"/a/%2e%2e/b"):
            client.send(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
            assert client.read_response().status == 200
    assert [r.target for r in upstream.wait_requests(3)] == [
        b"/a/../b",
        b"/.well-known/x",
        b"/a/%2e%2e/b",
    ]


def test_options_asterisk_is_forwarded(proxy, upstream):
    response, _ = proxy.exchange(b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n")
    assert response.status == 200
    assert upstream.wait_requests(1)[0].target == b"*"


@pytest.mark.parametrize("version", [b"HTTP/2.0", b"HTTP/1.2", b"HTTP/3.0", b"HTTP/0.9"])
def test_unsupported_version_is_505(proxy, upstream, version):
    rejected(proxy, upstream, b"GET / " + version + b"\r\nHost: x\r\n\r\n", 505)


def test_http10_request_goes_upstream_as_11(proxy, upstream):
    response, closed = proxy.exchange(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
    assert response.status == 200 and closed  # 1.0 without keep-alive: closed after
    upstream.wait_requests(1)
    assert upstream.raw.startswith(b"GET / HTTP/1.1\r\n")


# -- methods, pipelining, Expect, Upgrade -------------------------------------------------------


@pytest.mark.parametrize(
    "request_line",
    [b"CONNECT example.com:443 HTTP/1.1", b"TRACE / HTTP/1.1", b"TRACE http://x/ HTTP/1.1"],
)
def test_connect_and_trace_are_405(proxy, upstream, request_line):
    """As nginx: CONNECT is not a proxy's to tunnel here, and TRACE would echo the request's
    credentials back (cross-site tracing)."""
    rejected(proxy, upstream, request_line + b"\r\nHost: x\r\nCookie: secret=1\r\n\r\n", 405)


def test_pipelined_requests_answered_in_order(proxy, upstream):
    """Three pipelined requests (one with a body): three canonical requests upstream, in order,
    and three responses in the same order on the still-open connection."""
    with proxy.client() as client:
        client.send(
            b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST /2 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
            b"HEAD /3 HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        assert [client.read_response(m).status for m in (b"GET", b"POST", b"HEAD")] == [200] * 3
        assert not client.closed(0.3)
    requests = upstream.wait_requests(3)
    assert [(r.method, r.target, r.body) for r in requests] == [
        (b"GET", b"/1", b""),
        (b"POST", b"/2", b"abc"),
        (b"HEAD", b"/3", b""),
    ]


@pytest.mark.parametrize(
    "bad",
    [
        b"GET /3 HTTP/1.1\r\n\r\n",  # no Host
        b"GET /3 RTSP/1.0\r\nHost: x\r\n\r\n",  # not HTTP, in the middle of a read
        b"GET /3 HTTP/1.1\r\nHost: x\r\nContent_Length: 1\r\nBad Field\r\n\r\n",
        b"POST /3 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n",
        b"POST /3 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
)
def test_bad_request_after_good_pipelined_ones(proxy, upstream, bad):
    """A bad request behind good ones: the good ones are answered, then 400, then close."""
    with proxy.client() as client:
        client.send(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\n" + bad)
        assert [client.read_response().status for _ in range(3)] == [200, 200, 400]
        assert client.closed()
    requests = upstream.wait_requests(2)
    assert [r.target for r in requests][:2] == [b"/1", b"/2"]
    # A malformed body's head may have gone upstream; its body never completed there.
    assert all(not r.complete for r in requests[2:])


def test_expect_100_continue_never_deadlocks(proxy, upstream):
    """lbx answers ``Expect: 100-continue`` itself once it wants the body; Expect is not forwarded,
    and the client that waits for the 100 before sending its body gets its answer."""
    with proxy.client() as client:
        client.send(
            b"POST /e HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"
        )
        assert client.received == b"HTTP/1.1 100 Continue\r\n\r\n"
        client.send(b"hello")
        response = client.read_response()
        assert response.status == 200 and response.informational == [100]  # lbx's one 100
    (request,) = upstream.wait_requests(1)
    assert request.body == b"hello" and request.get("Expect") is None


def test_unknown_expectation_is_417(proxy, upstream):
    rejected(
        proxy,
        upstream,
        b"POST / HTTP/1.1\r\nHost: x\r\nExpect: something\r\nContent-Length: 1\r\n\r\na",
        417,
    )


def test_upgrade_h2c_is_never_forwarded(proxy, upstream):
    """``Upgrade: h2c`` (and HTTP2-Settings) is dropped: the request is answered as HTTP/1.1 and
    the connection stays usable for the next request."""
    with proxy.client() as client:
        client.send(
            b"GET /u HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
            b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"
            b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        assert client.read_response().status == 200
        assert client.read_response().status == 200
    first, second = upstream.wait_requests(2)
    for name in (b"upgrade", b"http2-settings", b"connection"):
        assert name not in first.names()
    assert second.target == b"/next"
    assert b"h2c" not in upstream.raw


def test_upgrade_with_a_body_is_400(proxy, upstream):
    """httptools would read such a body as upgraded-protocol bytes: lbx refuses it."""
    rejected(
        proxy,
        upstream,
        b"POST / HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: foo\r\n"
        b"Content-Length: 29\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n\r\n",
        400,
    )


# -- hop-by-hop and forwarding headers --------------------------------------------------------


def test_hop_by_hop_fields_are_removed_upstream(proxy, upstream):
    response, _ = proxy.exchange(
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, X-Secret, x-other\r\n"
        b"X-Secret: 1\r\nX-Other: 2\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\n"
        b"TE: trailers\r\nTrailer: X\r\nUpgrade: websocket\r\nProxy-Authorization: Basic eA==\r\n"
        b"X-Kept: yes\r\n\r\n",
    )
    assert response.status == 200
    (request,) = upstream.wait_requests(1)
    assert request.hop_by_hop() == []
    assert b"x-secret" not in request.names() and b"x-other" not in request.names()
    assert request.get("X-Kept") == b"yes"


@pytest.mark.parametrize("field", [b"Host", b"Content-Length", b"Transfer-Encoding"])
def test_connection_naming_a_protected_field_is_400(proxy, upstream, field):
    rejected(
        proxy, upstream, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: " + field + b"\r\n\r\n", 400
    )


def test_hop_by_hop_fields_are_removed_downstream():
    proxy = serving(
        lambda conn, request: conn.send(
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: 5\r\n"
            b"Proxy-Connection: keep-alive\r\nUpgrade: h2c\r\nTrailer: X\r\nX-End: yes\r\n"
            b"Content-Length: 2\r\n\r\nok"
        )
    )
    response, closed = proxy.exchange(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert response.status == 200 and response.body == b"ok" and not closed
    for name in (b"x-hop", b"keep-alive", b"proxy-connection", b"upgrade", b"trailer"):
        assert name not in response.names()
    assert response.get("X-End") == b"yes"
    proxy.close()


@pytest.mark.parametrize("spell", [bytes.lower, bytes.upper, bytes.title, bytes.swapcase])
def test_framing_and_hop_by_hop_response_fields_are_found_in_any_case(spell):
    """lbx lower-cases only response names of a hop-by-hop or framing name's length: every
    case of each is still dropped, and a chunked or sized body is still framed by it."""
    hops = [name for name in HOP_BY_HOP if name != b"transfer-encoding"]
    fields = b"".join(spell(name) + b": 1\r\n" for name in hops if name != b"connection")
    for framing, body in (
        (spell(b"Transfer-Encoding") + b": chunked\r\n", b"2\r\nok\r\n0\r\n\r\n"),
        (spell(b"Content-Length") + b": 2\r\n", b"ok"),
    ):
        proxy = serving(
            lambda conn, request, framing=framing, body=body: conn.send(
                b"HTTP/1.1 200 OK\r\n" + spell(b"Connection") + b": keep-alive\r\n" + fields
                + b"X-End: yes\r\n" + framing + b"\r\n" + body
            )
        )  # fmt: skip
        response, closed = proxy.exchange(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert response.status == 200 and response.body == b"ok" and not closed, response
        assert not set(response.names()) & HOP_BY_HOP - {b"transfer-encoding"}, response
        assert response.get("X-End") == b"yes"
        proxy.close()


FORWARDING = (
    b"GET / HTTP/1.1\r\nHost: site\r\nX-Forwarded-For: 203.0.113.7\r\n"
    b"X-Forwarded-Proto: https\r\nForwarded: for=203.0.113.7\r\n\r\n"
)


@pytest.mark.parametrize(
    ("keys", "xff", "xfp", "fwd"),
    [
        # Defaults: X-Forwarded-For appended; X-Forwarded-Proto replaced by this hop's scheme
        # (a client cannot claim https); Forwarded passed on untouched.
        ({}, [b"203.0.113.7, 127.0.0.1"], [b"http"], [b"for=203.0.113.7"]),
        (
            {"x_forwarded_for": "replace", "x_forwarded_proto": "replace", "forwarded": "replace"},
            [b"127.0.0.1"],
            [b"http"],
            [b'for=127.0.0.1;proto=http;host="site"'],
        ),
        (
            {"x_forwarded_proto": "append", "forwarded": "append", "via": True},
            [b"203.0.113.7, 127.0.0.1"],
            [b"https, http"],
            [b'for=203.0.113.7, for=127.0.0.1;proto=http;host="site"'],
        ),
        ({"x_forwarded_for": "off"}, [b"203.0.113.7"], [b"http"], [b"for=203.0.113.7"]),
        (
            {"trusted_proxies": ["10.0.0.0/8"], "x_forwarded_proto": "append"},
            [b"127.0.0.1"],
            [b"http"],
            [b"for=203.0.113.7"],
        ),
        (
            {"trusted_proxies": ["127.0.0.0/8", "::1"], "forwarded": "append"},
            [b"203.0.113.7, 127.0.0.1"],
            [b"http"],
            [b'for=203.0.113.7, for=127.0.0.1;proto=http;host="site"'],
        ),
    ],
)
def test_forwarding_headers_modes(keys, xff, xfp, fwd):
    """X-Forwarded-For / X-Forwarded-Proto / Forwarded: append (received values kept only from
    trusted proxies), replace, off; ``via: true`` adds ``Via: 1.1 lbx`` both ways."""
    proxy = serving(**keys)
    upstream: MemoryUpstream = proxy.upstream
    response, _ = proxy.exchange(FORWARDING)
    proxy.close()
    assert response.status == 200
    (request,) = upstream.wait_requests(1)
    assert request.get_all("X-Forwarded-For") == xff
    assert request.get_all("X-Forwarded-Proto") == xfp
    assert request.get_all("Forwarded") == fwd
    via = keys.get("via", False)
    assert request.get_all("Via") == ([b"1.1 lbx"] if via else [])
    assert response.get("Via") == (b"1.1 lbx" if via else None)


def test_keepalive_connection_survives_many_requests(proxy, upstream):
    """Sanity: a valid request leaves the connection open (the rejections above close it)."""
    with proxy.client() as client:
        for index in range(5):
            client.send(b"GET /%d HTTP/1.1\r\nHost: x\r\n\r\n" % index)
            assert client.read_response().status == 200
        assert not client.closed(0.2)
    assert len({id(c) for c in upstream.conns if c.requests}) == 1


def test_unix_client_is_never_a_trusted_proxy():
    """``trusted_proxies`` matches IP clients only (a Unix socket client has no address)."""
    from lbx.config import ServiceConfig
    from lbx.connections import Connections
    from lbx.plugins import get_plugin_manager
    from lbx.proxy import ProxyService, RequestHooks, build_connector

    config = ServiceConfig(name="s", listen=[], upstreams=[], trusted_proxies=["0.0.0.0/0"])
    connector = build_connector(pool_size=1, idle_timeout=1, ca_file=None, connect_timeout=1)
    hooks = RequestHooks(get_plugin_manager([]))
    service = ProxyService(config, None, hooks, connector, Connections(), max_retries=1)
    assert service.is_trusted("192.0.2.1") and not service.is_trusted("unix")
