"""The HTTP/2 server side: one client connection carrying many requests at once (streams).

``H2Downstream`` is an asyncio Protocol driving python-hyper's sans-IO ``h2`` state machine, as
``H1Downstream`` drives httptools. Each stream is one request: its head goes through the same
rules as an HTTP/1.1 head (``lbx.request_rules``, after RFC 9113 8.2-8.3: pseudo-headers,
``:authority`` and ``Host``, cookies joined) and becomes an ``Exchange`` whose client side is an
``H2Stream`` (HEADERS, DATA, trailers, flow control both ways), run through the same phases and
hooks in a task of its own. ``lbx.h2frames`` bounds what a client may send before ``h2``
parses it. Selected by ALPN ``h2`` on TLS listeners, by the connection preface on plaintext
listeners with ``h2c: true`` (``select_protocol``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Final, cast

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import ProtocolError
from h2.settings import SettingCodes, Settings
from hyperframe.frame import GoAwayFrame

from lbx.connections import DRAIN_LINGER_SECONDS, LINGER_SECONDS
from lbx.errors import ErrorSource, ErrorType, ProxyError
from lbx.exchange import Exchange, RequestBody
from lbx.h1 import H1Downstream
from lbx.h2frames import MAX_FRAME_SIZE, PREFACE, FrameGuard, send_within_windows
from lbx.h2stream import H2Stream
from lbx.http import HOP_BY_HOP, HeaderList, Headers, RequestHeader
from lbx.request_rules import (
    Forwarding,
    RequestRefused,
    add_forwarding,
    check_h2_field,
    check_h2_request_line,
    check_head,
    refused_head,
    scan_fields,
)

if TYPE_CHECKING:
    from lbx.proxy import ProxyService

log: Final = logging.getLogger("lbx.h2")

STREAM_WINDOW: Final = 65535
"""Request body bytes a client may send on a stream before lbx took them (RFC's default)."""
CONNECTION_WINDOW: Final = 1 << 20
"""Request body bytes a client may send on all its streams before lbx took them."""
MAX_STREAM_ID: Final = (1 << 31) - 1

# What the connection's deadline (one at a time) does when it passes.
_IDLE: Final = 0
_LAST_GOAWAY: Final = 1
_LINGER: Final = 2


class H2Downstream(asyncio.Protocol):
    """One HTTP/2 client connection: streams run concurrently, each through the phases."""

    def __init__(self, service: ProxyService) -> None:
        self.service = service
        self.transport: asyncio.Transport | None = None
        self.loop: asyncio.AbstractEventLoop
        self._deadline_action = _IDLE
        self.client_addr = ""
        self.client_ip = ""
        self.server_addr = ""
        self.lost = False
        self.writable = True
        self.streams: dict[int, H2Stream] = {}
        """Streams with a request running or a response still being sent."""
        self.active = 0
        """Requests whose phases run (a stream reset by the client counts until they end)."""
        self._counted = 0
        """The ``active`` requests ``Connections.streams`` counts (none once the connection is
        lost: a task cancelled before its first step never reports its end)."""
        self.h2 = H2Connection(config=_CONFIG)
        config = service.config
        self._max_streams: int = config.h2_max_concurrent_streams
        self._guard: FrameGuard | None = None
        self._forwarding: Forwarding = ()
        self._trusted = True
        self._in_events = False
        self._write_soon = False
        """A write of what h2 has queued is scheduled for the end of this loop iteration."""
        self._closing = False
        """Graceful shutdown: GOAWAY sent, close once the streams are over."""
        self._refuse_after = MAX_STREAM_ID
        """Streams above this id are refused (the last GOAWAY)."""

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.loop = asyncio.get_running_loop()
        service = self.service
        self.client_addr, origin = service.client_origin(transport)
        self.client_ip = origin.client_ip
        self.server_addr = origin.server_addr
        self._trusted = origin.trusted
        self._forwarding = origin.forwarding
        config = service.config
        self._guard = FrameGuard(
            config.h2_max_control_frames_per_second,
            config.h2_max_empty_frames_per_second,
            config.h2_max_window_updates_per_second,
            service.max_header_size,
            self.loop.time(),
        )
        h2 = self.h2
        h2.local_settings = Settings(
            client=False,
            initial_values={
                SettingCodes.MAX_CONCURRENT_STREAMS: self._max_streams,
                SettingCodes.MAX_HEADER_LIST_SIZE: self._header_list_size(),
                SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                SettingCodes.MAX_FRAME_SIZE: MAX_FRAME_SIZE,
                SettingCodes.ENABLE_PUSH: 0,
            },
        )
        h2.decoder.max_header_list_size = self._header_list_size()
        h2.initiate_connection()
        # The client is told the limit; h2 enforces a larger one once our SETTINGS are
        # acknowledged, so that a stream past the limit is refused alone (RST_STREAM
        # REFUSED_STREAM, RFC 9113 5.1.2) rather than the connection: see ``_request``.
        h2.local_settings[SettingCodes.MAX_CONCURRENT_STREAMS] = 4 * self._max_streams
        h2.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        if not service.admit(self):
            self.goaway(ErrorCodes.REFUSED_STREAM, "too many connections")
            return
        self.write_pending()
        if service.connections.shutting_down:
            self.close_when_idle()
        else:
            self._arm_idle()

    def _header_list_size(self) -> int:
        """SETTINGS_MAX_HEADER_LIST_SIZE: the head limits, with RFC 9113's 32 bytes per field."""
        service = self.service
        return service.max_header_size + 32 * service.max_headers + service.max_request_line

    def data_received(self, data: bytes) -> None:
        if self.lost:
            return
        guard = self._guard
        if guard is not None:
            problem = guard.feed(data, self.loop.time())
            if problem is not None:
                self.goaway(problem[0], problem[1])
                return
        try:
            events = self.h2.receive_data(data)
        except ProtocolError as exc:
            # h2 queued the GOAWAY with the error's code (PROTOCOL_ERROR, FLOW_CONTROL_ERROR,
            # ENHANCE_YOUR_CALM for an HPACK bomb, FRAME_SIZE_ERROR...).
            log.info("HTTP/2 connection error from %s: %s", self.client_addr, exc)
            self._close_now()
            return
        self._in_events = True
        try:
            for event in events:
                self._event(event)
        finally:
            self._in_events = False
        self.write_pending()

    def _event(self, event: Any) -> None:
        if isinstance(event, DataReceived):
            self._data(event)
        elif isinstance(event, RequestReceived):
            self._request(event)
        elif isinstance(event, StreamEnded):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.remote_ended = True
                exchange = stream.exchange
                if exchange is not None and not stream.finished:
                    length = stream.content_length
                    if length >= 0 and exchange.session.body_bytes_read != length:
                        # Ended by trailers short of its content-length (h2 checks DATA that
                        # ends a stream, not trailers): malformed (RFC 9113 8.1.1), and the
                        # upstream would wait for the rest, or read the next request as it.
                        self._refuse_short_body(stream, exchange)
                    else:
                        exchange.request_body_end()
        elif isinstance(event, WindowUpdated):
            if event.stream_id:
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    stream._flush()
            else:
                self._flush_all()
        elif isinstance(event, StreamReset):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.remote_ended = True
                stream.gone()
        elif isinstance(event, RemoteSettingsChanged):
            if SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
                self._flush_all()
        elif isinstance(event, ConnectionTerminated):
            log.debug("GOAWAY from %s: %s", self.client_addr, event.error_code)
            if event.error_code:
                self._close_now()
            else:
                self._closing = True
                self._close_if_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is None:
            return
        self.lost = True
        self.service.connections.deadlines.clear(self)
        self._count_streams()
        self.service.release(self)
        for stream in list(self.streams.values()):
            stream.gone()
        self.streams.clear()

    def pause_writing(self) -> None:
        self.writable = False
        for stream in self.streams.values():
            if stream.writable:
                stream._set_writable(False)

    def resume_writing(self) -> None:
        self.writable = True
        for stream in list(self.streams.values()):
            stream._flush()

    # -- requests ------------------------------------------------------------------------------
    def _request(self, event: RequestReceived) -> None:
        stream_id = event.stream_id
        service = self.service
        if stream_id > self._refuse_after or self.active >= self._max_streams:
            # Past the last GOAWAY, or more requests running than the client may have open (a
            # client that resets its streams at once still has them running here: rapid reset).
            self.h2.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)
            return
        stream = H2Stream(self, stream_id)
        stream.remote_ended = event.stream_ended is not None
        self.streams[stream_id] = stream
        try:
            exchange = self._exchange(stream, event.headers or [])
        except RequestRefused as exc:
            self._refuse(stream, exc.status, exc.reason, event.headers or [])
            return
        self.active += 1
        self._count_streams()
        if self.active == 1 and self._deadline_action == _IDLE:
            # Busy: not idle any more. (Draining, the last GOAWAY stays due: the stream that
            # came in the drain window is one it names.)
            service.connections.deadlines.clear(self)
        stream.exchange = exchange
        stream.task = self.loop.create_task(self._serve(stream, exchange))

    def _exchange(self, stream: H2Stream, raw: Any) -> Exchange:
        """The stream's request as an HTTP/1.1-shaped head through the same rules
        (RFC 9113 8.3: ``:authority`` is the Host, a different Host is refused)."""
        service = self.service
        rules = service.rules
        method = path = authority = b""
        fields: HeaderList = []
        cookies: list[bytes] = []
        hosts: list[bytes] = []
        for name, value in raw:
            if name[:1] == b":":
                if name == b":method":
                    method = value
                elif name == b":path":
                    path = value
                elif name == b":authority":
                    authority = value
            else:
                check_h2_field(name, value)
                if name == b"cookie":
                    cookies.append(value)
                elif name == b"host":
                    hosts.append(value)
                else:
                    fields.append((name, value))
        if cookies:  # RFC 9113 8.2.3: one field again for HTTP/1.1
            fields.append((b"cookie", b"; ".join(cookies)))
        if authority:
            if any(host != authority for host in hosts):
                raise RequestRefused(400, ":authority and Host differ")
            fields.insert(0, (b"host", authority))
        else:
            fields[:0] = [(b"host", host) for host in hosts]
        check_h2_request_line(method, path)
        if len(path) > service.max_request_line:
            limit = service.max_request_line
            raise RequestRefused(414, f"request target longer than {limit} bytes")
        method_text = method.decode("latin-1")
        scan = scan_fields(rules, fields)
        headers, url, host, length = check_head(
            rules, method_text, "1.1", path, fields, scan, True, None
        )
        content_length, expect = scan[4], scan[5]
        if stream.remote_ended:
            if length:  # RFC 9113 8.1.1: a content-length the stream's DATA does not match
                raise RequestRefused(400, f"content-length {length} but the stream ended")
            body_kind = RequestBody.NONE
            framing: HeaderList = [(b"Content-Length", b"0")] if content_length is not None else []
        elif content_length is not None:
            body_kind = RequestBody.LENGTH
            framing = [(b"Content-Length", b"%d" % length)]
            stream.content_length = length
        else:
            body_kind = RequestBody.CHUNKED
            framing = [(b"Transfer-Encoding", b"chunked")]
        if self._forwarding:
            add_forwarding(rules, headers, self._forwarding, scan[7], host, self._trusted)
        if service.via:
            headers.append((b"Via", b"2 lbx"))
        head = RequestHeader(method_text, url.decode("latin-1"), Headers(headers), "2")
        exchange = Exchange(stream, service, head, body_kind, framing, True)
        exchange.h2 = True
        if expect is not None and body_kind:
            exchange.expect_continue = 1
        return exchange

    async def _serve(self, stream: H2Stream, exchange: Exchange) -> None:
        try:
            await self.service.handle(exchange)  # ends with request_finished
        except BaseException:
            stream.abort()
            stream.request_finished(exchange)
            raise

    def _data(self, event: DataReceived) -> None:
        stream = self.streams.get(event.stream_id)
        size = event.flow_controlled_length
        exchange = stream.exchange if stream is not None else None
        if stream is None or exchange is None or stream.finished or stream.lost:
            self.h2.acknowledge_received_data(size, event.stream_id)  # nobody wants it
            return
        exchange.request_body(event.data)
        limit = self.service.max_body_size
        if limit and exchange.session.body_bytes_read > limit:
            self._refuse_body(stream, exchange)
            return
        if stream._paused:
            stream._unacked += size
        else:
            self.acknowledge(stream, size)

    def _refuse_body(self, stream: H2Stream, exchange: Exchange) -> None:
        """A body over ``max_body_size``: 413 if no response started (else a reset)."""
        error = ProxyError(
            ErrorType.HTTP_STATUS, ErrorSource.DOWNSTREAM, "request body over the limit", status=413
        )
        if exchange.response_started:
            stream.reset(ErrorCodes.CANCEL)
            return
        stream.send_error(413, True)
        exchange.refuse(error)

    def _refuse_short_body(self, stream: H2Stream, exchange: Exchange) -> None:
        """A body that ended short of its content-length: 400 if no response started (else a
        reset); the upstream exchange is abandoned, its connection closed."""
        error = ProxyError(
            ErrorType.HTTP_STATUS,
            ErrorSource.DOWNSTREAM,
            f"request body of {exchange.session.body_bytes_read} bytes, content-length "
            f"{stream.content_length}",
            status=400,
        )
        if exchange.response_started:
            stream.reset(ErrorCodes.PROTOCOL_ERROR)  # (the exchange sees a client gone)
            return
        stream.send_error(400, True)
        exchange.refuse(error)

    def _refuse(self, stream: H2Stream, status: int, reason: str, raw: Any) -> None:
        """A head the rules refuse: answered on its stream (the connection goes on), logged."""
        service = self.service
        log.info("Refused: %s, status: %d, from %s", reason, status, self.client_addr)
        stream.finished = True
        stream.send_error(status, True)
        pseudo = {name: value for name, value in raw if name[:1] == b":"}
        head = refused_head(
            pseudo.get(b":method", b"").decode("latin-1"),
            pseudo.get(b":path", b""),
            [(n, v) for n, v in raw if n[:1] != b":"],
            "2",
        )
        exchange = Exchange(stream, service, head, RequestBody.NONE, [], True)
        stream._maybe_done()
        exchange.log_refused(status, ProxyError.refused(status, reason))

    def stream_finished(self, stream: H2Stream) -> None:
        """A request's phases are over."""
        if stream.exchange is not None:
            self.active -= 1
            self._count_streams()
        if self.active == 0 and not self.lost:
            if self._closing:
                self._close_if_idle()
            else:
                self._arm_idle()

    def _count_streams(self) -> None:
        """Keep ``Connections.streams`` (the collector's sizing) up to date with ``active``."""
        counted = 0 if self.lost else self.active
        if counted != self._counted:
            self.service.connections.streams_changed(counted - self._counted)
            self._counted = counted

    def forget(self, stream: H2Stream) -> None:
        """A stream is over (phases finished, response sent or reset)."""
        self.streams.pop(stream.stream_id, None)
        # Its task's coroutine (compiled: it keeps its locals once it returned) and its exchange
        # reference the stream: without these links a request is a reference cycle that only
        # the cyclic collector frees (about 25 objects per stream, 8% of lbx's CPU).
        stream.task = None
        stream.exchange = None
        if self._closing:
            self._close_if_idle()

    # -- writing (h2 frames the bytes; one transport write per batch) -------------------------
    def write_pending(self) -> None:
        """Send what h2 has queued, in one write per loop iteration: the frames of every stream
        that answered in this iteration go together (a write per frame took a quarter of lbx's
        CPU under ``h2load -m 10``)."""
        if self._write_soon or self._in_events or self.transport is None:
            return
        self._write_soon = True
        self.loop.call_soon(self._write_now)

    def _write_now(self) -> None:
        self._write_soon = False
        if self.transport is None or self.lost:
            return
        data = self.h2.data_to_send()
        if data:
            self.transport.write(data)

    def send_headers(self, stream: H2Stream, fields: HeaderList, end: bool) -> bool:
        try:
            self.h2.send_headers(stream.stream_id, fields, end_stream=end)
        except ProtocolError as exc:  # an unsendable field value, or a stream the client closed
            log.info("cannot send a response head to %s: %s", self.client_addr, exc)
            stream.reset(ErrorCodes.INTERNAL_ERROR)
            return False
        self.write_pending()
        return True

    def send_data(self, stream: H2Stream, outbox: list[bytes]) -> int:
        """Send DATA from ``outbox`` as the windows allow; returns the bytes sent."""
        sent = frames = 0
        try:
            sent, frames = send_within_windows(self.h2, stream.stream_id, outbox)
        except ProtocolError:
            stream.gone()  # closed by the client meanwhile
        if frames and self._guard is not None:
            self._guard.data_sent(frames)
        return sent

    def send_end(self, stream: H2Stream, trailers: HeaderList | None) -> bool:
        try:
            if trailers:
                fields = [(n.lower(), v) for n, v in trailers if n.lower() not in HOP_BY_HOP]
                self.h2.send_headers(stream.stream_id, fields, end_stream=True)
            else:
                self.h2.end_stream(stream.stream_id)
        except ProtocolError:
            stream.gone()
            return False
        return True

    def send_reset(self, stream: H2Stream, code: int) -> None:
        try:
            self.h2.reset_stream(stream.stream_id, code)
        except ProtocolError:
            return  # already closed
        self.write_pending()

    def acknowledge(self, stream: H2Stream, size: int) -> None:
        """Request body bytes taken: the client may send as many again."""
        try:
            self.h2.acknowledge_received_data(size, stream.stream_id)
        except ProtocolError:
            return
        self.write_pending()

    def _flush_all(self) -> None:
        for stream in list(self.streams.values()):
            if stream._outbox or stream.ended:
                stream._flush()

    # -- the end of the connection -------------------------------------------------------------
    def goaway(self, code: int, reason: str) -> None:
        """A connection error: GOAWAY ``code``, every stream stops, the connection closes."""
        log.info("HTTP/2 GOAWAY %d to %s: %s", code, self.client_addr, reason)
        self.h2.close_connection(error_code=code, additional_data=reason.encode()[:128])
        self._close_now()

    def _close_now(self) -> None:
        """After a GOAWAY for an error: stop writing, drain what the client still sends for a
        moment, then close (closing at once could reset the connection before the client
        read the GOAWAY, as for HTTP/1.1 refusals)."""
        transport = self.transport
        if transport is None or self.lost:
            return
        data = self.h2.data_to_send()
        if data:
            transport.write(data)
        self.lost = True
        for stream in list(self.streams.values()):
            stream.gone()
        if not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        self._set_deadline(_LINGER, LINGER_SECONDS)

    def close_when_idle(self) -> None:
        """Graceful shutdown: GOAWAY (any stream may still come), then, a moment later, GOAWAY
        naming the last stream served; the streams in flight finish, then the connection
        closes (RFC 9113 6.8)."""
        if self._closing or self.lost or self.transport is None:
            return
        self._closing = True
        self._send_goaway(MAX_STREAM_ID)
        self._set_deadline(_LAST_GOAWAY, DRAIN_LINGER_SECONDS)

    def _last_goaway(self) -> None:
        if self.lost:
            return
        self._refuse_after = self.h2.highest_inbound_stream_id
        self._send_goaway(self._refuse_after)
        self._close_if_idle()

    def _send_goaway(self, last_stream_id: int) -> None:
        # Written past h2, whose state machine sends nothing more after its own GOAWAY.
        self._write_now()
        frame = GoAwayFrame(0)
        frame.last_stream_id = last_stream_id
        frame.error_code = 0
        if self.transport is not None and not self.lost:
            self.transport.write(frame.serialize())

    def _close_if_idle(self) -> None:
        if self.streams or self.lost or self.transport is None:
            return
        if self._refuse_after == MAX_STREAM_ID and self.service.connections.shutting_down:
            return  # the last GOAWAY first
        self._write_now()
        self.lost = True
        self.transport.close()

    def abort(self) -> None:
        if self.transport is not None and not self.lost:
            self.lost = True
            self.transport.abort()

    def _arm_idle(self) -> None:
        timeout = self.service.keepalive_timeout
        if timeout:
            self._set_deadline(_IDLE, timeout)

    def _set_deadline(self, action: int, seconds: float) -> None:
        self._deadline_action = action
        self.service.connections.deadlines.set(self.loop, self, seconds)

    def deadline_passed(self) -> None:
        action = self._deadline_action
        if action == _IDLE:
            if self.active == 0 and not self.lost:
                self.goaway(ErrorCodes.NO_ERROR, "idle")
        elif action == _LAST_GOAWAY:
            self._last_goaway()
        elif self.transport is not None:  # _LINGER: what the client sent after the error is read
            self.transport.close()


