"""Sans-IO HTTP/1.1 message heads: the objects hooks edit and their canonical serialisation.

(What lbx accepts of a client's head, and what it passes on, is ``lbx.request_rules``.)

Header names and values are kept as the bytes that arrived (latin-1 is the wire charset), so the
data path never decodes what no hook looks at. The ``str`` methods are for hook authors.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from http import HTTPStatus
from typing import Final

HeaderList = list[tuple[bytes, bytes]]

# Hop-by-hop fields (RFC 9110 7.6.1 plus the de-facto ones): never forwarded in either direction.
# Framing fields are rebuilt by the kernel, so they are dropped here as well.
HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authorization",
        b"proxy-authenticate",
        b"http2-settings",
    }
)


_LOWERED: Final[dict[bytes, bytes]] = {}
_LOWERED_MAX_ENTRIES: Final = 512
_LOWERED_MAX_NAME: Final = 40
_RECENT_SLOTS: Final = 64
# The names lowered last, direct-mapped by length and first and last byte: a name from the wire
# is a new bytes object with no hash yet, and hashing it for the dict costs more than comparing
# it with the one name its slot holds (a client or backend sends the same names every time).
_RECENT: Final[list[tuple[bytes, bytes]]] = [(b"", b"")] * _RECENT_SLOTS


def lower_name(name: bytes) -> bytes:
    """``name.lower()`` for a header name, from a cache of the names seen: every field of every
    head is compared lower-cased, and a cache lookup costs less than the method call."""
    size = len(name)
    if not size:
        return name
    slot = (size + name[0] * 3 + name[size - 1] * 5) % _RECENT_SLOTS
    recent = _RECENT[slot]
    if recent[0] == name:
        return recent[1]
    lowered = _LOWERED.get(name)
    if lowered is None:
        lowered = name.lower()
        if size > _LOWERED_MAX_NAME:
            return lowered
        if len(_LOWERED) < _LOWERED_MAX_ENTRIES:
            _LOWERED[name] = lowered
    _RECENT[slot] = (name, lowered)
    return lowered


def _same_name(field: bytes, key: bytes) -> bool:
    """Whether the field name ``field`` is ``key`` (lower-cased), whatever its case: the lengths
    first, since most names differ in length."""
    return len(field) == len(key) and lower_name(field) == key


_ENCODED: Final[dict[str, bytes]] = {}


def _b(text: str | bytes) -> bytes:
    """``text`` as latin-1 bytes; the names and values hooks pass are mostly the same few
    strings on every request, so short ones are encoded once (a bounded cache)."""
    if isinstance(text, bytes):
        # A subclass is made plain bytes: its own == or hash would reach the name caches.
        return text if type(text) is bytes else bytes(text)
    encoded = _ENCODED.get(text)
    if encoded is None:
        encoded = text.encode("latin-1")
        if len(encoded) <= _LOWERED_MAX_NAME and len(_ENCODED) < _LOWERED_MAX_ENTRIES:
            _ENCODED[text] = encoded
    return encoded


TOKEN: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
"""An RFC 9110 token: a header field name, a method, an Upgrade protocol's name."""

FIELD_VALUE_CONTROL: Final = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
"""A byte a field value (or a reason phrase) may not hold: the controls but HTAB."""

NO_BODY_STATUSES: Final = frozenset({204, 304})
"""Final statuses whose response has no body (RFC 9110 6.4.1), and no Content-Length from lbx
(8.6)."""


def is_final_status(status: object) -> bool:
    """A status a response can have: an int from 200 to 599 (a 1xx is no response, and the
    client would wait for the one after it; a status line takes three digits)."""
    return type(status) is int and 200 <= status <= 599


