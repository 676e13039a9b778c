"""Unit tests of the sans-IO request rules (``lbx.request_rules``) and the normalised path
(``lbx.http``): bytes in, decisions out, no sockets.

The end-to-end behaviour of the same rules (status, what reaches the upstream, the close) is in
test_conformance.py and test_smuggling.py.
"""

from __future__ import annotations

from typing import Any

import httptools
import pytest

from lbx import RequestHeader, ServiceConfig, request_rules
from lbx.http import normalize_path, remove_dot_segments
from lbx.request_rules import (
    LOOKALIKE_FIELD,
    PLAIN_FIELD,
    PLAIN_REQUEST_LINE,
    UNDERSCORED_FIELD,
    HeadRules,
    RequestRefused,
    check_h2_field,
    check_h2_request_line,
    check_head,
    field_kind,
    host_is_valid,
    is_lookalike,
    path_climbs_above_root,
    path_escapes_ok,
    request_line_is_http,
    scan_fields,
    upgrade_accepted,
    upgrade_offer,
)

WEBSOCKET = frozenset({b"websocket"})

# -- Upgrade lists --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "offered"),
    [
        (b"websocket", b"websocket"),
        (b"WebSocket", b"WebSocket"),
        (b"websocket, h2c", b"websocket"),
        (b"h2c, websocket", b"websocket"),
        (b"H2C,websocket", b"websocket"),
        (b" h2c ,\twebsocket ", b"websocket"),
        (b"h2c/1.0, websocket/13", b"websocket/13"),
        (b"foo, websocket, h2c, bar/2", b"websocket"),
        (b",,websocket,", b"websocket"),
    ],
)
def test_upgrade_offer_keeps_only_allowed_protocols(value: bytes, offered: bytes) -> None:
    """The list goes upstream reduced to ``upgrades:``, in the client's order and spelling."""
    assert upgrade_offer(value, WEBSOCKET) == (offered, WEBSOCKET)


@pytest.mark.parametrize(
    "value",
    [
        b"h2c",
        b"H2C",
        b" h2c ",
        b"h2c, foo",
        b"",
        b",",
        b"websocket extra",
        b"websocket/",
        b"web\x00",
    ],
)
def test_upgrade_offer_is_none_without_an_allowed_well_formed_protocol(value: bytes) -> None:
    """Nothing allowed, or a malformed list: the request goes upstream without Upgrade."""
    assert upgrade_offer(value, WEBSOCKET) is None


def test_upgrade_offer_never_passes_h2c_even_if_allowed_by_mistake() -> None:
    """The kernel removes h2c from ``upgrades:``; here only its absence from ``allowed`` counts."""
    both = frozenset({b"websocket", b"foo"})
    assert upgrade_offer(b"foo/1, h2c, WEBSOCKET", both) == (b"foo/1, WEBSOCKET", both)


@pytest.mark.parametrize(
    ("answer", "accepted"),
    [
        ([b"websocket"], True),
        ([b"WebSocket"], True),
        ([b"websocket/13"], True),
        ([b"h2c"], False),
        ([b"websocket, h2c"], False),
        ([b"websocket", b"h2c"], False),
        ([b"foo"], False),
        ([], False),
        ([b""], False),
        ([b"websocket extra"], False),
    ],
)
def test_a_101_must_name_only_offered_protocols(answer: list[bytes], accepted: bool) -> None:
    assert upgrade_accepted(answer, WEBSOCKET) is accepted


