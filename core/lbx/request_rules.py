"""Sans-IO rules for a client's request head: what lbx refuses, drops, rewrites and passes on.

Bytes in (what httptools read of the head: method, target, version, fields), decisions out; no
I/O and no state beyond small caches. The HTTP/1.1 server protocol (``lbx.h1``) applies them
to every request; ``tests/test_request_rules.py`` feeds them bytes directly. docs/http.md lists
the rules and why.
"""

from __future__ import annotations

import ipaddress
import re
from typing import TYPE_CHECKING, Any, Final

import httptools

from lbx.http import (
    HOP_BY_HOP,
    TOKEN,
    HeaderList,
    Headers,
    RequestHeader,
    connection_tokens,
    field_problem,
    lower_name,
)

if TYPE_CHECKING:
    from lbx.config import ServiceConfig

_LOWERED_MAX_NAME: Final = 40
_CACHED_NAMES: Final = 512


class RequestRefused(Exception):
    """The head breaks a rule: lbx answers ``status`` and closes the connection."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason


INTERPRETED_FIELDS: Final = frozenset(
    {
        *HOP_BY_HOP,
        b"content-length",
        b"host",
        b"expect",
        b"via",
        b"forwarded",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-forwarded-port",
        b"x-real-ip",
    }
)
"""Fields that decide framing, routing or forwarding: lbx reads, drops or writes each of them."""

_NOT_ALPHANUMERIC: Final = bytes(
    sorted(set(range(256)) - set(b"abcdefghijklmnopqrstuvwxyz0123456789"))
)
_LOOKALIKE_KEYS: Final = frozenset(
    name.translate(None, _NOT_ALPHANUMERIC) for name in INTERPRETED_FIELDS
)

PLAIN_FIELD: Final = 0
UNDERSCORED_FIELD: Final = 1
LOOKALIKE_FIELD: Final = 2
"""``field_kind`` of a name: forwarded as it is; has ``_`` (``underscores_in_headers``
decides); a look-alike of a field lbx interprets (never forwarded)."""


def is_lookalike(lower: bytes) -> bool:
    """Whether a lower-cased field name reads as a field lbx interprets once its punctuation is
    folded or dropped, without being that field: ``transfer_encoding``, ``content_length``,
    ``host_``, ``-x-forwarded-proto``, ``content$length``.

    CGI/WSGI environs read ``_`` as ``-``, and some servers and frameworks drop or fold other
    punctuation. lbx frames and routes by the real field; a backend reading a look-alike would
    frame or route by another, so look-alikes never go upstream.
    """
    return (
        lower not in INTERPRETED_FIELDS
        and lower.translate(None, _NOT_ALPHANUMERIC) in _LOOKALIKE_KEYS
    )


_FIELD_KINDS: Final[dict[bytes, int]] = {}


def field_kind(lower: bytes) -> int:
    """``PLAIN_FIELD``, ``UNDERSCORED_FIELD`` or ``LOOKALIKE_FIELD`` for a lower-cased name,
    from a bounded cache of the names seen (every field of every request is classified)."""
    kind = _FIELD_KINDS.get(lower)
    if kind is None:
        if is_lookalike(lower):
            kind = LOOKALIKE_FIELD
        else:
            kind = UNDERSCORED_FIELD if b"_" in lower else PLAIN_FIELD
        if len(lower) <= _LOWERED_MAX_NAME and len(_FIELD_KINDS) < _CACHED_NAMES:
            _FIELD_KINDS[lower] = kind
    return kind


UNDERSCORES_MODES: Final = ("pass", "drop", "reject")
"""``underscores_in_headers``: what happens to request fields whose name has ``_``.

