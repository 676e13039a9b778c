"""The HTTP/1.1 server side: one client connection, its requests parsed and answered in order.

``H1Downstream`` parses client bytes with httptools, applies ``lbx.request_rules`` to each head,
and hands each request to its service's phases (``ProxyService.handle``) as an ``Exchange``; it
answers pipelined requests in order, refuses what the rules refuse (and logs it), bounds slow
clients (one deadline per connection in the shared sweep) and turns into a byte tunnel after a
``101``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Final, cast

import httptools

from lbx.connections import DRAIN_LINGER_SECONDS, LINGER_SECONDS
from lbx.errors import ProxyError
from lbx.exchange import Exchange, RequestBody
from lbx.h1parse import Relay, head_read
from lbx.http import (
    HeaderList,
    Headers,
    RequestHeader,
    ResponseHeader,
    error_response,
    serialize_response,
)
from lbx.request_rules import (
    HTTP_FIRST_LINE,
    NOT_HTTP,
    PLAIN_REQUEST_LINE,
    Forwarding,
    RequestRefused,
    add_forwarding,
    check_head,
    parse_error_status,
    request_line_is_http,
    scan_fields,
    upgrade_request,
)
from lbx.upstream import UpstreamConnection

if TYPE_CHECKING:
    from lbx.proxy import ProxyService

log: Final = logging.getLogger("lbx.h1")

_METHODS: Final[dict[bytes, str]] = {}

# Timer states of a client connection (one deadline per connection at a time).
_NO_TIMER: Final = 0
_IDLE: Final = 1
_HEAD: Final = 2
_BODY: Final = 3
_LINGER: Final = 4
_PARK: Final = 5
PARK_SECONDS: Final = 0.5
"""After this long idle, a keep-alive connection ends its task (about 0.7 KiB) until a byte."""


class H1Downstream(asyncio.Protocol):
    """One HTTP/1.1 client connection: parses requests, runs one at a time, answers in order."""

    def __init__(self, service: ProxyService) -> None:
        self.service = service
        self.transport: asyncio.Transport | None = None
        self.loop: asyncio.AbstractEventLoop
        self.client_addr = ""
        self.client_ip = ""
        self.server_addr = ""
        self.lost = False
        self.writable = True
        self._parser: httptools.HttpRequestParser | None = None
        """Borrowed while a request is read (``lbx.h1parse``): an idle connection holds none."""
        self._relay: Relay | None = None
        self._parser_reusable = False  # llhttp keeps the connection after the last message
        self._url = b""
        self._headers: HeaderList = []
        self._max_headers = service.max_headers
        self._max_url = service.max_request_line
        self._trailers = -1
        """Trailer fields of the chunked request being read (-1: reading a head, not trailers)."""
        self._forwarding: Forwarding = ()
        """The forwarding fields this connection's requests get: (name, title, value)."""
        self._head_bytes = 0
        self._fed = 0
        self._in_head = False
        self._chunk = b""  # the read being parsed (empty between reads)
        self._feed_idle = False
        """The read being parsed started between requests: its first line is a request line."""
        self._line_first = False  # the head being parsed started its read (after CR/LF at most)
        self._head_raw: list[bytes] | None = None
        """The reads of a head that spans several (bounded by the head limits)."""
        self._refusal: tuple[int, ProxyError, Exchange | None] | None = None
        """A refused pipelined request, answered once the requests before it are."""
        self._discard = False
        self._requests = 0
        self._timer = _NO_TIMER
        self._body_mark = -1
        self._current: Exchange | None = None
        self._parsing: Exchange | None = None
        self._queue: list[Exchange] = []
        """Pipelined requests waiting their turn (a list: an empty deque takes 760 bytes)."""
        self._task: asyncio.Task[None] | None = None
        """Runs the connection's requests (``_serve``); the loop keeps only a weak reference."""
        self._waiting: asyncio.Future[None] | None = None  # what the task awaits between requests
        self._pause_reasons: set[object] | None = None
        """Why reading is paused (made on the first pause: an empty set takes 216 bytes)."""
        self._drain_waiter: asyncio.Future[None] | None = None
        self._close_when_idle = False
        self._trusted = True
        self._good_host: bytes | None = None
        self._last: Exchange | None = None
        """The most recent request parsed (an Upgrade request ends the HTTP input)."""
        self._early = b""
        """Bytes that followed an Upgrade request, held until the upstream answers it."""
        self._tunnel: Exchange | None = None  # the request whose 101 made this a byte stream

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        # Kept: on Python 3.11 every get_running_loop() costs a getpid() syscall.
        self.loop = asyncio.get_running_loop()
        service = self.service
        self.client_addr, origin = service.client_origin(transport)
        self.client_ip = origin.client_ip
        self.server_addr = origin.server_addr
        self._trusted = origin.trusted
        self._forwarding = origin.forwarding
        if not service.admit(self):
            self.transport.write(error_response(503, close=True))
            transport.close()
            self.lost = True
            return
        if service.connections.shutting_down:
            # Accepted just before the listeners closed (its connection_made was already queued):
            # the client is sending a request, so answer it with Connection: close like the idle
            # connections' requests. Closing now would reset it.
            self.close_when_idle()
            return
        self._arm_timer()

    def data_received(self, data: bytes) -> None:
        tunnel = self._tunnel
        if tunnel is not None:
            tunnel.tunnel_request_data(data)
            return
        if self._discard:
            return
        self._fed = len(data)
        self._chunk = data
        in_head = self._in_head
        self._feed_idle = not in_head and self._parsing is None
        if in_head and self._head_raw is not None:
            self._head_raw.append(data)
        parser = self._parser
        if parser is None:
            relay = self._relay = self.service.connections.parsers.take(self)
            parser = self._parser = cast(httptools.HttpRequestParser, relay.parser)
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._chunk = b""
            offset = exc.args[0] if exc.args and isinstance(exc.args[0], int) else len(data)
            self._drop_parser()  # past an upgrade: not for the pool
            last = self._last
            if last is not None and last.upgrade_names is not None:
                # Passed on: what follows belongs to the new protocol if the upstream agrees
                # (101), else it is the next request. Hold it until the answer.
                self._early = data[offset:]
                self.pause_reading_for("upgrade")
                return
            # Not passed on (a protocol lbx does not allow): the request went upstream without
            # Upgrade and had no body (checked in on_headers_complete), so this is the next one.
            if offset < len(data):
                self.data_received(data[offset:])
            return
        except httptools.HttpParserError as exc:
            self._chunk = b""
            refused = exc.__context__
            if isinstance(refused, RequestRefused):  # raised by a callback of this protocol
                self._bad_request(refused.status, refused.reason)
            else:
                self._bad_request(parse_error_status(exc), f"malformed request: {exc}")
            return
        self._chunk = b""  # a read is not kept: an idle connection holds no buffer
        if not self._in_head and self._parsing is None:
            if self._parser_reusable and not self._discard:  # between requests: to the pool
                self.service.connections.parsers.give_back(cast(Relay, self._relay))
                self._parser = self._relay = None
        elif self._in_head:
            # A head arriving in pieces: its deadline runs, and its size is bounded here too
            # (httptools buffers a header line until it is complete).
            if self._timer != _HEAD:
                self._arm_timer(self.service.header_timeout, _HEAD)
            if self._head_bytes < 0:
                self._head_bytes = 0  # the piece that started the head (bounded by the read)
                # Kept for the request-line check: the head's start is in the read's tail.
                self._head_raw = [data[-self.service.max_head_bytes :]]
            else:
                self._head_bytes += len(data)
                if self._head_bytes > self.service.max_head_bytes:
                    self._bad_request(431, "request head too large")

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._cancel_timer()
        # The relay holds this protocol, and the last request holds the protocol: without these
        # cycles reference counting frees the connection now, not the collector.
        self._drop_parser()
        self._last = None
        self._refusal = None
        self._head_raw = None
        self.service.release(self)
        current = self._current
        if current is not None:
            if current is self._tunnel:
                current.tunnel_closed()  # the client ended the stream: a normal end
            else:
                current.downstream_lost()
        self._queue.clear()
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.set_result(None)  # the connection's task ends

    def pause_writing(self) -> None:
        self.writable = False
        if self._current is not None:
            self._current.downstream_writable(False)

    def resume_writing(self) -> None:
        self.writable = True
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self._current is not None:
            self._current.downstream_writable(True)

    # -- httptools callbacks ---------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._url = b""
        self._headers.clear()
        self._trailers = -1
        self._head_bytes = -1
        self._in_head = True
        self._line_first = self._feed_idle
        self._feed_idle = False
        self._head_raw = None

    def on_url(self, url: bytes) -> None:
        url = self._url + url
        self._url = url
        if len(url) > self._max_url:
            raise RequestRefused(414, f"request target longer than {self._max_url} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        # Counted in on_headers_complete: a head is bounded by the read size (one piece) or by
        # data_received (several). Trailer fields are not forwarded, only counted.
        if self._trailers < 0:
            self._headers.append((name, value))
            return
        self._trailers += 1
        if self._trailers > self._max_headers:
            raise RequestRefused(431, "too many trailer fields")

    def on_headers_complete(self) -> None:
        self._in_head = False
        service = self.service
        parser = cast(httptools.HttpRequestParser, self._parser)  # calling back: it exists
        method_bytes: bytes = parser.get_method()
        method = _METHODS.get(method_bytes)
        if method is None:
            method = method_bytes.decode("latin-1")
            if len(_METHODS) < 64:
                _METHODS[method_bytes] = method
        # The request line of a head that started its read is that read's first line: one match
        # tells it is the plainest (origin-form target without % or #, HTTP/1.1; llhttp also
        # takes RTSP/ and ICE/ lines). Anything else goes through every rule. (The version of a
        # plain line is known without asking the parser, which makes a new string each time.)
        plain_line = (
            self._line_first
            and self._head_bytes < 0
            and PLAIN_REQUEST_LINE.match(self._chunk) is not None
        )
        version: str = "1.1" if plain_line else parser.get_http_version()
        reusable = self._parser_reusable = bool(parser.should_keep_alive())
        keep_alive = reusable and not self._close_when_idle
        self._requests += 1
        if self._requests == service.keepalive_requests:
            keep_alive = False
        rules = service.rules
        fields = self._headers
        scan = scan_fields(rules, fields)
        headers, hosts, host, te, content_length, expect, _, received, drop, underscored = scan
        url = self._url
        length = 0
        if not (
            plain_line
            and not underscored
            and hosts == 1
            and te is None
            and content_length is None
            and expect is None
            and drop is None
            and host == self._good_host
            and method != "CONNECT"
            and self._head_bytes < 0
            and self._fed <= service.max_header_size
            and len(fields) <= self._max_headers
        ):
            line_is_http = plain_line or self._request_line_is_http(url)
            headers, url, host, length = check_head(
                rules, method, version, url, fields, scan, line_is_http, self._good_host
            )
            if hosts and url is self._url:
                self._good_host = host  # passed: later requests with it skip the Host check
            if te is not None:
                self._trailers = 0  # fields after the body are trailers (bounded like the head's)
        if self._forwarding:
            add_forwarding(rules, headers, self._forwarding, received, host, self._trusted)
        if service.via:
            headers.append((b"Via", b"1.1 lbx"))
        if te is not None:
            body_kind = RequestBody.CHUNKED
            framing: HeaderList = [(b"Transfer-Encoding", b"chunked")]
        elif length:
            body_kind = RequestBody.LENGTH
            framing = [(b"Content-Length", b"%d" % length)]
        else:
            body_kind = RequestBody.NONE
            framing = [(b"Content-Length", b"0")] if content_length is not None else []
        offer = upgrade_request(rules, method, version, body_kind != RequestBody.NONE, scan)
        if offer is not None:
            framing = [*framing, (b"Connection", b"upgrade"), (b"Upgrade", offer[0])]
        head = RequestHeader(method, url.decode("latin-1"), Headers(headers), version)
        exchange = Exchange(self, service, head, body_kind, framing, keep_alive)
        if offer is not None:
            exchange.session._upgrade = offer[0].decode("latin-1")
            exchange.upgrade_names = offer[1]
        self._last = exchange
        if body_kind:
            if expect is not None and version == "1.1":
                exchange.expect_continue = 1
            self._body_mark = -1
            self._arm_timer(service.body_timeout, _BODY)
        elif self._timer == _HEAD:  # an idle deadline may stay: it passes over a busy connection
            self._cancel_timer()
        self._parsing = exchange
        fields.clear()  # what goes on is in the exchange; an idle connection keeps no head
        self._url = b""
        if self._current is None:
            self._start(exchange)
        else:
            self._queue.append(exchange)

    def _request_line_is_http(self, url: bytes) -> bool:
        """``request_line_is_http`` over the read (or reads) that hold this head's start."""
        if self._head_bytes < 0:
            region = self._chunk
            if self._line_first and HTTP_FIRST_LINE.match(region) is not None:
                return True  # the usual case, without a search through the whole read
        elif self._head_raw is not None:
            region = b"".join(self._head_raw)
        else:  # not reached: a head spanning reads keeps them
            return False
        return request_line_is_http(region, url)

    def on_body(self, body: bytes) -> None:
        exchange = self._parsing
        if exchange is not None:
            exchange.request_body(body)
            limit = self.service.max_body_size
            if limit and exchange.session.body_bytes_read > limit:
                self._refuse_body(413, "request body over the limit")

    def on_message_complete(self) -> None:
        if self._trailers > 0:  # llhttp reads Connection in trailers too: its parser stays here
            self._parser_reusable = False
        exchange = self._parsing
        self._parsing = None
        if exchange is None:
            return
        if self._timer == _BODY:
            self._cancel_timer()
        exchange.request_body_end()
        if exchange is not self._current:
            # Pipelined: hold further input until the queued requests are answered.
            self.pause_reading_for("pipeline")

    # -- upgraded connections --------------------------------------------------------------
    def start_tunnel(self, exchange: Exchange, upstream: UpstreamConnection) -> None:
        """The upstream switched protocols: from now on client bytes go to it unparsed."""
        self._tunnel = exchange
        self._cancel_timer()
        early, self._early = self._early, b""
        if early:
            exchange.tunnel_request_data(early)
        self.resume_reading_for("upgrade")

    def cancel_upgrade(self) -> None:
        """The upstream answered the Upgrade request without switching: back to HTTP."""
        early, self._early = self._early, b""
        self.resume_reading_for("upgrade")
        if early and not self.lost:
            self.data_received(early)

    def eof_received(self) -> bool | None:
        tunnel = self._tunnel
        if tunnel is not None:
            tunnel.tunnel_request_eof()  # half-close: the other direction may still flow
            return True
        return None

    def write_eof(self) -> bool:
        """Half-close towards the client; False when the transport cannot (TLS)."""
        transport = self.transport
        if transport is None or self.lost or not transport.can_write_eof():
            return False
        transport.write_eof()
        return True

    # -- request life cycle ------------------------------------------------------------------
    def _start(self, exchange: Exchange) -> None:
        self._current = exchange
        waiter = self._waiting
        if waiter is not None:
            self._waiting = None
            waiter.set_result(None)
        elif self._task is None:
            self._task = self.loop.create_task(self._serve())
        # else the task is finishing the previous request, and takes this one next

    async def _serve(self) -> None:
        """The connection's task: its requests in turn, until the connection closes or parks.

        One task per connection, not per request: creating a Task costs more than a request's
        phases with no hooks. Requests may share the task's context variables, so per-request
        state belongs in ``ctx``.
        """
        handle = self.service.handle
        try:
            while True:
                exchange = self._current
                if exchange is not None:
                    await handle(exchange)  # ends with request_finished: the next one, or None
                elif self.lost:
                    break
                else:
                    waiter = self._waiting = self.loop.create_future()
                    await waiter  # a request (_start), the end of the connection or parking
                    if self._current is None:
                        break
        except BaseException:
            self.abort()  # cancelled, or a bug escaped handle(): the connection's state is unknown
            raise
        finally:
            self._task = None

    def request_finished(self, exchange: Exchange) -> None:
        """Called by the connection's task when a request is fully answered (or failed)."""
        if self._current is not exchange:
            return
        self._current = None
        if self._last is exchange:
            self._last = None  # an idle connection keeps nothing of its requests
        transport = self.transport
        if self.lost or transport is None:
            return
        if not exchange.keep_alive or not exchange.body_done or self._close_when_idle:
            transport.close()
            self.lost = True
            return
        if self._queue:
            self._start(self._queue.pop(0))
            if not self._queue and self._refusal is None:
                self.resume_reading_for("pipeline")
        elif self._refusal is not None:
            status, error, refused = self._refusal
            self._refusal = None
            self._refuse(status)
            self._log_refused(status, error, refused)
        elif not self._in_head:
            self._arm_timer()

    def _bad_request(self, status: int, reason: str) -> None:
        """The input cannot be read as requests any more: answer ``status``, log, then close.

        The requests before the bad one are answered first; a request whose body turned out
        malformed is answered instead of being forwarded further.
        """
        self._discard = True
        if self.transport is None or self.lost:
            return
        if self._parsing is not None:
            self._refuse_body(status, reason)
            return
        error = ProxyError.refused(status, reason)
        if self._current is None:
            self._refuse(status)
            self._log_refused(status, error, None)
        else:
            self._refusal = (status, error, None)
            self.pause_reading_for("bad-request")

    def _refuse_body(self, status: int, reason: str) -> None:
        """The body of the request being read broke a limit or its framing: that request is
        answered ``status`` if no response to it started (else the connection is cut), its
        upstream exchange stops, and the connection closes."""
        exchange = self._parsing
        self._parsing = None
        self._discard = True
        if exchange is None or self.lost or self.transport is None:
            return
        error = ProxyError.refused(status, reason)
        if exchange is not self._current:
            # Pipelined: the requests before it are answered first (it is the last one read).
            if exchange in self._queue:
                self._queue.remove(exchange)
            self._refusal = (status, error, exchange)
            self.pause_reading_for("bad-request")
        elif exchange.response_started:
            self.abort()  # a response is on its way: a short one must not look complete
        else:
            self._refuse(status)
            exchange.refuse(error)  # its task ends the request, logged once, with this error

    def _refuse(self, status: int) -> None:
        """Answer ``status`` with ``Connection: close``, then linger and close."""
        transport = self.transport
        assert transport is not None
        transport.write(error_response(status, close=True))
        self._linger()

    def _log_refused(self, status: int, error: ProxyError, exchange: Exchange | None) -> None:
        """The ``logging`` hook for a request refused before its phases ran (nginx logs them):
        its exchange if it was parsed, else one built from what was read of the head."""
        service = self.service
        log.info("Refused: %s, status: %d, from %s", error.context, status, self.client_addr)
        if service.hooks.logging is None:
            return
        if exchange is None:
            http = error.context != NOT_HTTP
            head = head_read(self._parser, self._url, self._headers, self._in_head, http)
            exchange = Exchange(self, service, head, RequestBody.NONE, [], False)
        exchange.log_refused(status, error)

    def _drop_parser(self) -> None:
        relay = self._relay
        if relay is not None:
            relay.discard()
            self._parser = self._relay = None

    def _linger(self) -> None:
        """Stop writing, drain what the client still sends for a moment, then close."""
        transport = self.transport
        assert transport is not None
        self.lost = True  # nothing more is written
        self._discard = True
        if self._pause_reasons:
            self._pause_reasons = None
            transport.resume_reading()
        if transport.can_write_eof():
            transport.write_eof()
        self._arm_timer(LINGER_SECONDS, _LINGER)

    # -- the response, as its Exchange writes it (lbx.downstream.Downstream) ----------------
    def send_head(
        self, head: ResponseHeader, framing: HeaderList, body: list[bytes], end: bool
    ) -> None:
        """The head in HTTP/1.1 form and the (framed) body bytes that came with it, in one
        write: a syscall per request less."""
        data = serialize_response(head, framing, body)
        transport = self.transport
        if transport is not None and not self.lost:
            transport.write(data)

    def end_response(self, trailers: HeaderList | None) -> None:
        """Not called: the HTTP/1.1 framing (length, last chunk, close) ends a body."""

    def send_informational(self, status: int, headers: HeaderList) -> None:
        if self.transport is not None and not self.lost:
            self.transport.write(
                serialize_response(ResponseHeader(status, Headers(headers)), [], [])
            )

    def send_error(self, status: int, close: bool) -> None:
        if self.transport is not None and not self.lost:
            self.transport.write(error_response(status, close=close))

    # -- flow control and writes -------------------------------------------------------------
    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.lost:
            self.transport.write(data)

    async def drain(self) -> None:
        if self.writable or self.lost:
            return
        self._drain_waiter = self.loop.create_future()
        await self._drain_waiter

    def pause_reading_for(self, reason: object) -> None:
        reasons = self._pause_reasons
        if reasons is None:
            reasons = self._pause_reasons = set()
        if not reasons and self.transport is not None and not self.lost:
            self.transport.pause_reading()
        reasons.add(reason)

    def resume_reading_for(self, reason: object) -> None:
        reasons = self._pause_reasons
        if reasons is None or reason not in reasons:
            return
        reasons.discard(reason)
        if not reasons:
            self._pause_reasons = None
            if self.transport is not None and not self.lost:
                self.transport.resume_reading()

    @property
    def shutting_down(self) -> bool:
        return self._close_when_idle or self.service.connections.shutting_down

    def close_when_idle(self) -> None:
        """Graceful shutdown: close after the response in flight, or soon if idle.

        An idle keep-alive connection lingers for ``DRAIN_LINGER_SECONDS``: a client may be
        sending a request on it right now, and closing under it would reset that request. A
        request that arrives in the meantime is answered with ``Connection: close``.
        """
        self._close_when_idle = True
        if self._current is None and self.transport is not None and not self.lost:
            self._arm_timer(DRAIN_LINGER_SECONDS)

    def abort(self) -> None:
        if self.transport is not None and not self.lost:
            self.lost = True
            self.transport.abort()

    # -- timers (one deadline per connection, in the shared sweeper) -------------------------
    def _arm_timer(self, timeout: float | None = None, state: int = _IDLE) -> None:
        if timeout is None:
            timeout = self.service.keepalive_timeout
            if timeout > PARK_SECONDS:  # idle: park first, then the rest of the deadline
                timeout, state = PARK_SECONDS, _PARK
        if timeout:
            self._timer = state
            self.service.connections.deadlines.set(self.loop, self, timeout)
        elif self._timer:
            self._cancel_timer()

    def _cancel_timer(self) -> None:
        self._timer = _NO_TIMER
        self.service.connections.deadlines.clear(self)

    def deadline_passed(self) -> None:
        state, self._timer = self._timer, _NO_TIMER
        transport = self.transport
        if transport is None:
            return
        if state == _LINGER:
            transport.close()
            return
        if self.lost:
            return
        if state == _HEAD:
            if self._in_head:
                self._bad_request(408, "request head not received in time")
        elif state == _BODY:
            exchange = self._parsing
            if exchange is None:
                return
            read = exchange.session.body_bytes_read
            if read != self._body_mark or self._pause_reasons:
                # Progress, or lbx itself stopped reading (back-pressure): wait again.
                self._body_mark = read
                self._arm_timer(self.service.body_timeout, _BODY)
                return
            self._refuse_body(408, "request body stalled")
        elif self._current is not None or self._parsing is not None or self._in_head:
            return  # a request came: request_finished arms the idle deadline again
        elif state == _PARK:
            self._park()
        else:
            transport.close()
            self.lost = True

    def _park(self) -> None:
        """Idle for ``PARK_SECONDS``: the task ends, the keep-alive runs on."""
        self._drop_parser()  # given back already, unless the last request closes
        waiter, self._waiting = self._waiting, None
        if waiter is not None:
            waiter.set_result(None)
        rest = self.service.keepalive_timeout - PARK_SECONDS  # a reload may have lowered it:
        self._arm_timer(max(rest, 0.001) if self.service.keepalive_timeout else 0)  # passed: soon