# -- look-alike field names -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        b"transfer_encoding",
        b"content_length",
        b"host_",
        b"_host",
        b"x_forwarded_for",
        b"x-forwarded_for",
        b"x_forwarded-proto",
        b"connection_",
        b"upgrade_",
        b"content__length",
        b"forwarded_",
        b"x_real_ip",
        b"keep_alive",
        b"proxy_connection",
        b"te_",
        b"expect_",
        b"via_",
        b"-x-forwarded-proto",
        b"content-length-",
        b"content$length",
        b"content.length",
        b"transfer~encoding",
        b"contentlength",
        b"x-forwarded--for",
    ],
)
def test_lookalikes_of_interpreted_fields(name: bytes) -> None:
    assert is_lookalike(name)
    assert field_kind(name) == LOOKALIKE_FIELD


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        (b"x_custom", UNDERSCORED_FIELD),
        (b"x_request_id", UNDERSCORED_FIELD),
        (b"my_host_name", UNDERSCORED_FIELD),
        (b"content_type", UNDERSCORED_FIELD),
        (b"content-type", PLAIN_FIELD),
        (b"host", PLAIN_FIELD),
        (b"x-forwarded-host", PLAIN_FIELD),
        (b"content-length", PLAIN_FIELD),
        (b"host2", PLAIN_FIELD),
    ],
)
def test_other_names_are_not_lookalikes(name: bytes, kind: int) -> None:
    """The fields themselves are not their look-alikes (lbx handles them by name)."""
    assert not is_lookalike(name)
    assert field_kind(name) == kind


def test_field_kind_cache_stays_bounded() -> None:
    for index in range(3 * request_rules._CACHED_NAMES):
        assert field_kind(b"x_name_%d" % index) == UNDERSCORED_FIELD
    assert len(request_rules._FIELD_KINDS) <= request_rules._CACHED_NAMES


@pytest.mark.parametrize(
    ("path", "ok"),
    [
        (b"/a%20b", True),
        (b"/%2F%2f%7E", True),
        (b"/", True),
        (b"/a%", False),
        (b"/a%2", False),
        (b"/%zz", False),
        (b"/%x-", False),
        (b"/%%41", False),
        (b"/a%00b", False),
    ],
)
def test_path_escapes(path: bytes, ok: bool) -> None:
    assert path_escapes_ok(path) is ok


# -- request-line protocol --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("region", "target", "http"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"/", True),
        (b"GET / RTSP/1.0\r\nHost: x\r\n\r\n", b"/", False),
        (b"OPTIONS * RTSP/1.0\r\n\r\n", b"*", False),
        (b"SOURCE /live ICE/1.0\r\n\r\n", b"/live", False),
        (b"GET /a  RTSP/1.0\r\n\r\n", b"/a", False),
        (b"\r\nGET /a RTSP/2.0\r\n\r\n", b"/a", False),
        # The body of an earlier request holds the text: refused all the same (only a client that
        # wrote it can be refused that way).
        (b"abc /a RTSP/1.0\r\nGET /a HTTP/1.1\r\n\r\n", b"/a", False),
        # Text that is not the target followed by a protocol: fine.
        (b"GET /a HTTP/1.1\r\nUser-Agent: x RTSP/1.0\r\n\r\n", b"/a", True),
        (b"GET /RTSP/1.0 HTTP/1.1\r\n\r\n", b"/RTSP/1.0", True),
        (b"GET /ICE/x HTTP/1.1\r\n\r\n", b"/ICE/x", True),
    ],
)
def test_request_line_is_http(region: bytes, target: bytes, http: bool) -> None:
    assert request_line_is_http(region, target) is http


def test_request_line_check_is_bounded_by_candidates() -> None:
    """A read full of ``RTSP/`` costs a few searches and is refused: never a scan per candidate
    over the whole read."""
    region = b"POST /up HTTP/1.1\r\n\r\n" + b" RTSP/" * 10_000
    assert request_line_is_http(region, b"/nowhere") is False


# -- normalised path --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/admin",
        "/%61dmin",
        "/%61%64%6D%69%6E",
        "//admin",
        "///admin",
        "/./admin",
        "/x/../admin",
        "/x/y/../../admin",
        "/../admin",
        "/%2E%2E/admin",
        "/%2e/admin",
        "/x/%2E%2E/admin",
        "/x%2F..%2Fadmin",
        "/x/..//admin",
        "/x//../admin",
        "/admin;jsessionid=1",
        "/x/..;/admin",
        "/x/..;a=b/admin;c",
        "/;x/admin",
        "/x\\..\\admin",
        "/x%5c..%5Cadmin",
    ],
)
def test_every_spelling_of_admin_normalises_to_admin(path: str) -> None:
    assert normalize_path(path) == "/admin"