def field_problem(name: bytes, value: bytes) -> str | None:
    """Why a field cannot be written in an HTTP/1.1 head as llhttp reads one, or None: its
    name must be a token and its value free of control bytes (HTAB aside). A name like
    ``content-length;x`` or ``host/x`` from an HTTP/2 peer or a hook would reach the other side
    unchecked, where a lenient parser may cut it to a second Content-Length or Host."""
    if TOKEN.match(name) is None:
        return "invalid header field name"
    if FIELD_VALUE_CONTROL.search(value) is not None:
        return "a control character in a header field value"
    return None


_TARGET: Final = re.compile(r"[\x21-\x7e]+\Z")
_FRAMING_METHODS: Final = ("HEAD", "CONNECT")  # methods whose response framing differs
_FRAMING_FIELDS: Final = frozenset({b"content-length", b"transfer-encoding"})
_FRAMING_IS_LBXS: Final = (
    "Content-Length and Transfer-Encoding are set by lbx, which frames every body itself (and "
    "re-frames one a response_body_filter may change): a hook neither sets nor removes them"
)


def _framing_of(raw: HeaderList) -> HeaderList:
    return [(lower_name(n), v) for n, v in raw if lower_name(n) in _FRAMING_FIELDS]


def _latin1(text: str, what: str) -> bytes:
    """``text`` as the latin-1 bytes a head carries, or ValueError naming ``what``."""
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError(f"{what} {text!r} is not latin-1") from None


# Names (lower-cased) and short values hooks set before, found sound: most hooks set the same
# few on every request, and a set lookup costs a tenth of the pattern's search.
_CHECKED_NAMES: Final[set[bytes]] = set()
_CHECKED_VALUES: Final[set[bytes]] = set()


def field_from_hook(name: str | bytes, value: str | bytes) -> tuple[bytes, bytes]:
    """A field a hook gives (``insert_header``, ``append_header``, ``respond``) as bytes, or
    ``ValueError``: its bytes go into the head as they are, so a CR or LF in either (from a
    decoded query parameter, say) would add fields or a whole message of the caller's choosing.
    The name must be a token and the value free of control bytes (HTAB aside), as Pingora's
    ``HeaderName`` and ``HeaderValue`` require. ``Content-Length`` and ``Transfer-Encoding``
    are lbx's: it frames every body itself, and a second framing would split the message."""
    field = (_b(name), _b(value))
    key = lower_name(field[0])
    if key not in _CHECKED_NAMES:
        if TOKEN.match(key) is None:
            raise ValueError(f"invalid header field name {field[0]!r}")
        if key in _FRAMING_FIELDS:
            raise ValueError(_FRAMING_IS_LBXS)
        if len(_CHECKED_NAMES) < _LOWERED_MAX_ENTRIES:
            _CHECKED_NAMES.add(key)
    value = field[1]
    if value not in _CHECKED_VALUES:
        if FIELD_VALUE_CONTROL.search(value) is not None:
            raise ValueError(f"a control character in the value of {field[0].decode('latin-1')}")
        if len(value) <= _LOWERED_MAX_NAME and len(_CHECKED_VALUES) < _LOWERED_MAX_ENTRIES:
            _CHECKED_VALUES.add(value)
    return field


