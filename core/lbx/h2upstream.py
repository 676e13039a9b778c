"""The HTTP/2 client side towards upstreams: one connection carrying many requests at once.

``H2UpstreamConnection`` is an asyncio Protocol driving python-hyper's sans-IO ``h2`` state
machine (client side), as ``lbx.upstream.UpstreamConnection`` drives httptools.
``H2UpstreamStream`` is one request on it, and what that request's ``Exchange`` talks to: the
same calls as an HTTP/1.1 upstream connection (``send_body``, ``pause_reading``, ``close``...),
and the same reports back (``upstream_head``, ``upstream_body``, ``upstream_done``...).

Flow control is the back-pressure: response bytes are acknowledged (WINDOW_UPDATE) only when the
exchange took them without pausing, so a client that stops reading closes the stream's window
and the backend waits; request bytes go out as the backend's windows allow, and past
``OUTPUT_HIGH_WATER`` held the exchange pauses the client. The connections are kept and shared
by ``lbx.h2pool``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING, Any, Final, cast

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    InformationalResponseReceived,
    PingAckReceived,
    RemoteSettingsChanged,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.exceptions import H2Error
from h2.settings import SettingCodes

from lbx.errors import ErrorSource, ErrorType, ProxyError
from lbx.h2frames import send_within_windows
from lbx.http import HOP_BY_HOP, NO_BODY_STATUSES, HeaderList, RequestHeader, field_problem
from lbx.upstream import (
    MAX_RESPONSE_HEADERS,
    BodyKind,
    UpstreamConnection,
    declared_length,
    still_owed,
)

if TYPE_CHECKING:
    from lbx.exchange import Exchange
    from lbx.h2pool import H2Pool
    from lbx.peer import Peer

log: Final = logging.getLogger("lbx.h2upstream")

STREAM_WINDOW: Final = 65535
"""Response bytes a backend may send on a stream before lbx took them (RFC's default)."""
OUTPUT_HIGH_WATER: Final = 64 * 1024
"""Request body bytes a stream holds for a backend that gives no window; past it the client's
request body is paused (as a full socket buffer pauses it for HTTP/1.1)."""
MAX_STREAM_ID: Final = 1 << 30
"""Past this stream id a connection takes no new stream (ids end at 2**31), a new one opens."""
_CONNECTION_SPECIFIC: Final = HOP_BY_HOP | {b"host"}
"""Fields an HTTP/2 request never carries (RFC 9113 8.2.2): ``Host`` becomes ``:authority``."""


class PrefaceRefused(Exception):
    """The backend does not speak HTTP/2: it answered the preface with something else, or
    closed before its SETTINGS (the pool then speaks HTTP/1.1 to it)."""


def request_fields(request: RequestHeader, framing: HeaderList, scheme: bytes) -> HeaderList:
    """An HTTP/1.1-shaped request head in HTTP/2 form (RFC 9113 8.2-8.3): pseudo-fields
    first, ``:authority`` from ``Host`` (then dropped, so the two cannot differ), names
    lower-cased, no connection-specific field, ``te: trailers`` (lbx takes trailers and gRPC
    servers require it), ``content-length`` from the framing when the length is known."""
    authority = b""
    fields: HeaderList = []
    for name, value in request.headers.raw:
        lower = name.lower()
        if lower in _CONNECTION_SPECIFIC:
            if lower == b"host" and not authority:
                authority = value
            continue
        fields.append((lower, value))
    for name, value in framing:
        if name.lower() == b"content-length":
            fields.append((b"content-length", value))
    head: HeaderList = [(b":method", request.method.encode("latin-1")), (b":scheme", scheme)]
    if authority:
        head.append((b":authority", authority))
    head.append((b":path", request.uri.encode("latin-1")))
    head.extend(fields)
    head.append((b"te", b"trailers"))
    return head


def response_fields(raw: Any) -> tuple[int, HeaderList]:
    """The status and fields of a response head from ``h2`` (which checked the RFC's rules),
    each field one an HTTP/1.1 client can be given (``field_problem``)."""
    status = 0
    fields: HeaderList = []
    for name, value in raw:
        if name == b":status":
            status = int(value)
        elif name[:1] != b":" and name not in HOP_BY_HOP:
            problem = field_problem(name, value)
            if problem is not None:
                raise ValueError(f"invalid response head: {problem} ({name!r})")
            fields.append((name, value))
    if not 100 <= status < 600 or len(fields) > MAX_RESPONSE_HEADERS:
        raise ValueError(f"invalid response head (status {status}, {len(fields)} fields)")
    return status, fields


class H2UpstreamConnection(asyncio.Protocol):
    """One HTTP/2 connection to a peer; its streams are ``H2UpstreamStream``s."""

    def __init__(self, peer: Peer, pool: H2Pool) -> None:
        self.peer = peer
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()
        self.h2 = H2Connection(config=_CONFIG)
        self.streams: dict[int, H2UpstreamStream] = {}
        """Streams with a request sent and not yet released."""
        self.taken = 0
        """Streams handed out (sent or about to be): what counts against the stream limit."""
        self.opened = 0
        """Streams ever handed out (0: the connection was never used, so a failure on it is
        not a stale pooled connection's)."""
        self.ready: asyncio.Future[None] = self.loop.create_future()
        """Settled with the server's first SETTINGS, or with ``PrefaceRefused``/an error."""
        self.fallback: UpstreamConnection | None = None
        """TLS's ALPN chose HTTP/1.1: the transport now belongs to this HTTP/1.1 connection."""
        self.closed = False
        self.draining = False
        """GOAWAY received (or sent): no new stream; close once the last one is over."""
        self.writable = True
        self._heard = True
        """A frame arrived since the last keep-alive tick."""
        self._ping_pending = False
        self._timer: asyncio.TimerHandle | None = None
        self._idle_since = self.loop.time()

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        ssl_object = transport.get_extra_info("ssl_object")
        alpn = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        if ssl_object is not None and alpn != "h2" and (alpn is not None or not self.peer_forced):
            # The server chose HTTP/1.1 (or no ALPN while lbx offered both): hand the
            # connection to an HTTP/1.1 protocol before a byte arrives.
            fallback = UpstreamConnection(self.peer, self.pool.connector.pool)
            transport.set_protocol(fallback)
            fallback.connection_made(transport)
            self.fallback = fallback
            self.closed = True
            self.ready.set_result(None)
            return
        h2 = self.h2
        h2.local_settings.update(
            {SettingCodes.ENABLE_PUSH: 0, SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW}
        )
        h2.initiate_connection()
        # Streams paused by slow clients hold their window; the others must still get data.
        window = min(STREAM_WINDOW * self.peer.max_h2_streams, (1 << 31) - 1)
        if window > 65535:
            h2.increment_flow_control_window(window - 65535)
        self.flush()
        self._schedule()

    @property
    def peer_forced(self) -> bool:
        """``http_version: 2``: HTTP/2 even when TLS's ALPN chose nothing."""
        return self.peer.http_version == 2

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self._heard = True
        try:
            events = self.h2.receive_data(data)
        except H2Error as exc:
            if not self.ready.done():
                self.ready.set_exception(PrefaceRefused(str(exc)))
                self.close()
                return
            self._fail_all(f"HTTP/2 protocol error from {self.peer.addr}: {exc}", True)
            return
        for event in events:
            self._event(event)
        self.flush()

    def _event(self, event: Any) -> None:
        if isinstance(event, DataReceived):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.on_data(event.data, event.flow_controlled_length)
            else:  # a stream lbx already let go: nobody wants its bytes
                self._acknowledge(event.stream_id, event.flow_controlled_length)
        elif isinstance(event, ResponseReceived | TrailersReceived | InformationalResponseReceived):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.on_head(event)
        elif isinstance(event, StreamEnded):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.on_end()
        elif isinstance(event, StreamReset):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.on_reset(event.error_code, True)
        elif isinstance(event, WindowUpdated):
            self._flush_streams(event.stream_id)
        elif isinstance(event, RemoteSettingsChanged):
            if not self.ready.done():
                self.ready.set_result(None)
            if SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
                self._flush_streams(0)
        elif isinstance(event, PingAckReceived):
            self._ping_pending = False
        elif isinstance(event, ConnectionTerminated):
            self._goaway(event)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.fallback is not None:
            return  # the transport was handed over; not this protocol's any more
        if not self.ready.done():
            self.ready.set_exception(PrefaceRefused(f"{self.peer.addr} closed: {exc}"))
        self._release()  # first: nothing more is written to a lost transport
        self._fail_all(f"{self.peer.addr} closed the HTTP/2 connection", False)

    def pause_writing(self) -> None:
        self.writable = False
        for stream in list(self.streams.values()):
            stream.update_write_pause()

    def resume_writing(self) -> None:
        self.writable = True
        self._flush_streams(0)

    # -- streams ------------------------------------------------------------------------------
    @property
    def has_room(self) -> bool:
        """Whether a new stream may start here (lbx's and the server's limits, no GOAWAY)."""
        if self.closed or self.draining or self.h2.highest_outbound_stream_id > MAX_STREAM_ID:
            return False
        limit = min(self.peer.max_h2_streams, self.h2.remote_settings.max_concurrent_streams)
        return self.taken < limit

    def take_stream(self) -> H2UpstreamStream:
        """A stream for one request (its id is assigned when the request head is sent)."""
        self.taken += 1
        self.opened += 1
        if self._timer is not None and self.peer.h2_ping_interval <= 0:
            self._timer.cancel()  # the idle timer: busy again
            self._timer = None
        return H2UpstreamStream(self, self.opened > 1)

    def stream_released(self, stream: H2UpstreamStream) -> None:
        self.taken -= 1
        if stream.stream_id:
            self.streams.pop(stream.stream_id, None)
        if self.taken == 0:
            self._idle_since = self.loop.time()
            if self.draining:
                self.close()
            elif self._timer is None:
                self._schedule()

    def _goaway(self, event: ConnectionTerminated) -> None:
        """GOAWAY: streams above its last id were not processed (safe to send again)."""
        self.draining = True
        self.pool.forget(self)
        last = event.last_stream_id if event.last_stream_id is not None else 0
        for stream_id, stream in list(self.streams.items()):
            if event.error_code or stream_id > last:
                stream.on_reset(event.error_code or ErrorCodes.REFUSED_STREAM, stream_id <= last)
        if self.taken == 0:
            self.close()

    def _fail_all(self, reason: str, protocol_error: bool) -> None:
        for stream in list(self.streams.values()):
            stream.fail(
                ProxyError(
                    ErrorType.H2_ERROR if protocol_error else ErrorType.CONNECTION_CLOSED,
                    ErrorSource.UPSTREAM,
                    reason,
                )
            )
        self.close()

    # -- writing ------------------------------------------------------------------------------
    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.closed:
            self.transport.write(data)

    def _flush_streams(self, stream_id: int) -> None:
        if stream_id:
            stream = self.streams.get(stream_id)
            if stream is not None:
                stream.flush()
            return
        for stream in list(self.streams.values()):
            stream.flush()

    def _acknowledge(self, stream_id: int, size: int) -> None:
        try:
            self.h2.acknowledge_received_data(size, stream_id)
        except H2Error:  # the stream closed meanwhile: the connection's window still counts
            if size:
                self.h2.increment_flow_control_window(size)

    def acknowledge(self, stream_id: int, size: int) -> None:
        """Response bytes the client side took: the backend may send as many again."""
        if not self.closed:
            self._acknowledge(stream_id, size)
            self.flush()

    def reset(self, stream_id: int, code: int) -> None:
        if self.closed:
            return
        try:
            self.h2.reset_stream(stream_id, code)
        except H2Error:
            return  # already closed on both sides
        self.flush()

    # -- keep-alive, idle timeout, closing ------------------------------------------------------
    def _schedule(self) -> None:
        """The next keep-alive tick (``h2_ping_interval``), or the idle deadline."""
        interval = self.peer.h2_ping_interval
        if interval <= 0:
            if self.taken:
                return
            interval = self.pool.idle_timeout(self.peer)
        self._timer = self.loop.call_later(interval, self._tick)

    def _tick(self) -> None:
        """PING a connection that was silent for a whole interval; one whose previous PING got
        no answer is dead (its streams fail, the pool opens another). Close it once idle for
        ``idle_timeout``."""
        self._timer = None
        if self.closed:
            return
        now = self.loop.time()
        if self.taken == 0 and now - self._idle_since >= self.pool.idle_timeout(self.peer):
            self.close()
            return
        if self.peer.h2_ping_interval > 0:
            if self._ping_pending and not self._heard:
                log.warning("%s did not answer a PING: connection closed", self.peer.addr)
                self._fail_all(f"{self.peer.addr} stopped answering PING", False)
                return
            if not self._heard:
                self._ping_pending = True
                self.h2.ping(os.urandom(8))
                self.flush()
            self._heard = False
        self._schedule()

    def close(self) -> None:
        """GOAWAY (when the connection works) and close; the streams were told already."""
        if self.closed:
            return
        self.closed = True
        self.draining = True
        self.pool.forget(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        transport = self.transport
        if transport is None:
            return
        if self.ready.done() and self.fallback is None:
            try:
                self.h2.close_connection()
                data = self.h2.data_to_send()
                if data:
                    transport.write(data)
            except H2Error:
                pass  # the state machine is past sending GOAWAY
        transport.close()

    def _release(self) -> None:
        self.closed = True
        self.pool.forget(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class H2UpstreamStream:
    """One request on an ``H2UpstreamConnection``: what its ``Exchange`` calls as its upstream."""

    def __init__(self, conn: H2UpstreamConnection, reused: bool) -> None:
        self.conn = conn
        self.reused = reused
        """The connection served a request before (a failure may be a stale connection's)."""
        self.stream_id = 0
        self.exchange: Exchange | None = None
        self.received = 0
        """Response bytes received (the read timeout watches it)."""
        self.closed = False
        self.complete = False
        """The response ended (END_STREAM)."""
        self.sent_end = False
        self.unprocessed = False
        """The backend said it did not process this stream: sending it again is safe."""
        self._head_only = False
        self._got_head = False
        self._body_left = -1
        """Request body bytes its content-length still announces (-1: none announced)."""
        self._outbox: list[bytes] = []
        self._outbox_size = 0
        self._end_pending = False
        self._write_paused = False
        self._read_paused = False
        self._unacked = 0

    def __repr__(self) -> str:
        return f"<H2UpstreamStream {self.stream_id} to {self.conn.peer.addr}>"

    # -- what the exchange and the phases call (as on an HTTP/1.1 connection) ----------------
    def start_request(
        self,
        exchange: Exchange,
        request: RequestHeader,
        framing: HeaderList,
        head_only: bool,
        end_stream: bool,
    ) -> None:
        """Send the request head (HEADERS, with END_STREAM when there is no body); the
        response is reported to ``exchange``."""
        conn = self.conn
        self.exchange = exchange
        self._head_only = head_only
        self._body_left = declared_length(framing)
        if conn.closed:
            self.fail(
                ProxyError(
                    ErrorType.CONNECTION_CLOSED,
                    ErrorSource.UPSTREAM,
                    f"{conn.peer.addr} closed the HTTP/2 connection",
                )
            )
            return
        scheme = b"https" if conn.peer.tls else b"http"
        try:
            stream_id = conn.h2.get_next_available_stream_id()
            conn.h2.send_headers(
                stream_id, request_fields(request, framing, scheme), end_stream=end_stream
            )
        except H2Error as exc:
            self.closed = True
            conn.stream_released(self)
            exchange.upstream_failed(
                ProxyError(
                    ErrorType.INVALID_HTTP_HEADER,
                    ErrorSource.INTERNAL,
                    f"cannot send the request head as HTTP/2: {exc}",
                    status=502,
                )
            )
            return
        self.stream_id = stream_id
        self.sent_end = end_stream
        conn.streams[stream_id] = self
        conn.flush()

    def send_body(self, data: bytes, end: bool, chunked: bool) -> None:
        """Request body bytes as DATA frames (HTTP/2 needs no chunked framing), END_STREAM
        with ``end``."""
        if self.closed or self.sent_end:
            return
        try:
            self._body_left = still_owed(self._body_left, len(data), end)
        except ProxyError as error:
            self.fail(error)  # (the stream is reset when the attempt ends)
            return
        if data:
            self._outbox.append(data)
            self._outbox_size += len(data)
        if end:
            self._end_pending = True
        self.flush()

    def write(self, data: bytes) -> None:
        """Raw bytes: only a tunnel writes them, and requests that upgrade go over HTTP/1.1."""
        self.send_body(data, False, False)

    def write_eof(self) -> bool:
        return False

    @property
    def got_response_bytes(self) -> bool:
        return self._got_head or self.received > 0

    @property
    def reusable(self) -> bool:
        """The stream is over and its connection takes more (it stays with ``lbx.h2pool``)."""
        return self.complete and not self.conn.closed

    def pause_reading(self) -> None:
        """The client does not take more: response bytes are no longer acknowledged."""
        self._read_paused = True

    def resume_reading(self) -> None:
        self._read_paused = False
        unacked, self._unacked = self._unacked, 0
        if unacked and self.stream_id and not self.closed:
            self.conn.acknowledge(self.stream_id, unacked)

    def deadline_passed(self) -> None:
        if self.exchange is not None:  # the request's write_timeout (upstream_write_paused)
            self.exchange.write_timed_out()

    def close(self) -> None:
        """The exchange is done with this stream: reset it if it is not over (the client went
        away, a timeout, a failure), and give its slot back to the connection."""
        if self.closed:
            return
        self.closed = True
        self.exchange = None
        conn = self.conn
        if self.stream_id and not (self.complete and self.sent_end):
            conn.reset(self.stream_id, ErrorCodes.CANCEL)
        # Bytes taken but never acknowledged still count against the connection's window.
        unacked, self._unacked = self._unacked, 0
        if unacked and not conn.closed:
            conn.h2.increment_flow_control_window(unacked)
            conn.flush()
        self._outbox = []
        conn.stream_released(self)

    # -- sending the request body within the backend's windows ---------------------------------
    def flush(self) -> None:
        conn = self.conn
        if self.closed or not self.stream_id or conn.closed:
            return
        h2 = conn.h2
        sid = self.stream_id
        outbox = self._outbox
        try:
            if conn.writable:  # queueing frames does not write: it stays so meanwhile
                self._outbox_size -= send_within_windows(h2, sid, outbox)[0]
            if not outbox and self._end_pending and not self.sent_end:
                h2.end_stream(sid)
                self.sent_end = True
        except H2Error:
            # The backend closed its side (a complete response that wants no more body).
            self._outbox = []
            self._outbox_size = 0
        conn.flush()
        self.update_write_pause()

    def update_write_pause(self) -> None:
        """Pause the client's request body while the backend takes none (window or socket)."""
        exchange = self.exchange
        if exchange is None:
            return
        paused = self._outbox_size > OUTPUT_HIGH_WATER or (
            not self.conn.writable and self._outbox_size > 0
        )
        if paused != self._write_paused:
            self._write_paused = paused
            exchange.upstream_write_paused(paused)

    # -- what the connection reports -------------------------------------------------------------
    def on_head(
        self, event: ResponseReceived | TrailersReceived | InformationalResponseReceived
    ) -> None:
        exchange = self.exchange
        if exchange is None:
            return
        if isinstance(event, TrailersReceived):
            exchange.response_trailers = [
                (name, value)
                for name, value in event.headers or []
                if name[:1] != b":" and name not in HOP_BY_HOP
            ]
            return
        try:
            status, fields = response_fields(event.headers or [])
        except ValueError as exc:
            self.fail(ProxyError(ErrorType.INVALID_HTTP_HEADER, ErrorSource.UPSTREAM, str(exc)))
            return
        if isinstance(event, InformationalResponseReceived):
            exchange.upstream_informational(status, fields)
            return
        self._got_head = True
        if self._head_only or status in NO_BODY_STATUSES:
            kind = BodyKind.NONE
            if status == 204:  # no length either (RFC 9110 8.6), as from HTTP/1.1 upstreams
                fields = [field for field in fields if field[0] != b"content-length"]
        elif any(name == b"content-length" for name, _ in fields):
            kind = BodyKind.CONTENT_LENGTH
        elif event.stream_ended is not None and not exchange.h2:
            # Ended with its head and no length (a gRPC trailers-only answer, an empty 200):
            # an HTTP/1.1 client is told the length; an HTTP/2 one gets END_STREAM.
            fields.append((b"content-length", b"0"))
            kind = BodyKind.CONTENT_LENGTH
        else:
            kind = BodyKind.FRAMES
        exchange.upstream_head(status, fields, kind)

    def on_data(self, data: bytes, flow_controlled: int) -> None:
        exchange = self.exchange
        self.received += len(data)
        if exchange is None or self.closed:
            self.conn.acknowledge(self.stream_id, flow_controlled)
            return
        if data and not self._head_only:
            exchange.upstream_body(data)  # may pause reading (a slow client)
        if self._read_paused:
            self._unacked += flow_controlled
        else:
            self.conn._acknowledge(self.stream_id, flow_controlled)

    def on_end(self) -> None:
        self.complete = True
        exchange = self.exchange
        if exchange is not None:
            exchange.upstream_done()

    def on_reset(self, code: int, processed: bool) -> None:
        """RST_STREAM (or GOAWAY) from the backend. A stream it did not process (REFUSED_STREAM,
        above a GOAWAY's last id) fails before any response byte, so it may be retried."""
        name = ErrorCodes(code).name if code in ErrorCodes._value2member_map_ else str(code)
        self.unprocessed = not processed or (
            code == ErrorCodes.REFUSED_STREAM and not self.got_response_bytes
        )
        self.fail(
            ProxyError(
                ErrorType.H2_ERROR,
                ErrorSource.UPSTREAM,
                f"{self.conn.peer.addr} reset the stream ({name})"
                + ("" if processed else ", not processed"),
            )
        )

    def fail(self, error: ProxyError) -> None:
        exchange = self.exchange
        self.complete = False
        if self.stream_id:
            self.conn.streams.pop(self.stream_id, None)
        if exchange is not None:
            exchange.upstream_failed(error)


_CONFIG: Final = H2Configuration(client_side=True, header_encoding=None)