@pytest.mark.parametrize(
    ("path", "normal"),
    [
        ("/admin%2Fkeys", "/admin/keys"),
        ("/admin%2fkeys", "/admin/keys"),
        ("/a%20b", "/a%20b"),
        ("/a%3fb", "/a%3Fb"),
        ("/a%5cb", "/a/b"),
        ("/a;b/c;d", "/a/c"),
        ("/a%3Bb", "/a%3Bb"),  # an escaped ; is data
        ("/%", "/%"),
        ("/%G1", "/%G1"),
        ("/a%2", "/a%2"),
        ("/%7E%7euser", "/~~user"),
        ("/a/b/", "/a/b/"),
        ("/a/b/.", "/a/b/"),
        ("/a/b/..", "/a/"),
        ("/..", "/"),
        ("/", "/"),
        ("/a.b/c..d/...", "/a.b/c..d/..."),
        ("/Admin", "/Admin"),
        ("*", "*"),
        ("/%25%32%66", "/%252f"),
    ],
)
def test_normalize_path(path: str, normal: str) -> None:
    assert normalize_path(path) == normal


def test_remove_dot_segments_examples_of_rfc3986() -> None:
    """RFC 3986 5.2.4's own examples (on absolute paths)."""
    assert remove_dot_segments("/a/b/c/./../../g") == "/a/g"
    assert remove_dot_segments("/mid/content=5/../6") == "/mid/6"


def test_normalized_path_is_computed_once_per_target() -> None:
    head = RequestHeader("GET", "/x/../admin?q=/../y")
    first = head.normalized_path
    assert first == "/admin"
    assert head.normalized_path is first
    head.uri = "/%61pi?x"
    assert head.normalized_path == "/api"
    assert head.path == "/%61pi"


# -- whole heads: bytes in, decisions out -------------------------------------------------------


class _Head:
    """What httptools reads of a head: the protocol's inputs to the rules (what follows the
    head, an upgrade or llhttp's own framing errors, is not the rules' business)."""

    def __init__(self, raw: bytes) -> None:
        self.url = b""
        self.fields: list[tuple[bytes, bytes]] = []
        self.complete = False
        self.parser = httptools.HttpRequestParser(self)
        try:
            self.parser.feed_data(raw)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            assert self.complete

    def on_headers_complete(self) -> None:
        self.complete = True

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields.append((name, value))


def decide(raw: bytes, **service: Any) -> int | tuple[list[tuple[bytes, bytes]], bytes, bytes, int]:
    """The rules' decision on a head: the refusal's status, or (fields passed on, target, host,
    body length)."""
    head = _Head(raw)
    rules = HeadRules(ServiceConfig(name="t", listen=[], upstreams=[], **service))
    scan = scan_fields(rules, head.fields)
    method = head.parser.get_method().decode()
    try:
        return check_head(
            rules,
            method,
            head.parser.get_http_version(),
            head.url,
            head.fields,
            scan,
            request_line_is_http(raw, head.url),
            b"",
        )
    except RequestRefused as refused:
        return refused.status