class Headers:
    """An ordered, case-insensitive multi-map of header fields."""

    __slots__ = ("raw",)

    def __init__(self, raw: HeaderList | None = None) -> None:
        self.raw: HeaderList = raw if raw is not None else []

    def get(self, name: str | bytes, default: str | None = None) -> str | None:
        """The first value of ``name``, or ``default``."""
        key = lower_name(_b(name))
        for field, value in self.raw:
            if _same_name(field, key):
                return value.decode("latin-1")
        return default

    def get_all(self, name: str | bytes) -> list[str]:
        """Every value of ``name``, in order."""
        key = lower_name(_b(name))
        return [value.decode("latin-1") for field, value in self.raw if _same_name(field, key)]

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, (str, bytes)):
            return False
        key = lower_name(_b(name))
        return any(_same_name(field, key) for field, _ in self.raw)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        for field, value in self.raw:
            yield field.decode("latin-1"), value.decode("latin-1")

    def __len__(self) -> int:
        return len(self.raw)

    def __repr__(self) -> str:
        return f"Headers({list(self)!r})"

    def insert(self, name: str | bytes, value: str | bytes) -> None:
        """Set ``name`` to exactly one ``value``, replacing every existing value.

        A single existing value is replaced where it stands (the usual case: Host); with none
        or several, the field goes last.
        """
        field = field_from_hook(name, value)
        key = lower_name(field[0])
        raw = self.raw
        found = 0
        at = 0
        for index in range(len(raw)):  # one pass, no list built: hooks call this per request
            if _same_name(raw[index][0], key):
                found += 1
                at = index
        if found == 1:
            raw[at] = field
            return
        if found:
            raw[:] = [item for item in raw if not _same_name(item[0], key)]
        raw.append(field)

    def append(self, name: str | bytes, value: str | bytes) -> None:
        """Add a value to ``name``, keeping the existing ones."""
        self.raw.append(field_from_hook(name, value))

    def remove(self, name: str | bytes) -> None:
        """Remove every value of ``name`` (not a framing field: lbx frames the body)."""
        key = lower_name(_b(name))
        if key in _FRAMING_FIELDS:
            raise ValueError(_FRAMING_IS_LBXS)
        self._drop(key)

    def _drop(self, key: bytes) -> None:
        """Remove every field named ``key`` (lower-case), framing fields too: the kernel's."""
        raw = self.raw
        index = len(raw)
        while index:  # backwards: deleting does not move the fields still to check
            index -= 1
            if _same_name(raw[index][0], key):
                del raw[index]


class _HeaderEdits:
    """Pingora's header-editing methods, shared by request and response heads."""

    __slots__ = ("_headers",)

    def __init__(self, headers: Headers | None) -> None:
        self._headers = headers if headers is not None else Headers()

    @property
    def headers(self) -> Headers:
        return self._headers

    @headers.setter
    def headers(self, headers: Headers) -> None:
        # Fields a hook builds go on the wire as the ones it inserts do: checked alike, and the
        # framing fields stay lbx's (a Content-Length of 0 would end the body for the client).
        if not isinstance(headers, Headers):
            raise TypeError(f"headers must be lbx.Headers, not {type(headers).__name__}")
        raw = [(_b(name), _b(value)) for name, value in headers.raw]
        if _framing_of(raw) != _framing_of(self._headers.raw):
            raise ValueError(_FRAMING_IS_LBXS)
        self._headers = Headers(
            [
                field if lower_name(field[0]) in _FRAMING_FIELDS else field_from_hook(*field)
                for field in raw
            ]
        )

    def insert_header(self, name: str | bytes, value: str | bytes) -> None:
        """Set ``name`` to ``value``, replacing existing values (Pingora's ``insert_header``)."""
        self.headers.insert(name, value)

    def append_header(self, name: str | bytes, value: str | bytes) -> None:
        """Add a value for ``name``, keeping the others (Pingora's ``append_header``)."""
        self.headers.append(name, value)

    def remove_header(self, name: str | bytes) -> None:
        """Remove every value of ``name`` (Pingora's ``remove_header``)."""
        self.headers.remove(name)


