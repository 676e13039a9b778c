"""Upstream connections: an asyncio Protocol per connection, TLS contexts, and the connector.

The data path does not await per chunk: the upstream protocol parses with httptools and hands
each event to the request's ``Session`` through plain method calls.
"""

from __future__ import annotations

import asyncio
import enum
import errno
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final, TypeVar, cast

import httptools

from lbx.errors import ErrorSource, ErrorType, ProxyError
from lbx.http import (
    HOP_BY_HOP,
    LAST_CHUNK,
    NO_BODY_STATUSES,
    HeaderList,
    encode_chunk,
    fields_to_drop,
    lower_name,
)
from lbx.peer import Peer, upstream_tls_context
from lbx.request_rules import upgrade_accepted

if TYPE_CHECKING:
    # What a connection reports its response to: the request's Exchange, through plain method
    # calls. Typed as the class itself, not a Protocol, so compiled code calls it directly.
    from lbx.exchange import Exchange
    from lbx.h2pool import H2Pool
    from lbx.pool import ConnectionPool

monotonic: Final = time.monotonic  # compiled: a C static, not a module attribute per call

_P = TypeVar("_P", bound=asyncio.BaseProtocol)

log: Final = logging.getLogger("lbx.upstream")


class _InvalidResponse(Exception):
    """Raised from a parser callback: the response is well-formed HTTP but not acceptable."""


MAX_RESPONSE_HEAD_BYTES: Final = 64 * 1024
"""How many bytes of an unfinished response head lbx holds (Envoy allows 60 KiB, HAProxy's
buffer is 16 KiB, nginx's ``proxy_buffer_size`` 4-8 KiB): past that the answer is a 502."""
MAX_RESPONSE_HEADERS: Final = 256
"""The most header fields in one response head from an upstream (Pingora parses up to 256)."""

# No body follows these statuses whatever the headers say (RFC 9112 6.3).
_FRAMING_NAMES: Final = HOP_BY_HOP | {b"content-length"}
_FRAMING_NAME_LENGTHS: Final = sum(1 << n for n in {len(name) for name in _FRAMING_NAMES})
"""Bit ``n`` set: some hop-by-hop or framing name is ``n`` bytes long. A response field of
another length is passed on without being lower-cased (most are: Server, Date, Content-Type...);
a shift and a mask cost less than a set lookup of a boxed length per field."""


def declared_length(framing: HeaderList) -> int:
    """The Content-Length among a request's framing fields, or -1 (chunked, or no body)."""
    for name, value in framing:
        if name == b"Content-Length":
            return int(value)
    return -1


def still_owed(left: int, size: int, end: bool) -> int:
    """The request body bytes a Content-Length still announces after ``size`` more (``left``
    -1: none announced, and it stays so), or ``ProxyError`` (500) when the body no longer adds
    up. A request_body_filter must keep such a body's length (docs/hooks.md): bytes past it
    would be an HTTP/1.1 upstream's next request and make an HTTP/2 one refuse the stream, and
    a short body leaves the upstream waiting."""
    if left < 0:
        return left
    left -= size
    if left < 0 or (end and left):
        raise ProxyError(
            ErrorType.INTERNAL_ERROR,
            ErrorSource.INTERNAL,
            "a request_body_filter changed the length of a Content-Length body",
            status=500,
        )
    return left


class BodyKind(enum.IntEnum):
    """How a response body is delimited on the upstream connection."""

    NONE = 0
    CONTENT_LENGTH = 1
    CHUNKED = 2
    CLOSE_DELIMITED = 3
    FRAMES = 4
    """Towards an HTTP/2 client: DATA frames until END_STREAM (the stream frames them)."""


class NoParserCallbacks:
    """The callbacks object of a parser that is never fed: what a closed connection's parser
    references instead of the connection (which would make a reference cycle)."""


_DETACHED_RESPONSE_PARSER: Final = httptools.HttpResponseParser(NoParserCallbacks())
"""What a closed connection keeps instead of its parser (which references the connection)."""