_CONFIG: Final = H2Configuration(client_side=False, header_encoding=None)


# -- choosing the protocol of a new connection ---------------------------------------------------
class _Preface(asyncio.Protocol):
    """A plaintext connection on an ``h2c: true`` listener until its first bytes tell: the
    HTTP/2 connection preface (prior knowledge) or anything else (HTTP/1.1)."""

    def __init__(self, service: ProxyService) -> None:
        self.service = service
        self.transport: asyncio.BaseTransport | None = None
        self._seen = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        seen = self._seen + data
        if len(seen) < len(PREFACE) and PREFACE.startswith(seen):
            self._seen = seen
            return
        protocol: asyncio.Protocol
        if seen.startswith(PREFACE):
            protocol = H2Downstream(self.service)
        else:
            protocol = H1Downstream(self.service)
        _switch(self, protocol)
        protocol.data_received(seen)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


class _Alpn(asyncio.Protocol):
    """A TLS connection, once its handshake chose the protocol (ALPN ``h2`` or ``http/1.1``)."""

    def __init__(self, service: ProxyService) -> None:
        self.service = service
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        ssl_object = transport.get_extra_info("ssl_object")
        alpn = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        if alpn == "h2":
            _switch(self, H2Downstream(self.service))
        else:
            _switch(self, H1Downstream(self.service))


def _switch(old: _Preface | _Alpn, protocol: asyncio.Protocol) -> None:
    transport = old.transport
    assert transport is not None
    transport.set_protocol(protocol)
    protocol.connection_made(transport)


def select_protocol(service: ProxyService, tls: bool) -> asyncio.Protocol:
    """A new client connection's protocol: HTTP/2 by ALPN on TLS, by prior knowledge on
    plaintext listeners with ``h2c: true``, else HTTP/1.1."""
    if tls:
        return _Alpn(service) if service.config.http2 else H1Downstream(service)
    return _Preface(service) if service.config.h2c else H1Downstream(service)
