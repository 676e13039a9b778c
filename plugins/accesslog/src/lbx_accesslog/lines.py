"""The line of one request: the combined format or a JSON object, and how fields are escaped.

A line is built on the request path, once per request, so each format is one f-string or one
``%`` template over values read straight from the session; everything that does not change per
request (the field list, the template, the time stamp within a second) is prepared beforehand.
Lines are always ASCII: the combined format escapes like Apache (``\\xHH`` per byte outside
printable ASCII), JSON like ``json.dumps`` (``\\uXXXX``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from json.encoder import encode_basestring_ascii
from typing import TypeAlias

from lbx import HeaderList, ProxyError, Session

FORMATS = ("combined", "json")
FIELDS = (
    "time",
    "client",
    "service",
    "method",
    "uri",
    "version",
    "host",
    "status",
    "bytes_sent",
    "bytes_read",
    "referer",
    "user_agent",
    "upstream",
    "upstream_time",
    "total_time",
    "tries",
    "retries",
    "error",
)
"""Every field a line can carry; ``fields:`` chooses among them (all by default for JSON)."""

Values: TypeAlias = tuple[
    str,  # time
    str,  # client
    str,  # service
    str,  # method
    str,  # uri
    str,  # version
    str | None,  # host
    int | None,  # status
    int,  # bytes_sent
    int,  # bytes_read
    str | None,  # referer
    str | None,  # user_agent
    str | None,  # upstream
    str | None,  # upstream_time: seconds with 6 decimals, never an exponent
    str,  # total_time
    int,  # tries
    int,  # retries
    str | None,  # error
]
"""The fields of ``FIELDS`` in that order, as ``field_values`` reads them from a session."""

Format: TypeAlias = Callable[[Session, ProxyError | None], str]
"""Builds the line of a finished request (newline included)."""

# The C encoder behind json.dumps for one string: quotes and escapes in one call, ~10x cheaper
# than json.dumps itself.
json_string: Callable[[str], str] = encode_basestring_ascii

_ESCAPES = {byte: f"\\x{byte:02x}" for byte in range(256) if not 0x20 <= byte < 0x7F}
_ESCAPES.update({0x22: '\\"', 0x5C: "\\\\", 0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r"})


def escape(text: str) -> str:
    """``text`` safe inside the quotes of the combined format, as Apache's ``mod_log_config``.

    ``"`` and ``\\`` get a backslash, tab, newline and carriage return their C escapes, and every
    other byte outside printable ASCII is ``\\xHH``. Request heads are decoded as latin-1, so a
    character is a byte of the request; text a hook set beyond latin-1 is escaped as UTF-8.
    """
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return text
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        text = text.encode("utf-8").decode("latin-1")
    return text.translate(_ESCAPES)


CLIENT_CLOSED = 499
"""The combined status of a request that got no response: its client went away first, or the
connection was closed at the end of a stop's grace period (nginx's 499; json says ``null``)."""


def request_line(method: str, uri: str, version: str) -> str:
    """The request line as read: ``GET /x HTTP/1.1``; for a request refused before its line was
    read whole, what was read (``GET /x``), or ``-`` for nothing (nginx's ``$request``)."""
    if not method:
        return "-"
    if not version:
        return f"{method} {uri}"
    return f"{method} {uri} HTTP/{version}"


def request_fields(raw: HeaderList) -> tuple[bytes | None, bytes | None, bytes | None]:
    """The first Host, Referer and User-Agent values, in one pass over the request's fields.

    Only names of the right length are lower-cased: ``Headers.get`` would lower-case every name
    once per field asked for.
    """
    host = referer = agent = None
    for name, value in raw:
        size = len(name)
        if size == 10:
            if agent is None and name.lower() == b"user-agent":
                agent = value
        elif size == 7:
            if referer is None and name.lower() == b"referer":
                referer = value
        elif size == 4 and host is None and name.lower() == b"host":
            host = value
    return host, referer, agent


class Clock:
    """The time stamp of the lines, formatted once per second (``strftime`` costs a line)."""

    __slots__ = ("_pattern", "_second", "_stamp")

    def __init__(self, pattern: str) -> None:
        self._pattern = pattern
        self._second = -1
        self._stamp = ""

    def __call__(self) -> str:
        second = int(time.time())
        if second != self._second:
            self._second = second
            self._stamp = time.strftime(self._pattern, time.localtime(second))
        return self._stamp


def field_values(session: Session, error: ProxyError | None, stamp: str) -> Values:
    """Every field of ``FIELDS`` for this request."""
    head = session.req_header
    host, referer, agent = request_fields(head.headers.raw)
    peer = session.peer
    start = session.start_time
    head_time = session.head_time
    tries = session.tries
    return (
        stamp,
        session.client_ip,
        session.service.name,
        head.method,
        head.uri,
        head.version,
        None if host is None else host.decode("latin-1"),
        session.response_status,
        session.body_bytes_sent,
        session.body_bytes_read,
        None if referer is None else referer.decode("latin-1"),
        None if agent is None else agent.decode("latin-1"),
        None if peer is None else peer.addr,
        None if head_time is None else f"{head_time - start:.6f}",
        f"{time.monotonic() - start:.6f}",
        tries,
        max(0, tries - 1),
        None if error is None else str(error),
    )


class CombinedFormat:
    """Apache/nginx ``combined``, then the chosen extra fields as ``key=value``."""

    __slots__ = ("_clock", "_extra")

    def __init__(self, extra: list[str]) -> None:
        self._clock = Clock("%d/%b/%Y:%H:%M:%S %z")
        self._extra = [(f"{name}=", FIELDS.index(name)) for name in extra]

    def __call__(self, session: Session, error: ProxyError | None) -> str:
        head = session.req_header
        stamp = self._clock()
        _, referer, agent = request_fields(head.headers.raw)
        line = (
            f"{session.client_ip} - - [{stamp}] "
            f'"{escape(request_line(head.method, head.uri, head.version))}" '
            f"{session.response_status or CLIENT_CLOSED} {session.body_bytes_sent} "
            f'"{escape(referer.decode("latin-1")) if referer else "-"}" '
            f'"{escape(agent.decode("latin-1")) if agent else "-"}"'
        )
        if not self._extra:
            return line + "\n"
        values = field_values(session, error, stamp)
        extra = " ".join([f"{key}{_plain(values[index])}" for key, index in self._extra])
        return f"{line} {extra}\n"


def _plain(value: str | int | None) -> str:
    """An extra field's value: ``-`` for none, quoted when it has a space or a quote or is empty."""
    if value is None:
        return "-"
    text = str(value)
    return f'"{escape(text)}"' if (" " in text or '"' in text or not text) else escape(text)


class JsonFormat:
    """One JSON object per line with the chosen fields, in their order."""

    __slots__ = ("_clock", "_picks", "_template")

    def __init__(self, fields: list[str]) -> None:
        fields = list(dict.fromkeys(fields))  # a key once, as json.dumps of a dict would
        self._clock = Clock("%Y-%m-%dT%H:%M:%S%z")
        self._template = "{" + ",".join(f'"{name}":%s' for name in fields) + "}\n"
        picks = tuple(FIELDS.index(name) for name in fields)
        self._picks = None if picks == tuple(range(len(FIELDS))) else picks

    def __call__(self, session: Session, error: ProxyError | None) -> str:
        (
            stamp,
            client,
            service,
            method,
            uri,
            version,
            host,
            status,
            bytes_sent,
            bytes_read,
            referer,
            agent,
            upstream,
            upstream_time,
            total_time,
            tries,
            retries,
            failure,
        ) = field_values(session, error, self._clock())
        # Each value as JSON; ints go in as they are (%s formats them).
        values = (
            json_string(stamp),
            json_string(client),
            json_string(service),
            json_string(method),
            json_string(uri),
            json_string(version),
            "null" if host is None else json_string(host),
            "null" if status is None else status,
            bytes_sent,
            bytes_read,
            "null" if referer is None else json_string(referer),
            "null" if agent is None else json_string(agent),
            "null" if upstream is None else json_string(upstream),
            "null" if upstream_time is None else upstream_time,
            total_time,
            tries,
            retries,
            "null" if failure is None else json_string(failure),
        )
        picks = self._picks
        return self._template % (values if picks is None else tuple([values[i] for i in picks]))


def line_format(fmt: str, fields: list[str] | None) -> Format:
    """The formatter of ``format:`` with ``fields:`` (None: JSON all, combined no extras)."""
    if fmt == "json":
        return JsonFormat(list(FIELDS) if fields is None else fields)
    return CombinedFormat(fields or [])