class RequestHeader(_HeaderEdits):
    """A request head: method, target, version and headers. Pingora's ``RequestHeader``."""

    __slots__ = ("_method", "_normalized", "_uri", "_version")

    def __init__(
        self, method: str, uri: str, headers: Headers | None = None, version: str = "1.1"
    ) -> None:
        super().__init__(headers)
        self._method = method
        self._uri = uri
        self._version = version
        self._normalized: tuple[str, str] | None = None

    # What a hook sets goes into the request line as it is: a space, CR or LF would add a
    # second line (a field, or a whole request) of the caller's choosing. ValueError instead.
    @property
    def method(self) -> str:
        return self._method

    @method.setter
    def method(self, method: str) -> None:
        if TOKEN.match(_latin1(method, "method")) is None:
            raise ValueError(f"invalid method {method!r}: a token")
        old = self._method
        if method != old and (method in _FRAMING_METHODS or old in _FRAMING_METHODS):
            # A HEAD's response has no body whatever its head says: a GET made a HEAD would
            # leave the client reading the next response as this one's body, and the reverse
            # hand it a body it does not expect. A CONNECT's is a tunnel.
            raise ValueError(f"a {old} request cannot become a {method}")
        self._method = method

    @property
    def version(self) -> str:
        return self._version

    @version.setter
    def version(self, version: str) -> None:
        if version != self._version:  # the client's framing follows the version it spoke
            raise ValueError(f"the version is the one the client spoke ({self._version})")

    @property
    def uri(self) -> str:
        return self._uri

    @uri.setter
    def uri(self, uri: str) -> None:
        if _TARGET.match(uri) is None:
            raise ValueError(f"invalid request target {uri!r}: visible ASCII, no spaces")
        self._uri = uri

    @property
    def path(self) -> str:
        """The target without its query string, as the client sent it (what goes upstream)."""
        return self.uri.split("?", 1)[0]

    @property
    def normalized_path(self) -> str:
        """The path as most backends read it: the one to make access decisions on.

        ``normalize_path`` of ``path``, computed once per target (a hook may change ``uri``).
        ``/%61dmin``, ``//admin``, ``/./admin``, ``/x/../admin`` and ``/admin%2F`` all give
        ``/admin`` or ``/admin/``.
        """
        uri = self.uri
        cached = self._normalized
        if cached is None or cached[0] is not uri:
            cached = (uri, normalize_path(uri.split("?", 1)[0]))
            self._normalized = cached
        return cached[1]

    def __repr__(self) -> str:
        counted = f"{len(self.headers)} fields"
        return f"RequestHeader({self.method} {self.uri} HTTP/{self.version}, {counted})"


def replacement_head(old: RequestHeader, new: RequestHeader) -> RequestHeader:
    """The head a hook puts in place of ``old`` (``session.req_header = ...``), checked as if
    each of its parts had been set on ``old`` (ValueError otherwise): a head built whole gets
    the checks of one edited. It keeps the version the client spoke, whatever ``new`` says
    (``RequestHeader`` makes "1.1" unless told)."""
    if not isinstance(new, RequestHeader):
        raise TypeError(f"req_header must be lbx.RequestHeader, not {type(new).__name__}")
    checked = RequestHeader(old.method, old.uri, old.headers, old.version)
    checked.method, checked.uri = new.method, new.uri  # (the version stays the client's)
    checked.headers = new.headers
    return checked


class ResponseHeader(_HeaderEdits):
    """A response head: status, reason and headers. Pingora's ``ResponseHeader``."""

    __slots__ = ("_reason", "_status", "version")

    def __init__(
        self, status: int, headers: Headers | None = None, reason: str | None = None
    ) -> None:
        super().__init__(headers)
        self._status = status
        self._reason = reason
        self.version = "1.1"

    @property
    def status(self) -> int:
        return self._status

    @status.setter
    def status(self, status: int) -> None:
        """A hook's status keeps the response's framing: whether it has a body (204 and 304
        have none, and a client reads the body of a 200 that became a 304 as the next
        response) and whether it is final (a 1xx, a 101 that opens a tunnel)."""
        old = self._status
        if status == old:
            return
        if not is_final_status(status) or old < 200:
            raise ValueError(f"status {old} cannot become {status}: a final one, 200-599")
        if (status in NO_BODY_STATUSES) != (old in NO_BODY_STATUSES):
            raise ValueError(
                f"status {old} cannot become {status}: it changes whether the response has a "
                "body (answer with session.respond instead)"
            )
        self._status = status

    @property
    def reason(self) -> str | None:
        return self._reason

    @reason.setter
    def reason(self, reason: str | None) -> None:
        if reason is not None and FIELD_VALUE_CONTROL.search(_latin1(reason, "reason")):
            raise ValueError(f"a control character in the reason {reason!r}")
        self._reason = reason

    def __repr__(self) -> str:
        return f"ResponseHeader({self.status}, {len(self.headers)} fields)"