@pytest.mark.parametrize(
    ("raw", "decision"),
    [
        (b"GET / RTSP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
        (b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", 405),
        (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
        (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
        (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: content-length\r\n\r\n", 400),
        (b"GET /a# HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET * HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET /%zz HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET /a%00 HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\n", 413),
        (b"GET / HTTP/1.1\r\nHost: x\r\nExpect: dance\r\n\r\n", 417),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nX-B: 2\r\nX-C: 3\r\nX-D: 4\r\n\r\n", 431),
        (
            b"GET / HTTP/1.1\r\nHost: x\r\nX_A: 1\r\n\r\n",
            ([(b"Host", b"x"), (b"X_A", b"1")], b"/", b"x", 0),
        ),
        (
            b"GET http://h:8/p?q HTTP/1.1\r\nHost: x\r\nContent_Length: 5\r\n\r\n",
            ([(b"Host", b"h:8")], b"/p?q", b"h:8", 0),
        ),
        (
            b"POST /u HTTP/1.1\r\nHost: x\r\nX-Private: 1\r\nConnection: x-private\r\n"
            b"Content-Length: 3\r\n\r\n",
            ([(b"Host", b"x")], b"/u", b"x", 3),
        ),
        (b"GET / HTTP/1.0\r\n\r\n", ([(b"Host", b"")], b"/", b"", 0)),
    ],
)
def test_head_decisions(raw: bytes, decision: object) -> None:
    assert decide(raw, max_headers=4, max_body_size=10) == decision


def test_underscores_in_headers_modes() -> None:
    raw = b"GET / HTTP/1.1\r\nHost: x\r\nX_Id: 7\r\nTransfer_Encoding: chunked\r\n\r\n"
    assert decide(raw)[0] == [(b"Host", b"x"), (b"X_Id", b"7")]  # type: ignore[index]
    assert decide(raw, underscores_in_headers="drop")[0] == [(b"Host", b"x")]  # type: ignore[index]
    assert decide(raw, underscores_in_headers="reject") == 400
    lookalike = b"GET / HTTP/1.1\r\nHost: x\r\n-X-Forwarded-For: 1.2.3.4\r\n\r\n"
    assert decide(lookalike, underscores_in_headers="reject")[0] == [(b"Host", b"x")]  # type: ignore[index]


def test_scan_sets_apart_what_lbx_writes_itself() -> None:
    """Forwarding fields lbx writes are taken out (kept as received for ``append``); with
    ``x_forwarded_for: off`` the client's own passes untouched."""
    raw = (
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 1.1.1.1\r\nX-Forwarded-Proto: https\r\n\r\n"
    )
    head = _Head(raw)
    scan = scan_fields(HeadRules(ServiceConfig(name="t", listen=[], upstreams=[])), head.fields)
    assert scan[0] == [(b"Host", b"x")]
    assert scan[7] == {b"x-forwarded-for": [b"1.1.1.1"], b"x-forwarded-proto": [b"https"]}
    off = HeadRules(ServiceConfig(name="t", listen=[], upstreams=[], x_forwarded_for="off"))
    assert scan_fields(off, head.fields)[0] == [(b"Host", b"x"), (b"X-Forwarded-For", b"1.1.1.1")]


# -- an HTTP/2 stream's request line -------------------------------------------------------------

H2_BAD_LINES = [
    (b"GET", b"/x HTTP/1.1"),  # a second version in the line
    (b"GET", b"/a b"),
    (b"GET", b"/a\tb"),
    (b"GET", b"/\x7f"),
    (b"GET", b"/\x01"),
    (b"GET", b"/\x80"),  # RFC 3986: escaped, or not at all
    (b"GET", b"http://evil/x"),  # absolute-form would name another host than :authority
    (b"GET", b"a"),
    (b"GET", b""),
    (b"GET", b"*"),  # only OPTIONS may ask for *
    (b"GE T", b"/"),
    (b"G\x01T", b"/"),
    (b"get", b"/"),  # nginx's rule: upper case (HTTP/1.1 refuses it too)
    (b"GET\t", b"/"),
    (b"", b"/"),
]


@pytest.mark.parametrize(("method", "path"), H2_BAD_LINES)
def test_h2_request_line_refuses_what_would_bend_the_http11_line(method, path):
    with pytest.raises(RequestRefused) as refused:
        check_h2_request_line(method, path)
    assert refused.value.status == 400


@pytest.mark.parametrize(
    ("method", "path"),
    [(b"GET", b"/"), (b"POST", b"/a/b?c=d&e=%20"), (b"OPTIONS", b"*"), (b"M-SEARCH", b"/~x")],
)
def test_h2_request_line_passes_sound_lines(method, path):
    check_h2_request_line(method, path)


# -- Host, dot segments and HTTP/2 fields, as nginx judges them ---------------------------------


@pytest.mark.parametrize(
    "host",
    [
        *(b"", b":80", b":", b".", b"..", b"...", b"..:80", b"a..b", b"a..", b"..a", b"a b"),
        *(b"a/b", b"[..]", b"[.]", b"[1.2]", b"[::1::2]"),
    ],
)
def test_host_without_a_name_or_with_an_empty_label_is_invalid(host):
    """nginx's ``ngx_http_validate_host`` refuses these (400); a backend choosing a directory
    by Host must never get ``..``."""
    assert not host_is_valid(host)


@pytest.mark.parametrize(
    "host",
    [
        *(b"x", b"x:80", b"x:", b"example.com.", b".a", b"a.b.c:8080", b"[::1]", b"[::1]:80"),
        *(b"[::ffff:1.2.3.4]", b"[2001:db8::1]:443"),
    ],
)
def test_hosts_nginx_takes_are_valid(host):
    assert host_is_valid(host)


@pytest.mark.parametrize(
    "path",
    [
        b"/..",
        b"/../admin",
        b"/a/../../admin",
        b"/%2e%2e/admin",
        b"/%2E%2e/admin",
        b"/.%2e/admin",
        b"/a%2f..%2f..%2fadmin",
        b"/a/%2E%2E%2F%2e%2e/admin",
        b"//../admin",
        b"/./../admin",
    ],
)
def test_dot_segments_above_root_are_seen_through_escapes(path):
    assert path_climbs_above_root(path)


@pytest.mark.parametrize(
    "path",
    [b"/", b"/a/../b", b"/a/./b", b"/.well-known/x", b"/a/..b", b"/...", b"/%252e%252e", b"/a/.."],
)
def test_paths_that_stay_below_root(path):
    assert not path_climbs_above_root(path)


@pytest.mark.parametrize(
    ("line", "plain"),
    [
        (b"GET / HTTP/1.1\r\n", True),
        (b"GET /a/b.css?x=1 HTTP/1.1\r\n", True),
        (b"GET /../admin HTTP/1.1\r\n", False),
        (b"GET /a/./b HTTP/1.1\r\n", False),
        (b"GET /.well-known/x HTTP/1.1\r\n", False),
        (b"GET /%2e HTTP/1.1\r\n", False),
    ],
)
def test_a_dot_segment_takes_the_request_line_off_the_plain_path(line, plain):
    """The plainest line skips ``check_head``; one with a segment starting with a dot does
    not, so ``..`` is always judged."""
    assert (PLAIN_REQUEST_LINE.match(line + b"Host: x\r\n\r\n") is not None) is plain


@pytest.mark.parametrize(
    ("name", "value"),
    [
        (b"content-length;x", b"50"),
        (b"transfer-encoding,x", b"chunked"),
        (b"host/x", b"evil"),
        (b'x"y', b"1"),
        (b"x@y", b"1"),
        (b"x{y", b"1"),
        (b"x\x80", b"1"),
        (b"x", b"a\x0bb"),
        (b"x", b"a\x01"),
        (b"x", b"a\x7f"),
        (b"x", b"\x1b[31m"),
    ],
)
def test_h2_fields_http11_cannot_carry_are_refused(name, value):
    with pytest.raises(RequestRefused) as refused:
        check_h2_field(name, value)
    assert refused.value.status == 400


@pytest.mark.parametrize(
    ("name", "value"),
    [(b"x-a", b"1"), (b"accept", b"*/*"), (b"x", b"a\tb"), (b"x", b"caf\xc3\xa9"), (b"x", b"")],
)
def test_h2_fields_http11_carries_pass(name, value):
    check_h2_field(name, value)
