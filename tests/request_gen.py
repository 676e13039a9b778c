"""Request generators for the HTTP property tests (hypothesis) and the strict reference parse.

- ``requests()`` / ``mutated()``: generated requests (methods, targets, versions, framing,
  hop-by-hop and forwarding fields), then often mutated byte-wise (tests/test_http_property.py).
- ``lookalikes()``, ``protocols()``, ``chunked_bodies()``, ``upgrades()``: the classes of input
  that fool proxies (issue 14): field names that differ from a framing, routing or forwarding
  field by ``_`` / ``-``, case, whitespace or another separator; request lines naming another
  protocol (RTSP, ICE...) or an odd HTTP version; malformed chunk framing and trailers; ``h2c``
  inside ``Upgrade`` lists (tests/test_nginx_differential.py).
- ``Reference``: httptools (llhttp, strict) over the client's bytes, what "the client meant".
"""

from __future__ import annotations

import re

import httptools
from hypothesis import strategies as st

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
        self.failed = False  # an error anywhere, also after the first message
        self.heads = 0  # request heads read (pipelined ones included)
        self.version = ""
        self._count = 0
        parser = httptools.HttpRequestParser(self)
        self.parser = parser
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass
        except httptools.HttpParserError:
            self.error = not self.complete
            self.failed = True

    @property
    def chunked(self) -> bool:
        """The first request's head names ``chunked`` (its trailers are in ``headers`` too)."""
        return any(
            n.lower() == b"transfer-encoding" and b"chunked" in v.lower() for n, v in self.headers
        )

    @property
    def body_error(self) -> bool:
        """The first request's head was read, and its body is malformed."""
        return self.error and self.heads >= 1

    def on_message_begin(self) -> None:
        self._count += 1

    def on_url(self, url: bytes) -> None:
        if self._count == 1:
            self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._count == 1 and not self.complete:
            self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.heads += 1
        if self._count == 1:
            self.method = self.parser.get_method()
            self.version = self.parser.get_http_version()

    def on_body(self, body: bytes) -> None:
        if self._count == 1 and not self.complete:
            self.body += body

    def on_message_complete(self) -> None:
        if self._count == 1:
            self.complete = True


# -- the classes that fool proxies (issue 14) ----------------------------------------------------

# Fields that frame, route or forward a request, with a value a backend would act on.
SENSITIVE: dict[str, list[str]] = {
    "Content-Length": ["0", "5", "{length}", "{longer}"],
    "Transfer-Encoding": ["chunked", "Chunked", "gzip, chunked"],
    "Host": ["evil.example", "127.0.0.1:1"],
    "Connection": ["close", "upgrade", "keep-alive, Upgrade", "Upgrade, HTTP2-Settings", "Host"],
    "Upgrade": ["h2c", "websocket", "websocket, h2c"],
    "Keep-Alive": ["timeout=5"],
    "Proxy-Connection": ["keep-alive"],
    "TE": ["trailers"],
    "Trailer": ["X-T"],
    "Expect": ["100-continue"],
    "X-Forwarded-For": ["198.51.100.7"],
    "X-Forwarded-Proto": ["https"],
    "X-Forwarded-Host": ["evil.example"],
    "Forwarded": ["for=198.51.100.7;proto=https"],
    "Via": ["1.1 evil"],
    "HTTP2-Settings": ["AAMAAABkAAQCAAAAAAIAAAAA"],
}
# Separators to stand for ``-``: token characters (valid in a field name), then space and tab.
SEPARATORS = [".", "~", "+", "!", "*", "'", "|", "#", "$", "%", "&", "^", "`", " ", "\t"]