def reason_phrase(status: int) -> bytes:
    """The standard reason phrase for ``status`` (empty for unknown codes)."""
    try:
        return HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b""


_STATUS_LINES: Final[dict[int, bytes]] = {}


def status_line(status: int) -> bytes:
    """``HTTP/1.1 <status> <reason>\\r\\n``, cached per code."""
    line = _STATUS_LINES.get(status)
    if line is None:
        line = b"HTTP/1.1 %d %s\r\n" % (status, reason_phrase(status))
        _STATUS_LINES[status] = line
    return line


_FIELD_LINE: Final = [b"", b": ", b"", b"\r\n"]  # a field's name and value fill the empty places


def _head(start: bytes, fields: HeaderList, framing: HeaderList) -> list[bytes]:
    """The pieces of a head: ``start`` (its first line), ``name: value`` lines and the empty line
    that ends it, to join once (no bytes object per field: heads are built on every request).
    The field lines are made at their size from a template and filled in: cheaper than growing
    the list four appends per field."""
    parts = _FIELD_LINE * (len(fields) + len(framing))
    _fill(parts, _fill(parts, 0, fields), framing)
    parts.insert(0, start)
    parts.append(b"\r\n")
    return parts


def _fill(parts: list[bytes], at: int, fields: HeaderList) -> int:
    """Puts ``fields`` in the name and value places from ``at``; returns where the next go."""
    for name, value in fields:
        parts[at] = name
        parts[at + 2] = value
        at += 4
    return at


def serialize_request(head: RequestHeader, framing: HeaderList) -> bytes:
    """The canonical request head sent upstream: one framing header, CRLF line endings."""
    line = b"%s %s HTTP/1.1\r\n" % (head.method.encode("latin-1"), head.uri.encode("latin-1"))
    return b"".join(_head(line, head.headers.raw, framing))


def serialize_response(head: ResponseHeader, framing: HeaderList, body: list[bytes]) -> bytes:
    """The response head sent downstream, then ``body`` (bytes already framed), in one join;
    ``framing`` carries the kernel's framing fields."""
    if head.reason is None:
        start = status_line(head.status)
    else:
        start = b"HTTP/1.1 %d %s\r\n" % (head.status, head.reason.encode("latin-1"))
    parts = _head(start, head.headers.raw, framing)
    parts.extend(body)
    return b"".join(parts)


def error_response(status: int, *, close: bool) -> bytes:
    """Pingora's error answer: empty body, ``Cache-Control: private, no-store``."""
    return b"".join(
        (
            status_line(status),
            b"Server: lbx\r\n"
            if status in NO_BODY_STATUSES
            else b"Server: lbx\r\nContent-Length: 0\r\n",
            b"Cache-Control: private, no-store\r\n",
            b"Connection: close\r\n\r\n" if close else b"\r\n",
        )
    )


def connection_tokens(value: bytes) -> set[bytes]:
    """The lower-cased field names listed in a ``Connection`` header value."""
    return {token.strip().lower() for token in value.split(b",") if token.strip()}


def fields_to_drop(value: bytes) -> frozenset[bytes] | set[bytes]:
    """The fields a response's ``Connection`` value asks to drop beyond the hop-by-hop ones
    (which are always dropped): empty for the usual ``keep-alive`` or ``close``, without
    parsing. Never ``Content-Length``: the response's framing stays with its body."""
    if _usual_connection(value) or _usual_connection(value.lower()):  # (no lower() as most send it)
        return _NOTHING
    return connection_tokens(value) - _NEVER_DROPPED