class UpstreamConnection(asyncio.Protocol):
    """One HTTP/1.1 connection to a peer, serving one exchange at a time."""

    def __init__(self, peer: Peer, pool: ConnectionPool) -> None:
        self.peer = peer
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.exchange: Exchange | None = None
        self.closed = False
        self.reading_paused = False
        """Reading was paused by ``pause_reading`` (only this connection's methods pause it)."""
        self.idle_since = 0.0
        self.requests_served = 0
        self._parser = httptools.HttpResponseParser(self)
        self._head_only = False
        self._upgrade: frozenset[bytes] | None = None
        """The protocols the request in flight offered to switch to (None: no Upgrade)."""
        self.tunnel = False
        """After a 101 to an Upgrade request: raw bytes both ways until either side closes."""
        self._headers: HeaderList = []
        self._body_kind = BodyKind.NONE
        self._keep_alive = True
        self._got_head = False
        self._head_fields = 0
        """Fields in the final response head (those after it are trailers)."""
        self._head_bytes = 0
        """Bytes of the response head(s) received so far in this exchange; after a chunked
        head, of its trailer fields (each bounded by ``MAX_RESPONSE_HEAD_BYTES``)."""
        self._after_chunk_size = False
        """A chunk's size line was read and none of its data yet: the chunk may be the last,
        whose trailers follow."""
        self._bodies = 0
        """``on_body`` calls so far: whether a read carried body bytes."""
        self._body_left = -1
        """Request body bytes its Content-Length still announces (-1: chunked, or none)."""
        self._trailer_tail = 0
        """Bytes of the reads that held nothing but an unfinished trailer line, which httptools
        keeps until the line ends (``_feed_after_chunk_size``)."""
        self.received = 0
        """Response bytes received in the current exchange."""
        self.counted = False
        """Whether this connection holds one of its peer's slots in the pool's open count."""

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's: not a subclass of it

    def data_received(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is None:
            # An idle pooled connection must stay silent; anything else means it is unusable.
            self.close()
            return
        self.received += len(data)
        if self.tunnel:
            exchange.tunnel_data(data)
            return
        try:
            if self._after_chunk_size:
                self._feed_after_chunk_size(data)
            else:
                self._parser.feed_data(data)
            if not self._got_head:
                # httptools keeps an unfinished head (even one endless line): bound what it holds.
                self._head_bytes += len(data)
                if self._head_bytes > MAX_RESPONSE_HEAD_BYTES:
                    raise _InvalidResponse(
                        f"no end of the response head within {MAX_RESPONSE_HEAD_BYTES} bytes"
                    )
        except httptools.HttpParserUpgrade as exc:
            # The 101 head is parsed (on_headers_complete opened the tunnel): the rest is raw.
            offset = exc.args[0] if exc.args and isinstance(exc.args[0], int) else len(data)
            if self.tunnel and offset < len(data):
                exchange.tunnel_data(data[offset:])
        except (httptools.HttpParserError, _InvalidResponse) as exc:
            cause = exc.__context__ if isinstance(exc, httptools.HttpParserCallbackError) else exc
            message = f"invalid response from {self.peer.addr}: {cause or exc}"
            if self.exchange is None:  # after its response was relayed: only the log can tell
                if isinstance(cause, (httptools.HttpParserError, _InvalidResponse)):
                    log.warning("%s; connection closed", message)
                else:  # a hook run as the response ended (a body filter) raised: not the backend
                    log.error("after the response from %s: %r", self.peer.addr, cause)
            error_type = ErrorType.INVALID_HTTP_HEADER if not self._got_head else ErrorType.H1_ERROR
            self._fail(ProxyError(error_type, ErrorSource.UPSTREAM, message))

    def _feed_after_chunk_size(self, data: bytes) -> None:
        """Feed a read that follows a chunk's size line: chunk data, or the last chunk's
        trailers. ``on_header`` counts each whole trailer field; a read that brought no body
        byte and no whole field was part of one unfinished line (even an endless one), which
        httptools holds: it counts until the line ends."""
        bodies = self._bodies
        fields = len(self._headers)
        self._parser.feed_data(data)
        if self._after_chunk_size and self._bodies == bodies and len(self._headers) == fields:
            self._trailer_tail += len(data)
            if self._head_bytes + self._trailer_tail > MAX_RESPONSE_HEAD_BYTES:
                raise _InvalidResponse(f"trailers longer than {MAX_RESPONSE_HEAD_BYTES} bytes")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.discard(self)
        # The parser holds this protocol's callbacks: dropping it lets reference counting free
        # the connection at once instead of leaving a cycle to the collector.
        self._parser = _DETACHED_RESPONSE_PARSER
        exchange = self.exchange
        if exchange is None:
            return
        if self.tunnel:
            self.exchange = None
            exchange.tunnel_closed()
            return
        if self._got_head and self._body_kind is BodyKind.CLOSE_DELIMITED:
            # A close-delimited body ends when the upstream closes (RFC 9112 6.3 rule 8).
            self.exchange = None
            exchange.upstream_done()
            return
        phase = "reading the response body" if self._got_head else "before the response head"
        etype = ErrorType.CONNECTION_CLOSED if exc is None else ErrorType.READ_ERROR
        error = ProxyError(etype, ErrorSource.UPSTREAM, f"{self.peer.addr} closed {phase}")
        if exc is not None:
            error.__cause__ = exc
        self.exchange = None
        exchange.upstream_failed(error)

    def eof_received(self) -> bool | None:
        if self.tunnel and self.exchange is not None:
            self.exchange.tunnel_eof()  # half-close: the other direction may still flow
            return True
        return None

    def pause_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.upstream_write_paused(True)

    def resume_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.upstream_write_paused(False)

    # -- httptools callbacks ---------------------------------------------------------------
    def _after_the_response(self) -> None:
        """A message, chunk or body byte with no exchange: more after a complete response
        (beyond its Content-Length, after its last chunk, after a HEAD's head). Pooled, the
        connection would hand it to the next request as its response. (Closed by lbx, its
        exchange aborted, the rest of the read is of no concern.)"""
        if not self.closed:
            raise _InvalidResponse("more bytes after the complete response")

    def on_message_begin(self) -> None:
        if self.exchange is None:
            self._after_the_response()
        self._headers = []

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self._headers
        headers.append((name, value))
        if self._got_head:  # a trailer field: bounded as the head's are
            self._trailer_tail = 0  # (the unfinished line it was is whole now)
            self._head_bytes += len(name) + len(value)
            if len(headers) - self._head_fields > MAX_RESPONSE_HEADERS:
                raise _InvalidResponse(f"more than {MAX_RESPONSE_HEADERS} trailer fields")
            if self._head_bytes > MAX_RESPONSE_HEAD_BYTES:
                raise _InvalidResponse(f"trailers longer than {MAX_RESPONSE_HEAD_BYTES} bytes")

    def on_chunk_header(self) -> None:
        if self.exchange is None:  # a chunked body after a HEAD's head
            self._after_the_response()
        self._after_chunk_size = True

    def on_chunk_complete(self) -> None:
        self._after_chunk_size = False

    def on_headers_complete(self) -> None:
        parser = self._parser
        status: int = parser.get_status_code()
        exchange = self.exchange
        if exchange is None:
            return
        raw = self._headers
        if len(raw) > MAX_RESPONSE_HEADERS:  # counted once per head; its bytes are bounded
            raise _InvalidResponse(f"more than {MAX_RESPONSE_HEADERS} response header fields")
        if not 100 <= status < 600:  # llhttp reads any three digits (RFC 9110 15: 100-599)
            raise _InvalidResponse(f"status {status:03d} is not a status code")
        if 100 <= status < 200:
            if status == 101:
                if self._upgrade is None:
                    # lbx forwarded no Upgrade, so a 101 is a broken (or hostile) upstream.
                    raise _InvalidResponse("101 Switching Protocols without an upgrade request")
                answer = [value for name, value in raw if name.lower() == b"upgrade"]
                if not upgrade_accepted(answer, self._upgrade):
                    # A switch to something never offered (h2c) would tunnel the client past
                    # every hook and check: refused, and the connection is closed.
                    raise _InvalidResponse(
                        "101 Switching Protocols to a protocol that was not offered: "
                        + repr(b", ".join(answer).decode("latin-1"))
                    )
                self._open_tunnel(exchange, raw)
                return
            exchange.upstream_informational(status, raw)
            return
        self._keep_alive = bool(parser.should_keep_alive())
        headers: HeaderList = []
        body_kind = BodyKind.CLOSE_DELIMITED
        drop: frozenset[bytes] | set[bytes] | None = None
        for name, value in raw:
            if (_FRAMING_NAME_LENGTHS >> len(name)) & 1:  # (0 past the longest)
                lower = lower_name(name)
                if lower in HOP_BY_HOP:
                    if lower == b"transfer-encoding":
                        # llhttp reads a body whose last coding is not chunked to the close, and
                        # lbx would frame it as chunked: only a lone "chunked" is relayed. (Only
                        # spaces around it: llhttp does not take "chunked<TAB>" for chunked.)
                        chunked = value.strip(b" ").lower() == b"chunked"
                        if body_kind is BodyKind.CHUNKED or not chunked:
                            raise _InvalidResponse(
                                f"Transfer-Encoding {value.decode('latin-1')!r} is not chunked"
                            )
                        body_kind = BodyKind.CHUNKED
                    elif lower == b"connection":
                        tokens = fields_to_drop(value)
                        drop = tokens if drop is None else drop | tokens
                    continue
                if lower == b"content-length" and body_kind is BodyKind.CLOSE_DELIMITED:
                    body_kind = BodyKind.CONTENT_LENGTH
            headers.append((name, value))
        if drop:
            headers = [item for item in headers if item[0].lower() not in drop]
        if self._head_only or status in NO_BODY_STATUSES:
            body_kind = BodyKind.NONE
            if status == 204:
                headers = [item for item in headers if item[0].lower() != b"content-length"]
        self._body_kind = body_kind
        self._got_head = True
        if body_kind is BodyKind.CHUNKED:
            self._head_fields = len(raw)  # the fields after these are trailers
            self._head_bytes = 0  # (which get the head's limits)
        exchange.upstream_head(status, headers, body_kind)
        if self._head_only:
            # httptools cannot be told a HEAD response has no body: finish it here and start a
            # fresh parser for the next exchange on this connection.
            self._parser = httptools.HttpResponseParser(self)
            self._finish()

    def on_body(self, body: bytes) -> None:
        exchange = self.exchange
        if exchange is None:  # body bytes after a HEAD's head
            self._after_the_response()
            return
        self._bodies += 1
        self._after_chunk_size = False
        exchange.upstream_body(body)

    def on_message_complete(self) -> None:
        # After a 101 the "message" is over but the tunnel goes on until a side closes.
        if self._got_head and not self._head_only and not self.tunnel:
            if (
                self._body_kind is BodyKind.CHUNKED
                and len(self._headers) > self._head_fields
                and self.exchange is not None
            ):
                # Trailer fields after a chunked body: passed on where the client side can
                # carry them (HTTP/2); an HTTP/1.1 client gets the body without them.
                self.exchange.response_trailers = [
                    field
                    for field in self._headers[self._head_fields :]
                    if field[0].lower() not in HOP_BY_HOP
                ]
            self._finish()

    def _open_tunnel(self, exchange: Exchange, raw: HeaderList) -> None:
        """101 to our Upgrade request: report the head (with its Upgrade) and turn raw."""
        headers = [
            (name, value)
            for name, value in raw
            if name.lower() == b"upgrade" or name.lower() not in HOP_BY_HOP
        ]
        self.tunnel = True
        self._keep_alive = False
        self._got_head = True
        self._body_kind = BodyKind.NONE
        exchange.upstream_head(101, headers, BodyKind.NONE)

    # -- used by the proxy -----------------------------------------------------------------
    def start(
        self,
        exchange: Exchange,
        head: bytes,
        head_only: bool,
        upgrade: frozenset[bytes] | None = None,
        body_length: int = -1,
    ) -> None:
        """Send a request head; the response is reported to ``exchange``.

        ``upgrade``: the protocols the request offers to switch to; a 101 naming only those
        opens a tunnel. ``body_length``: the head's Content-Length (-1: chunked, or no body).
        """
        self.exchange = exchange
        self._body_left = body_length
        self._head_only = head_only
        self._upgrade = upgrade
        self._got_head = False
        self._head_bytes = 0
        self._after_chunk_size = False
        self._trailer_tail = 0
        self.received = 0
        assert self.transport is not None
        self.transport.write(head)

    def write(self, data: bytes) -> None:
        """Send raw bytes (a tunnel's)."""
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def send_body(self, data: bytes, end: bool, chunked: bool) -> None:
        """Send request body bytes, chunk-framed when ``chunked`` (the last chunk with
        ``end``); an HTTP/2 stream frames them as DATA instead (``lbx.h2upstream``)."""
        transport = self.transport
        if transport is None or self.closed:
            return
        try:
            self._body_left = still_owed(self._body_left, len(data), end)
        except ProxyError as error:
            self._fail(error)  # (the connection is closed: it is owed bytes it will not get)
            return
        if data:
            transport.write(encode_chunk(data) if chunked else data)
        if end and chunked:
            transport.write(LAST_CHUNK)

    @property
    def got_response_bytes(self) -> bool:
        """Whether any byte of the response arrived (decides if a retry is safe)."""
        return self.received > 0

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        # Most responses never pause: a pooled connection's resume is then a flag test.
        if self.reading_paused and self.transport is not None and not self.closed:
            self.reading_paused = False
            self.transport.resume_reading()

    def deadline_passed(self) -> None:
        if self.exchange is not None:  # the request's write_timeout (upstream_write_paused)
            self.exchange.write_timed_out()

    def close(self) -> None:
        """Close without reporting to the exchange (the caller already knows)."""
        self.exchange = None
        if not self.closed:
            self.closed = True
            self.pool.discard(self)
            if self.transport is not None:
                self.transport.close()

    def _finish(self) -> None:
        self._headers.clear()  # passed on as copies: an idle pooled connection keeps none
        exchange = self.exchange
        self.exchange = None
        self.requests_served += 1
        if exchange is not None:
            exchange.upstream_done()

    @property
    def reusable(self) -> bool:
        """The response was complete and the upstream did not ask to close."""
        return self._keep_alive and not self.closed and self.exchange is None and not self.tunnel

    def write_eof(self) -> bool:
        """Half-close towards the upstream; False when the transport cannot (TLS)."""
        transport = self.transport
        if transport is None or self.closed or not transport.can_write_eof():
            return False
        transport.write_eof()
        return True

    def _fail(self, error: ProxyError) -> None:
        exchange = self.exchange
        self.close()
        if exchange is not None:
            exchange.upstream_failed(error)


class Connector:
    """Opens upstream connections (TCP, Unix, TLS with SNI) and owns the pool."""

    def __init__(
        self,
        pool: ConnectionPool,
        *,
        ca_file: str | None,
        connect_timeout: float,
    ) -> None:
        self.pool = pool
        self.ca_file = ca_file
        self.connect_timeout = connect_timeout
        self._ssl_contexts: dict[
            tuple[bool, bool, str | None, tuple[str, ...]], ssl.SSLContext
        ] = {}
        self.h2_pool: H2Pool | None = None
        """The HTTP/2 connections (``lbx.h2pool``), shared by the services of this process."""
        self.dial: Callable[[UpstreamConnection], Awaitable[None]] | None = None
        """Instead of a socket, give each new connection its transport (``connection_made``):
        in-process tests and fuzzing over in-memory transports (``lbx.testing``)."""

    def ssl_context(self, peer: Peer, alpn: tuple[str, ...] = ("http/1.1",)) -> ssl.SSLContext:
        """``upstream_tls_context`` for ``peer`` (its ``ca_file``, else the server's) offering
        ``alpn``, cached."""
        ca_file = peer.ca_file or self.ca_file
        key = (peer.verify_cert, peer.verify_hostname, ca_file, alpn)
        context = self._ssl_contexts.get(key)
        if context is None:
            context = upstream_tls_context(peer.verify_cert, peer.verify_hostname, ca_file, alpn)
            self._ssl_contexts[key] = context
        return context

    def close_all(self) -> None:
        """Close every idle HTTP/1.1 connection and every HTTP/2 connection (shutdown)."""
        self.pool.close_all()
        if self.h2_pool is not None:
            self.h2_pool.close_all()

    async def connect(self, peer: Peer) -> UpstreamConnection:
        """A new connection to ``peer``; connect and TLS errors become ``ProxyError``s."""
        timeout = peer.connection_timeout or self.connect_timeout
        ssl_context = self.ssl_context(peer) if peer.tls else None
        server_hostname = (peer.sni or peer.host) if peer.tls else None
        pool = self.pool
        pool.reserve(peer.pool_key)
        try:
            if self.dial is not None:
                conn = UpstreamConnection(peer, pool)
                await self.dial(conn)
            else:
                conn = await self.open(
                    peer,
                    timeout,
                    ssl_context,
                    server_hostname,
                    lambda: UpstreamConnection(peer, pool),
                )
        except BaseException:
            pool.release(peer.pool_key)
            raise
        conn.counted = True
        if conn.closed:  # closed between connecting and now
            pool.discard(conn)
        return conn

    async def open(
        self,
        peer: Peer,
        timeout: float,
        ssl_context: ssl.SSLContext | None,
        server_hostname: str | None,
        factory: Callable[[], _P],
    ) -> _P:
        """A connection to ``peer`` with the protocol ``factory`` makes (HTTP/1.1 here, HTTP/2
        in ``lbx.h2pool``); connect and TLS errors become ``ProxyError``s."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                if peer.unix_path is not None:
                    _, conn = await loop.create_unix_connection(
                        factory,
                        peer.unix_path,
                        ssl=ssl_context,
                        server_hostname=server_hostname,
                    )
                else:
                    _, conn = await loop.create_connection(
                        factory,
                        peer.host or "",
                        peer.port,
                        ssl=ssl_context,
                        server_hostname=server_hostname,
                    )
        except TimeoutError as exc:
            raise ProxyError(
                ErrorType.CONNECT_TIMEDOUT,
                ErrorSource.UPSTREAM,
                f"connecting to {peer.addr} took longer than {timeout}s",
            ).caused_by(exc) from exc
        except ssl.SSLError as exc:
            raise ProxyError(
                ErrorType.TLS_HANDSHAKE_FAILURE,
                ErrorSource.UPSTREAM,
                f"TLS handshake with {peer.addr} (sni {server_hostname!r}) failed",
            ).caused_by(exc) from exc
        except ConnectionRefusedError as exc:
            raise ProxyError(
                ErrorType.CONNECT_REFUSED, ErrorSource.UPSTREAM, f"{peer.addr} refused"
            ).caused_by(exc) from exc
        except OSError as exc:
            unreachable = exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH)
            raise ProxyError(
                ErrorType.CONNECT_NO_ROUTE if unreachable else ErrorType.CONNECT_ERROR,
                ErrorSource.UPSTREAM,
                f"cannot connect to {peer.addr}: {exc.strerror or exc}",
            ).caused_by(exc) from exc
        return conn