@st.composite
def lookalike_name(draw: st.DrawFn, name: str) -> str:
    """``name`` respelled the ways a backend may still read it as ``name``: ``_`` for ``-``
    (every one, or one of several), a leading or trailing ``_``/``-``, another case, another
    separator, whitespace before the colon, or no name at all."""
    kind = draw(
        st.sampled_from(
            ["all_", "all_", "one_", "suffix", "suffix", "prefix", "case", "sep", "space", "empty"]
        )
    )
    dashes = [i for i, c in enumerate(name) if c == "-"]
    if kind == "all_" or (kind == "one_" and not dashes):
        spelled = name.replace("-", "_") if dashes else name + "_"
    elif kind == "one_":
        at = draw(st.sampled_from(dashes))
        spelled = name[:at] + "_" + name[at + 1 :]
    elif kind == "suffix":
        spelled = name.replace("-", draw(st.sampled_from(["-", "_"]))) + draw(
            st.sampled_from(["_", "-", "__"])
        )
    elif kind == "prefix":
        spelled = draw(st.sampled_from(["_", "-", "__"])) + name.replace(
            "-", draw(st.sampled_from(["-", "_"]))
        )
    elif kind == "case":
        spelled = draw(st.sampled_from([name.upper(), name.lower(), name.swapcase()]))
        spelled = spelled.replace("-", draw(st.sampled_from(["-", "_"])))
    elif kind == "sep":
        sep = draw(st.sampled_from(SEPARATORS))
        if dashes:
            spelled = name.replace("-", sep)
        else:
            at = draw(st.integers(1, len(name) - 1))
            spelled = name[:at] + sep + name[at:]
    elif kind == "space":
        spelled = name.replace("-", draw(st.sampled_from(["-", "_"]))) + draw(
            st.sampled_from([" ", "\t", "  "])
        )
    else:
        spelled = ""
    return spelled


@st.composite
def plain_requests(draw: st.DrawFn) -> bytes:
    """A valid request (the base the classes below are built on): HTTP/1.1 with one Host, or
    HTTP/1.0, a few fields, and a body framed by Content-Length or chunked, or none."""
    method = draw(METHODS)
    target = draw(st.one_of(PATH.map(lambda p: "/" + p), st.just("/")))
    version = draw(st.sampled_from(["1.1", "1.1", "1.1", "1.0"]))
    fields = [("Host", "example.com")] if version == "1.1" or draw(st.booleans()) else []
    fields += draw(st.lists(st.tuples(TOKEN, VALUE), max_size=3))
    body = draw(st.binary(max_size=40))
    framing = draw(st.sampled_from(["length", "chunked"] if version == "1.1" else ["length"]))
    if framing == "length" and (body or draw(st.booleans())):
        fields.append(("Content-Length", str(len(body))))
    elif framing == "chunked":
        fields.append(("Transfer-Encoding", "chunked"))
        body = (b"%x\r\n%s\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n"
    head = f"{method} {target} HTTP/{version}\r\n" + "".join(
        f"{n}: {v}\r\n" for n, v in draw(st.permutations(fields))
    )
    return head.encode("latin-1") + b"\r\n" + body


BASES = st.one_of(plain_requests(), plain_requests(), plain_requests(), requests())


def _split_head(data: bytes) -> tuple[list[bytes], bytes]:
    """The head's lines (request line first) and what follows the head."""
    head, _, rest = data.partition(b"\r\n\r\n")
    return head.split(b"\r\n"), rest


@st.composite
def lookalikes(draw: st.DrawFn) -> bytes:
    """A generated request with one to three look-alikes of framing, routing or forwarding
    fields among its fields, alone or next to the real field."""
    lines, rest = _split_head(draw(BASES))
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from(sorted(SENSITIVE)))
        value = (
            draw(st.sampled_from(SENSITIVE[name]))
            .replace("{length}", str(len(rest)))
            .replace("{longer}", str(len(rest) + 7))
        )
        spelled = draw(lookalike_name(name))
        fields = [f"{spelled}: {value}"]
        if draw(st.booleans()):
            real = f"{name}: {value}"
            fields = [real, *fields] if draw(st.booleans()) else [*fields, real]
        for text in fields:
            at = draw(st.integers(1, len(lines)))
            lines.insert(at, text.encode("latin-1"))
    return b"\r\n".join(lines) + b"\r\n\r\n" + rest


# Methods RTSP or ICE also have (llhttp accepts RTSP/1.0 and ICE/1.0 request lines with them).
RTSP_METHODS = ["GET", "OPTIONS", "SOURCE", "DESCRIBE", "SETUP", "PLAY", "ANNOUNCE", "TEARDOWN"]
PROTOCOLS = [
    "HTTP/1.1",
    "HTTP/1.0",
    "http/1.1",
    "Http/1.1",
    "RTSP/1.0",
    "RTSP/2.0",
    "ICE/1.0",
    "HTTPS/1.1",
    "HTTP/2.0",
    "HTTP/2",
    "HTTP/1.2",
    "HTTP/11",
    "HTTP/0.9",
    "HTTP/1.1 ",
]