def _usual_connection(value: bytes) -> bool:
    return value == b"keep-alive" or value == b"close"


_NOTHING: Final[frozenset[bytes]] = frozenset()
_NEVER_DROPPED: Final = HOP_BY_HOP | {b"content-length"}


def encode_chunk(data: bytes) -> bytes:
    """One chunk of a chunked body; callers never pass empty data (that would end the body)."""
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK: Final = b"0\r\n\r\n"


# -- the normalised path ---------------------------------------------------------------------

_UNRESERVED: Final = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
)
_HEX: Final = frozenset("0123456789abcdefABCDEF")


def _decode_path_escapes(path: str) -> str:
    """Decode ``%XX`` escapes of unreserved characters and of ``/``; other escapes stay, with
    upper-case digits (RFC 3986 6.2.2.1-2); a ``%`` not followed by two hex digits stays."""
    pieces = path.split("%")
    out = [pieces[0]]
    for piece in pieces[1:]:
        if len(piece) >= 2 and piece[0] in _HEX and piece[1] in _HEX:
            code = int(piece[:2], 16)
            if code in _UNRESERVED or code == 0x2F:
                out.append(chr(code) + piece[2:])
            else:
                out.append("%" + piece[:2].upper() + piece[2:])
        else:
            out.append("%" + piece)
    return "".join(out)


def remove_dot_segments(path: str) -> str:
    """RFC 3986 5.2.4 for an absolute path: ``/a/./b/../c`` is ``/a/c``, never above ``/``."""
    output: list[str] = []
    segments = path.split("/")
    for index, segment in enumerate(segments[1:], 1):
        last = index == len(segments) - 1
        if segment == "..":
            if output:
                output.pop()
            if last:
                output.append("")
        elif segment == ".":
            if last:
                output.append("")
        else:
            output.append(segment)
    return "/" + "/".join(output)


_PATH_PARAMETERS: Final = re.compile(r";[^/]*")
_SLASHES: Final = re.compile("/{2,}")


def normalize_path(path: str) -> str:
    """The normalised form of a request path, for decisions on it (``normalized_path``).

    1. ``%XX`` escapes of unreserved characters (``A-Z a-z 0-9 - . _ ~``) and of ``/`` (``%2F``)
       are decoded; other escapes are kept with upper-case digits. ``%2F`` is decoded because
       many backends do (nginx's ``$uri``, most frameworks' routers): ``/admin%2Fkeys`` must not
       pass a check on ``/admin/``. lbx refuses a path with ``%00`` (400), as nginx does.
    2. ``\\`` and ``%5C`` are ``/``, as IIS and URL parsers of the WHATWG kind (Node's) read
       them; a segment's parameters (``;`` to the next ``/``) are dropped, as servlet containers
       and Spring do when they map a path (``/admin;x`` is ``/admin`` and ``/x/..;/admin`` is
       ``/admin`` to Tomcat). A check then holds for those backends too, and is only stricter
       for others.
    3. Runs of ``/`` become one (nginx's ``merge_slashes``), before the dots, as nginx does.
    4. Dot segments are removed (RFC 3986 5.2.4); ``..`` never climbs above ``/``.

    Case is kept: paths are case-sensitive (a check for a case-insensitive backend lower-cases).
    ``*`` (``OPTIONS *``) and other paths that do not start with ``/`` are returned unchanged.
    """
    if not path.startswith("/"):
        return path
    if "%" in path:
        path = _decode_path_escapes(path)
    if "\\" in path or "%5C" in path:
        path = path.replace("%5C", "/").replace("\\", "/")
    if ";" in path:
        path = _PATH_PARAMETERS.sub("", path)
    if "//" in path:
        path = _SLASHES.sub("/", path)
    if "." in path:
        path = remove_dot_segments(path)
    return path
