"""The explicit inputs of issue 14's four classes and what lbx must do with each.

tests/test_smuggling.py sends each to lbx; tests/test_nginx_differential.py sends each to nginx
and lbx. A case is either refused (one of ``statuses``, ``Connection: close``, closed, nothing
upstream) or, where ``forwarded`` is set, may instead be forwarded as exactly those bytes (a
regular expression over everything the upstream received, for the one choice left open: the
``Upgrade`` list reduced to websocket, or the upgrade dropped).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

FORWARDING = b"X-Forwarded-For: 127.0.0.1\r\nX-Forwarded-Proto: http\r\n"
H2_SETTINGS = b"HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n"


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    statuses: frozenset[int]
    forwarded: re.Pattern[bytes] | None = None


def refused(name: str, data: bytes, *statuses: int) -> Case:
    return Case(name, data, frozenset(statuses or (400,)))


def exactly(data: bytes) -> re.Pattern[bytes]:
    return re.compile(re.escape(data), re.DOTALL)


# -- 1. h2c inside Upgrade lists -----------------------------------------------------------------
# Refused (400), or forwarded with the upgrade reduced to websocket (Connection: upgrade and
# Upgrade: websocket, the only protocol in the default ``upgrades:``), or with no upgrade at all.


def h2c(name: str, fields: bytes, kept: bytes = b"") -> Case:
    head = b"GET /u HTTP/1.1\r\nHost: x\r\n"
    websocket = rb"(?:Connection: upgrade\r\nUpgrade: (?i:websocket)(?:/13)?\r\n)?"
    pattern = re.escape(head + kept + FORWARDING) + websocket + rb"\r\n"
    return Case(f"h2c-{name}", head + fields + b"\r\n", frozenset({400}), re.compile(pattern))


WS_KEY = b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
H2C = [
    h2c("websocket-h2c", b"Upgrade: websocket, h2c\r\nConnection: upgrade\r\n"),
    h2c(
        "h2c-websocket-settings",
        b"Upgrade: h2c, websocket\r\nConnection: Upgrade, HTTP2-Settings\r\n" + H2_SETTINGS,
    ),
    h2c("upper-case", b"Upgrade: WebSocket, H2C\r\nConnection: Upgrade\r\n"),
    h2c("spaces", b"Upgrade:  websocket ,  h2c \r\nConnection: keep-alive, upgrade\r\n"),
    h2c("no-space-version", b"Upgrade: websocket/13,h2c\r\nConnection: upgrade\r\n"),
    h2c(
        "with-websocket-key",
        WS_KEY + b"Upgrade: websocket, h2c\r\nConnection: Upgrade\r\n",
        kept=WS_KEY,
    ),
    h2c("two-fields", b"Upgrade: websocket\r\nUpgrade: h2c\r\nConnection: upgrade\r\n"),
    h2c("two-fields-h2c-first", b"Upgrade: h2c\r\nUpgrade: websocket\r\nConnection: upgrade\r\n"),
    h2c("h2c-alone", b"Upgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\n" + H2_SETTINGS),
]


# -- 2. look-alikes of framing, routing and forwarding fields -----------------------------------
# Refused (400), or forwarded without the look-alike fields.


def lookalike(name: str, data: bytes, forwarded: bytes) -> Case:
    return Case(f"lookalike-{name}", data, frozenset({400}), exactly(forwarded))


LOOKALIKES = [
    lookalike(
        "transfer_encoding",
        b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer_Encoding: chunked\r\n\r\n"
        b"hello",
        b"POST /a HTTP/1.1\r\nHost: x\r\n" + FORWARDING + b"Content-Length: 5\r\n\r\nhello",
    ),
    lookalike(
        "content_length-before",
        b"POST /b HTTP/1.1\r\nHost: x\r\nContent_Length: 7\r\nContent-Length: 5\r\n\r\nhello",
        b"POST /b HTTP/1.1\r\nHost: x\r\n" + FORWARDING + b"Content-Length: 5\r\n\r\nhello",
    ),
    lookalike(
        "host_-after",
        b"GET /c HTTP/1.1\r\nHost: x\r\nHost_: evil.example\r\n\r\n",
        b"GET /c HTTP/1.1\r\nHost: x\r\n" + FORWARDING + b"\r\n",
    ),
    lookalike(
        "_host-before",
        b"GET /d HTTP/1.1\r\n_Host: evil.example\r\nHost: x\r\n\r\n",
        b"GET /d HTTP/1.1\r\nHost: x\r\n" + FORWARDING + b"\r\n",
    ),
    lookalike(
        "x_forwarded-two",
        b"GET /e HTTP/1.1\r\nHost: x\r\nX_Forwarded_For: 198.51.100.7\r\n"
        b"X-Forwarded_Proto: https\r\n\r\n",
        b"GET /e HTTP/1.1\r\nHost: x\r\n" + FORWARDING + b"\r\n",
    ),
    lookalike(
        "upper-case-framing",
        b"GET /f HTTP/1.1\r\nHost: x\r\nTRANSFER_ENCODING: chunked\r\nConnection_: close\r\n\r\n",
        b"GET /f HTTP/1.1\r\nHost: x\r\n" + FORWARDING + b"\r\n",
    ),
    lookalike(
        "upgrade_-settings",
        b"GET /g HTTP/1.1\r\nHost: x\r\nUpgrade_: h2c\r\n"
        b"HTTP2_Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n",
        b"GET /g HTTP/1.1\r\nHost: x\r\n" + FORWARDING + b"\r\n",
    ),
    lookalike(
        "mixed-with-a-kept-field",
        b"GET /h HTTP/1.1\r\nHost: x\r\nX-Keep: 1\r\n-Forwarded_: for=198.51.100.7\r\n"
        b"x_forwarded_host: evil.example\r\n\r\n",
        b"GET /h HTTP/1.1\r\nHost: x\r\nX-Keep: 1\r\n" + FORWARDING + b"\r\n",
    ),
]


# -- 3. request lines naming another protocol, or another HTTP version ------------------------

PROTOCOLS = [
    refused("protocol-options-rtsp", b"OPTIONS / RTSP/1.0\r\nHost: x\r\nCSeq: 1\r\n\r\n"),
    refused("protocol-get-rtsp", b"GET / RTSP/1.0\r\nHost: x\r\n\r\n"),
    refused("protocol-source-ice", b"SOURCE /mount ICE/1.0\r\nHost: x\r\n\r\n"),
    refused("protocol-describe-rtsp", b"DESCRIBE /s RTSP/1.0\r\nHost: x\r\nCSeq: 2\r\n\r\n"),
    refused("protocol-setup-rtsp", b"SETUP /s RTSP/1.0\r\nHost: x\r\nTransport: RTP/AVP\r\n\r\n"),
    refused("protocol-get-ice", b"GET / ICE/1.0\r\nHost: x\r\n\r\n"),
    # llhttp reads these as HTTP/1.1 (its version), so only the protocol name gives them away.
    refused("protocol-get-rtsp-1.1", b"GET / RTSP/1.1\r\nHost: x\r\n\r\n"),
    refused("protocol-post-rtsp-1.1", b"POST /p RTSP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"),
    refused("protocol-source-ice-1.1", b"SOURCE /m ICE/1.1\r\nHost: x\r\n\r\n"),
    refused("protocol-rtsp-two-spaces", b"GET /a  RTSP/1.1\r\nHost: x\r\n\r\n"),
    refused("protocol-rtsp-after-crlf", b"\r\nGET /a RTSP/1.1\r\nHost: x\r\n\r\n"),
    refused("protocol-lower-case-http", b"GET / http/1.1\r\nHost: x\r\n\r\n"),
    refused("protocol-https", b"GET / HTTPS/1.1\r\nHost: x\r\n\r\n"),
    refused("protocol-http-2.0", b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
    refused("protocol-http-1.2", b"GET / HTTP/1.2\r\nHost: x\r\n\r\n", 505),
    refused("protocol-http-11", b"GET / HTTP/11\r\nHost: x\r\n\r\n", 400, 505),
    refused("protocol-missing", b"GET /\r\nHost: x\r\n\r\n", 400, 505),
]


# -- 4. malformed chunked bodies -------------------------------------------------------------

CHUNKED_HEAD = b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
# What lbx sends upstream for CHUNKED_HEAD and a first chunk ``5\r\nhello\r\n``.
CHUNKED_UPSTREAM = (
    b"POST /c HTTP/1.1\r\nHost: x\r\n" + FORWARDING + b"Transfer-Encoding: chunked\r\n\r\n"
)


def chunked(name: str, body: bytes) -> Case:
    return refused(f"chunked-{name}", CHUNKED_HEAD + body)


CHUNKED = [
    chunked("size-not-hex", b"zz\r\nhello\r\n0\r\n\r\n"),
    chunked("size-0x", b"0x5\r\nhello\r\n0\r\n\r\n"),
    chunked("size-negative", b"-5\r\nhello\r\n0\r\n\r\n"),
    chunked("size-huge", b"fffffffffffffffffff\r\nhello\r\n0\r\n\r\n"),
    chunked("size-leading-space", b" 5\r\nhello\r\n0\r\n\r\n"),
    chunked("size-trailing-space", b"5 \r\nhello\r\n0\r\n\r\n"),
    chunked("extension-control-byte", b"5;a=\x01\r\nhello\r\n0\r\n\r\n"),
    chunked("no-crlf-after-data", b"5\r\nhello0\r\n\r\n"),
    chunked("bare-lf", b"5\nhello\n0\n\n"),
    chunked("bare-cr", b"5\rhello\r0\r\r"),
    chunked("data-longer", b"3\r\nhello\r\n0\r\n\r\n"),
    chunked("data-shorter", b"7\r\nhello\r\n0\r\n\r\n"),
    chunked("smuggled-request", b"5\r\nhelloGET /s HTTP/1.1\r\nHost: x\r\n\r\n0\r\n\r\n"),
    chunked("trailer-control-byte", b"5\r\nhello\r\n0\r\nX-Bad: a\x01b\r\n\r\n"),
    chunked("trailer-space-before-colon", b"5\r\nhello\r\n0\r\nX-Bad : v\r\n\r\n"),
    chunked("trailer-obs-fold", b"5\r\nhello\r\n0\r\nX-Fold: a\r\n b\r\n\r\n"),
]

# The same faults after a first good chunk already went upstream (sent separately).
CHUNKED_LATE = [
    ("size-not-hex", b"zz\r\nabc\r\n0\r\n\r\n"),
    ("no-crlf-after-data", b"3\r\nabcXX0\r\n\r\n"),
    ("size-leading-space", b" 3\r\nabc\r\n0\r\n\r\n"),
    ("bare-lf", b"3\nabc\n0\n\n"),
    ("trailer-control-byte", b"0\r\nX-Bad: a\x01b\r\n\r\n"),
]

CASES = H2C + LOOKALIKES + PROTOCOLS + CHUNKED
EXPLICIT_INPUTS = [(case.name, case.data) for case in CASES]