@st.composite
def protocols(draw: st.DrawFn) -> bytes:
    """A generated request whose request line names another protocol or version (two spaces
    before it, or none at all), often with a method RTSP or ICE also has."""
    lines, rest = _split_head(draw(plain_requests()))
    method, _, target = lines[0].decode("latin-1").partition(" ")
    target = target.rsplit(" ", 1)[0]
    method = draw(st.sampled_from([method, *RTSP_METHODS]))
    protocol = draw(st.sampled_from(PROTOCOLS))
    form = draw(st.sampled_from(["one", "one", "one", "two", "missing"]))
    if form == "missing":
        line = f"{method} {target}"
    else:
        line = f"{method} {target}{'  ' if form == 'two' else ' '}{protocol}"
    lines[0] = line.encode("latin-1")
    return b"\r\n".join(lines) + b"\r\n\r\n" + rest


SIZE_FAULTS = [
    "nonhex",
    "0x",
    "negative",
    "huge",
    "lead_space",
    "trail_space",
    "tab",
    "bad_ext",
    "upper",
    "zeros",
    "good_ext",
]
LINE_FAULTS = ["size_lf", "size_cr", "data_missing", "data_lf", "data_cr", "data_junk"]
LENGTH_FAULTS = ["longer", "shorter", "smuggle"]
END_FAULTS = ["no_final_crlf", "no_last_chunk", "trailers", "lf_end", "zeros_end"]
TRAILERS = [
    "X-T: ok",
    "Content-Length: 5",
    "Content_Length: 5",
    "Transfer-Encoding: chunked",
    "Transfer_Encoding: chunked",
    "Host: evil.example",
    "X-Bad: a\x01b",
    "X-Bad: a\x00b",
    "X Bad: v",
    "X-Bad : v",
    "Bad\x7f: v",
    "X-Fold: a\r\n b",
    ": empty",
]
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"


def _size(size: int, fault: str | None, draw: st.DrawFn) -> bytes:
    if fault == "nonhex":
        return draw(st.sampled_from([b"zz", b"g", b"5g", b"x"]))
    if fault == "0x":
        return b"0x%x" % size
    if fault == "negative":
        return b"-%x" % size
    if fault == "huge":
        return draw(st.sampled_from([b"f" * 17, b"1" + b"0" * 16, b"ffffffffffffffff"]))
    if fault == "lead_space":
        return b" %x" % size
    if fault == "trail_space":
        return b"%x " % size
    if fault == "tab":
        return b"%x\t" % size
    if fault == "bad_ext":
        ext = draw(st.sampled_from([b"a=\x00", b"\x7f", b" a", b'a="b', b"a=b\x01", b"\x80", b""]))
        return b"%x;%s" % (size, ext)
    if fault == "upper":
        return b"%X" % size
    if fault == "zeros":
        return b"000%x" % size
    if fault == "good_ext":
        return b"%x;name=value" % size
    return b"%x" % size


@st.composite
def chunked_bodies(draw: st.DrawFn) -> bytes:
    """A chunked request whose chunk framing has one or two faults (or none: the control): bad
    chunk sizes, line ends, data longer or shorter than its size, the end of the body, trailers
    (with bad bytes, or looking like framing fields). Sometimes a second request follows."""
    method = draw(st.sampled_from(["POST", "POST", "PUT", "PATCH", "GET"]))
    target = draw(PATH.map(lambda p: "/" + p))
    fields = [("Host", "example.com"), ("Transfer-Encoding", "chunked")]
    fields += draw(st.lists(st.tuples(TOKEN, VALUE), max_size=2))
    head = f"{method} {target} HTTP/1.1\r\n" + "".join(
        f"{n}: {v}\r\n" for n, v in draw(st.permutations(fields))
    )
    pieces = draw(st.lists(st.binary(min_size=1, max_size=20), min_size=1, max_size=3))
    faults = draw(
        st.lists(
            st.sampled_from(SIZE_FAULTS + LINE_FAULTS + LENGTH_FAULTS + END_FAULTS), max_size=2
        )
    )
    where = draw(st.integers(0, len(pieces) - 1))
    body = b""
    for index, piece in enumerate(pieces):
        mine = faults if index == where else []
        size_fault = next((f for f in mine if f in SIZE_FAULTS), None)
        size = _size(len(piece), size_fault, draw)
        data = piece
        if "longer" in mine:
            data = piece + draw(st.binary(min_size=1, max_size=3))
        elif "shorter" in mine:
            data = piece[:-1]
        elif "smuggle" in mine:
            data = piece + b"\r\n0\r\n\r\n" + SMUGGLED
        after_size = b"\n" if "size_lf" in mine else b"\r" if "size_cr" in mine else b"\r\n"
        after_data = (
            b""
            if "data_missing" in mine
            else b"\n"
            if "data_lf" in mine
            else b"\r"
            if "data_cr" in mine
            else b"XX"
            if "data_junk" in mine
            else b"\r\n"
        )
        body += size + after_size + data + after_data
    if "no_last_chunk" not in faults:
        last = b"000" if "zeros_end" in faults else b"0"
        end = b"\n" if "lf_end" in faults else b"\r\n"
        trailers = b""
        if "trailers" in faults:
            chosen = draw(st.lists(st.sampled_from(TRAILERS), min_size=1, max_size=2))
            trailers = b"".join(t.encode("latin-1") + b"\r\n" for t in chosen)
        body += last + end + trailers + (b"" if "no_final_crlf" in faults else end)
    data = head.encode("latin-1") + b"\r\n" + body
    if draw(st.integers(0, 3)) == 0:
        data += b"GET /next HTTP/1.1\r\nHost: example.com\r\n\r\n"
    return data