``pass`` forwards them, ``drop`` drops them all (nginx's default), ``reject`` answers 400.
Look-alikes of interpreted fields are dropped in every mode (``reject``: 400 if they have
``_``)."""


_BAD_ESCAPE: Final = re.compile(rb"%(?![0-9A-Fa-f]{2})|%00")


def path_escapes_ok(path: bytes) -> bool:
    """Whether every ``%`` of a request path starts an escape (two hex digits) other than
    ``%00``. Backends decode a broken escape (``/admin%``, ``/%zz``) each their own way, and
    ``%00`` ends the path early for C code and file systems: nginx refuses both (400)."""
    return _BAD_ESCAPE.search(path) is None


def _protocols(value: bytes) -> list[tuple[bytes, bytes]] | None:
    """The ``(element, lower-cased name)`` pairs of an ``Upgrade`` list (RFC 9110 7.8:
    ``protocol-name ["/" protocol-version]``, comma-separated); None if one is malformed."""
    protocols = []
    for element in value.split(b","):
        element = element.strip(b" \t")
        if not element:
            continue
        name, slash, version = element.partition(b"/")
        if TOKEN.match(name) is None or (slash and TOKEN.match(version) is None):
            return None
        protocols.append((element, name.lower()))
    return protocols


def upgrade_offer(value: bytes, allowed: frozenset[bytes]) -> tuple[bytes, frozenset[bytes]] | None:
    """What lbx offers upstream for a client's ``Upgrade`` list: ``(value, names)``.

    The list is reduced to the protocols whose lower-cased name is ``allowed`` (the service's
    ``upgrades:``, which never holds ``h2c``), in the client's order and spelling. None when
    nothing is left, or the list is malformed: the request then goes upstream without Upgrade.
    """
    protocols = _protocols(value)
    if not protocols:
        return None
    kept = [(element, name) for element, name in protocols if name in allowed]
    if not kept:
        return None
    return b", ".join([element for element, _ in kept]), frozenset([name for _, name in kept])


def upgrade_accepted(values: list[bytes], offered: frozenset[bytes]) -> bool:
    """Whether a ``101``'s ``Upgrade`` field values switch only to protocols lbx offered.

    A 101 must name what it switches to (RFC 9110 15.2.2); one that names nothing, or anything
    that was not offered (``h2c`` to a ``websocket`` offer), must not open a tunnel.
    """
    names = [name for value in values for _, name in (_protocols(value) or [(b"", b"")])]
    return bool(names) and all(name in offered for name in names)


_OTHER_PROTOCOL: Final = re.compile(rb" +(?:RTSP|ICE)/")
_MAX_PROTOCOL_CANDIDATES: Final = 16


def request_line_is_http(region: bytes, target: bytes) -> bool:
    """Whether the request line of ``target`` in ``region`` names the protocol ``HTTP``.

    llhttp also accepts ``RTSP/x.y`` and ``ICE/x.y`` request lines (it reports them as version
    x.y); RFC 9112 2.3 allows exactly ``HTTP``. ``region`` holds the raw bytes around the
    request line (its read); the line is refused when ``target`` is followed there by spaces
    and another protocol. A copy of that text elsewhere in the read (a body) refuses it too:
    only a client that wrote it can be refused that way. Past a few candidates the answer is
    no, so a read full of them costs no more than a few searches.
    """
    if b"RTSP/" not in region and b"ICE/" not in region:
        return True
    for count, match in enumerate(_OTHER_PROTOCOL.finditer(region)):
        if count >= _MAX_PROTOCOL_CANDIDATES or region.endswith(target, 0, match.start()):
            return False
    return True


NOT_HTTP: Final = "the request line names a protocol other than HTTP"

PLAIN_REQUEST_LINE: Final = re.compile(rb"[^ \r\n]+ (?![^ ]*/\.)/[^%# \r\n]* HTTP/1\.1\r\n")
"""The plainest request line: an origin-form target without ``%``, ``#`` or a segment that
starts with a dot (``/../``: ``check_head`` reads those), HTTP/1.1. (The look-ahead costs
less than a search for ``/.`` after the match.)"""


HTTP_FIRST_LINE: Final = re.compile(rb"[^\n]* HTTP/[0-9]\.[0-9]\r\n")
"""A read's first line is a request line naming HTTP (greedy: the protocol is found from the
line's end, whatever the target's length)."""

_HOST: Final = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*)(?::[0-9]*)?\Z")
"""RFC 9110 4.2.3 / RFC 3986 3.2.2: IP-literal or reg-name, optional port."""


def host_is_valid(host: bytes) -> bool:
    """A Host (or an absolute target's authority) lbx passes on: RFC 9110's grammar (``_HOST``),
    and a name as nginx requires one (``ngx_http_validate_host``): not empty, not only a port
    (``:80``), no empty label (``..``, ``a..b``) and not only the root's dot. A backend that
    picks a site or a directory by Host must not get ``..`` (``%2e%2e`` passes, as in nginx).
    An IP literal must be an IPv6 address."""
    if _HOST.match(host) is None:
        return False
    if host[:1] == b"[":  # an IPv6 literal that is one ("[..]" is not)
        try:
            ipaddress.IPv6Address(host[1 : host.find(b"]")].decode("ascii"))
        except ValueError:
            return False
        return True
    name = host.partition(b":")[0]
    if name.find(b"..") >= 0:
        return False
    return name != b"" and name != b"."


def path_climbs_above_root(path: bytes) -> bool:
    """Whether a request path's dot segments take it above ``/`` as nginx reads them (``%2e``
    is a dot and ``%2f`` a slash, runs of slashes are one): nginx refuses such a path (400), and
    a backend that resolves it on a file system would serve what lies outside its root."""
    if path.find(b"%") < 0:
        if path.find(b"/.") < 0:  # (a dot segment follows a slash)
            return False
    else:
        for escape, plain in _DOT_AND_SLASH_ESCAPES:
            path = path.replace(escape, plain)
    depth = 0
    for segment in path.split(b"/"):
        if segment == b"..":
            if depth == 0:
                return True
            depth -= 1
        elif segment and segment != b".":
            depth += 1
    return False


_DOT_AND_SLASH_ESCAPES: Final = ((b"%2e", b"."), (b"%2E", b"."), (b"%2f", b"/"), (b"%2F", b"/"))


def check_h2_field(name: bytes, value: bytes) -> None:
    """``RequestRefused`` (400) for an HTTP/2 request field ``lbx.http.field_problem`` finds
    fault with: RFC 9113 8.2.1 leaves that check to whoever forwards to HTTP/1.1."""
    problem = field_problem(name, value)
    if problem is not None:
        raise RequestRefused(400, problem)


PROTECTED_FIELDS: Final = frozenset({b"host", b"content-length", b"transfer-encoding"})
"""Fields a client may not ask a proxy to drop through ``Connection`` (RFC 9110 7.6.1)."""

FORWARDING_FIELDS: Final = {
    b"x-forwarded-for": b"X-Forwarded-For",
    b"x-forwarded-proto": b"X-Forwarded-Proto",
    b"forwarded": b"Forwarded",
}
"""The forwarding fields lbx can write (lower-case name: name), in the order it writes them."""


class HeadRules:
    """One service's settings the rules read: limits, ``underscores_in_headers``, ``upgrades``
    and which fields the scan sets apart."""

    __slots__ = (
        "append_forwarding",
        "forwarding",
        "max_body_size",
        "max_header_size",
        "max_headers",
        "special",
        "underscores",
        "upgrades",
    )

    def __init__(self, config: ServiceConfig) -> None:
        self.max_headers = config.max_headers
        self.max_header_size = config.max_header_size
        self.max_body_size = config.max_body_size
        self.underscores = UNDERSCORES_MODES.index(config.underscores_in_headers)
        """0: pass (look-alikes dropped), 1: drop, 2: reject."""
        self.upgrades = frozenset(p.lower().encode("latin-1") for p in config.upgrades) - {b"h2c"}
        modes = {
            b"x-forwarded-for": config.x_forwarded_for,
            b"x-forwarded-proto": config.x_forwarded_proto,
            b"forwarded": config.forwarded,
        }
        self.forwarding = [
            (name, title) for name, title in FORWARDING_FIELDS.items() if modes[name] != "off"
        ]
        """The forwarding fields lbx writes: (lower-case name, name)."""
        self.append_forwarding = {name: mode == "append" for name, mode in modes.items()}
        self.special = frozenset(
            {b"content-length", b"host", b"expect"} | {name for name, _ in self.forwarding}
        )
        """Fields the scan takes out of the list (one set lookup per field)."""


FieldScan = tuple[
    HeaderList,  # the fields that go on (in order)
    int,  # how many Host fields
    bytes,  # the (last) Host value
    bytes | None,  # Transfer-Encoding, its fields joined
    bytes | None,  # Content-Length
    bytes | None,  # Expect
    bytes | None,  # Upgrade, its fields joined
    dict[bytes, list[bytes]] | None,  # forwarding fields lbx writes, as received
    set[bytes] | None,  # the fields Connection names
    bool,  # a field with "_" under underscores_in_headers: reject
]


def scan_fields(rules: HeadRules, fields: HeaderList) -> FieldScan:
    """Sort a head's fields: hop-by-hop ones and look-alikes are dropped, the framing, Host,
    Expect and forwarding fields set apart, the others kept in order (see ``FieldScan``)."""
    headers: HeaderList = []
    content_length = te = expect = upgrade = None
    hosts = 0
    host = b""
    received: dict[bytes, list[bytes]] | None = None
    drop: set[bytes] | None = None
    underscored = False
    special = rules.special
    for item in fields:
        name, value = item
        lower = lower_name(name)
        if lower in HOP_BY_HOP:
            if lower == b"transfer-encoding":
                te = value if te is None else te + b"," + value
            elif lower == b"connection":
                tokens = connection_tokens(value)
                drop = tokens if drop is None else drop | tokens
            elif lower == b"upgrade":
                upgrade = value if upgrade is None else upgrade + b"," + value
            continue
        kind = field_kind(lower)
        if kind != PLAIN_FIELD:
            # A backend may read "_" as "-" (CGI/WSGI): Content_Length must never reach it.
            mode = rules.underscores
            if mode == 2 and lower.find(b"_") >= 0:
                underscored = True
            if mode or kind == LOOKALIKE_FIELD:
                continue
        if lower in special:
            if lower == b"host":
                hosts += 1
                host = value
            elif lower == b"content-length":
                content_length = value
                continue
            elif lower == b"expect":
                expect = value
                continue
            else:  # a forwarding field lbx writes itself
                if received is None:
                    received = {}
                received.setdefault(lower, []).append(value)
                continue
        headers.append(item)
    return headers, hosts, host, te, content_length, expect, upgrade, received, drop, underscored


_H2_METHOD: Final = re.compile(rb"[A-Z_\-]+\Z")
"""An HTTP/2 ``:method`` lbx passes on: upper-case letters, ``_`` and ``-`` (nginx's rule)."""
_ORIGIN_FORM: Final = re.compile(rb"/[\x21-\x7e]*\Z")
"""An HTTP/2 ``:path``: origin-form in visible ASCII (RFC 9113 8.3.1; RFC 3986 escapes the
rest)."""


def check_h2_request_line(method: bytes, path: bytes) -> None:
    """``RequestRefused`` (400) unless an HTTP/2 stream's ``:method`` and ``:path`` make a sound
    HTTP/1.1 request line. HTTP/2 carries them as opaque bytes, so a space, a tab or a control
    byte in either would become part of the line lbx writes upstream (``GET /x HTTP/1.1`` as a
    path: a second version, a smuggled line), and an absolute-form path would name another host
    than ``:authority``. httptools refuses all of these in an HTTP/1.1 request line."""
    if _H2_METHOD.match(method) is None:
        raise RequestRefused(400, "invalid :method")
    if method == b"CONNECT":
        return  # it has no :path (RFC 9113 8.5); check_head answers 405
    if _ORIGIN_FORM.match(path) is None and not (path == b"*" and method == b"OPTIONS"):
        raise RequestRefused(400, "invalid :path (origin-form in visible ASCII only)")


def check_head(
    rules: HeadRules,
    method: str,
    version: str,
    target: bytes,
    fields: HeaderList,
    scan: FieldScan,
    line_is_http: bool,
    known_host: bytes | None,
) -> tuple[HeaderList, bytes, bytes, int]:
    """Every rule, for a head that is not the plainest GET: ``(fields to send, origin-form
    target, host, body length)``, or ``RequestRefused``.

    ``fields`` are all the fields read (for the limits), ``scan`` what ``scan_fields`` made of
    them, ``line_is_http`` whether the request line named HTTP, ``known_host`` a Host this
    connection already sent and passed (not checked again).
    """
    headers, hosts, host, te, content_length, expect, upgrade, _, drop, underscored = scan
    url = target
    if not line_is_http:
        raise RequestRefused(400, NOT_HTTP)
    if method == "CONNECT" or method == "TRACE":
        # TRACE echoes the request, cookies and all, to a page's script (cross-site tracing):
        # nginx answers 405 as well, with no switch to allow it.
        raise RequestRefused(405, f"{method} is not proxied")
    if version != "1.1" and version != "1.0":
        raise RequestRefused(505, f"HTTP/{version} is not supported")
    if te is not None and version == "1.0":
        raise RequestRefused(400, "Transfer-Encoding in an HTTP/1.0 request")
    if te is not None and te.strip().lower() != b"chunked":
        raise RequestRefused(501, f"transfer coding {te.decode('latin-1')!r} is not supported")
    if hosts > 1 or (hosts == 0 and version == "1.1"):
        raise RequestRefused(400, "an HTTP/1.1 request needs exactly one Host field")
    if host != known_host and hosts and not host_is_valid(host):
        raise RequestRefused(400, "invalid Host")
    if drop and drop & PROTECTED_FIELDS:
        raise RequestRefused(400, "Connection names a field that cannot be dropped")
    if underscored:
        raise RequestRefused(400, "a header field name with '_' (underscores_in_headers: reject)")
    if url[:1] != b"/" or url.find(b"#") >= 0:  # find: "in" would try b"#" as an int first
        url, host = other_target(method, url, host)
    path = url.split(b"?", 1)[0]
    if path.find(b"%") >= 0 and not path_escapes_ok(path):
        raise RequestRefused(400, "a broken %-escape or %00 in the request path")
    if path_climbs_above_root(path):
        raise RequestRefused(400, "the request path climbs above /")
    if len(fields) > rules.max_headers:
        raise RequestRefused(431, f"more than {rules.max_headers} header fields")
    if sum(len(n) + len(v) for n, v in fields) > rules.max_header_size:
        raise RequestRefused(431, f"header fields larger than {rules.max_header_size} bytes")
    length = 0
    if content_length is not None:
        length = int(content_length)
        if rules.max_body_size and length > rules.max_body_size:
            raise RequestRefused(413, f"request body of {length} bytes over the limit")
    if upgrade is not None and (te is not None or length) and drop and b"upgrade" in drop:
        # httptools would take the body for upgraded-protocol bytes: refuse, never guess.
        raise RequestRefused(400, "an Upgrade request with a body")
    if expect is not None and expect.lower() != b"100-continue":
        raise RequestRefused(417, "unsupported Expect")
    if drop:
        headers = [item for item in headers if item[0].lower() not in drop]
    if hosts == 0:
        headers.append((b"Host", host))
    elif url is not target:  # absolute-form: Host comes from the target
        headers = [(n, host if n.lower() == b"host" else v) for n, v in headers]
    return headers, url, host, length


def other_target(method: str, url: bytes, host: bytes) -> tuple[bytes, bytes]:
    """A target that is not origin-form: ``*`` for OPTIONS, or absolute-form (rewritten to
    origin-form; its authority becomes Host, RFC 9112 3.2.2). Anything else is refused (400)."""
    if url.find(b"#") >= 0:
        raise RequestRefused(400, "a fragment in the request target")
    if url == b"*":
        if method != "OPTIONS":
            raise RequestRefused(400, "'*' is only for OPTIONS")
        return url, host
    if not url[:8].lower().startswith((b"http://", b"https://")):
        raise RequestRefused(400, "invalid request target")
    try:
        # Any: httptools' stub types the fields as bytes, but absent ones are None.
        parts: Any = httptools.parse_url(url)
    except httptools.HttpParserInvalidURLError:
        raise RequestRefused(400, "invalid absolute-form target") from None
    if parts.userinfo or not parts.host:
        raise RequestRefused(400, "invalid authority in the request target")
    authority = parts.host if parts.host.find(b":") < 0 else b"[" + parts.host + b"]"
    if parts.port is not None:
        authority += b":%d" % parts.port
    if not host_is_valid(authority):
        raise RequestRefused(400, "invalid authority in the request target")
    target = parts.path or b"/"
    if parts.query is not None:
        target += b"?" + parts.query
    return target, authority


def upgrade_request(
    rules: HeadRules, method: str, version: str, has_body: bool, scan: FieldScan
) -> tuple[bytes, frozenset[bytes]] | None:
    """The ``Upgrade`` value lbx passes on and its protocol names, or None (no switch).

    Only a bodyless HTTP/1.1 GET with ``Connection: upgrade`` may switch (RFC 9110 7.8, RFC
    6455). The client's list is reduced to the service's ``upgrades:`` (``h2c`` never is one):
    ``websocket, h2c`` goes upstream as ``websocket``.
    """
    upgrade, drop = scan[6], scan[8]
    if upgrade is None or drop is None or b"upgrade" not in drop:
        return None
    if method != "GET" or version != "1.1" or has_body:
        return None
    return upgrade_offer(upgrade, rules.upgrades)


Forwarding = tuple[tuple[bytes, bytes, bytes], ...]
"""The forwarding fields a client's requests get: ``(lower-case name, name, value)`` each."""


def forwarding_values(rules: HeadRules, client_ip: str, scheme: bytes) -> Forwarding:
    """What a client connection adds to each forwarding field lbx writes: ``(lower-case name,
    name, value)``; a ``Forwarded`` value is its ``for=...;proto=...`` (the request adds its
    ``host``)."""
    ip = client_ip.encode("latin-1")
    if client_ip == "unix":
        node = b"unknown"
    elif ip.find(b":") >= 0:
        node = b'"[' + ip + b']"'
    else:
        node = ip
    values = {
        b"x-forwarded-for": ip,
        b"x-forwarded-proto": scheme,
        b"forwarded": b"for=" + node + b";proto=" + scheme,
    }
    return tuple([(lower, name, values[lower]) for lower, name in rules.forwarding])


def add_forwarding(
    rules: HeadRules,
    headers: HeaderList,
    forwarding: Forwarding,
    received: dict[bytes, list[bytes]] | None,
    host: bytes,
    trusted: bool,
) -> None:
    """Append the forwarding fields to a request's ``headers``: this connection's values, after
    the received ones (``scan_fields``) in ``append`` mode when the client is trusted."""
    for lower, name, ours in forwarding:
        if lower == b"forwarded":  # the element names the host of this request
            ours += quoted_host(host)
        values = received.get(lower) if received is not None else None
        if values is not None and trusted and rules.append_forwarding[lower]:
            values.append(ours)
            ours = b", ".join(values)
        headers.append((name, ours))


def quoted_host(host: bytes) -> bytes:
    """``;host="..."`` for a Forwarded element (empty without a Host)."""
    if not host:
        return b""
    return b';host="' + host.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def parse_error_status(exc: Exception) -> int:
    """The status for an httptools error: 505 for a version it rejects, else 400."""
    return 505 if "HTTP version" in str(exc) else 400


LOGGED_TARGET_BYTES: Final = 1024
"""How much of a refused request's target the ``logging`` hook gets."""


def refused_head(method: str, target: bytes, fields: HeaderList, version: str) -> RequestHeader:
    """What the ``logging`` hook gets of a refused head: what was read of it (empty strings for
    what was not), its target cut at ``LOGGED_TARGET_BYTES``."""
    logged = target[:LOGGED_TARGET_BYTES].decode("latin-1")
    return RequestHeader(method, logged, Headers(list(fields)), version)