UPGRADES = [
    "websocket",
    "h2c",
    "websocket, h2c",
    "h2c, websocket",
    "websocket,h2c",
    "H2C",
    " h2c ",
    "WebSocket, H2c",
    "websocket/13, h2c",
    "h2c/1.0",
    "foo, websocket",
    "websocket, foo",
    "HTTP/2.0",
    "TLS/1.2, websocket",
    "websocket h2c",
    "",
]
CONNECTIONS = [
    None,
    "upgrade",
    "Upgrade",
    "Upgrade, HTTP2-Settings",
    "keep-alive, Upgrade",
    "close, upgrade",
    "HTTP2-Settings",
]


@st.composite
def upgrades(draw: st.DrawFn) -> bytes:
    """A request with one or several ``Upgrade`` fields (``h2c`` alone or inside a list, in
    any case and spacing), with or without ``Connection: upgrade`` and ``HTTP2-Settings``."""
    method = draw(st.sampled_from(["GET"] * 6 + ["POST", "HEAD", "OPTIONS"]))
    version = draw(st.sampled_from(["1.1"] * 6 + ["1.0"]))
    fields = [("Host", "example.com")]
    fields += [
        ("Upgrade", v) for v in draw(st.lists(st.sampled_from(UPGRADES), min_size=1, max_size=2))
    ]
    connection = draw(st.sampled_from(CONNECTIONS))
    if connection is not None:
        fields.append(("Connection", connection))
    if draw(st.booleans()):
        fields.append(("HTTP2-Settings", "AAMAAABkAAQCAAAAAAIAAAAA"))
    if draw(st.booleans()):
        fields += [
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Version", "13"),
        ]
    body = b"hello" if method == "POST" and draw(st.booleans()) else b""
    if body:
        fields.append(("Content-Length", str(len(body))))
    head = f"{method} / HTTP/{version}\r\n" + "".join(
        f"{n}: {v}\r\n" for n, v in draw(st.permutations(fields))
    )
    return head.encode("latin-1") + b"\r\n" + body


CATEGORIES = {
    "mutated": mutated,
    "lookalike": lookalikes,
    "protocol": protocols,
    "chunked": chunked_bodies,
    "upgrade": upgrades,
}


_AXIS_FIELDS = (b"upgrade", b"connection", b"http2-settings")


def axis(category: str, data: bytes) -> bytes:
    """The part of an input of ``category`` that its class is about: the request line without
    its target, the look-alike field lines, the chunked body, the Upgrade and Connection lines.
    (Hypothesis varies an example by mutating it, which mostly keeps this part: a test that
    costs real exchanges can skip inputs whose axis it has already tried.)"""
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    if category == "protocol":
        parts = lines[0].split(b" ")
        return b" ".join([parts[0], *parts[2:]])
    if category == "lookalike":
        names = {
            re.sub(rb"[^a-z0-9]", b"", n.lower().encode()): n.lower().encode() for n in SENSITIVE
        }
        alikes = []
        for line in lines[1:]:
            name = line.split(b":", 1)[0]
            squeezed = re.sub(rb"[^a-z0-9]", b"", name.lower())
            if not name or (squeezed in names and name.lower() != names[squeezed]):
                alikes.append(line)
        return b"|".join(sorted(alikes))
    if category == "chunked":
        return rest
    if category == "upgrade":
        chosen = [ln for ln in lines[1:] if ln.split(b":", 1)[0].lower() in _AXIS_FIELDS]
        return b"|".join([lines[0], *chosen])
    return data
