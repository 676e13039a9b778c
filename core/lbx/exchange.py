"""``Exchange``: the bytes of one request between the client side and an upstream.

The plumbing behind a ``Session`` (the request as hooks see it, ``lbx.session``): buffering and
streaming the request body, choosing the response's framing, back-pressure both ways, the
tunnel after a ``101``, and the futures the request's task awaits. The client side is a
``lbx.downstream.Downstream``: an HTTP/1.1 connection writes the response as bytes, an HTTP/2
stream as HEADERS, DATA and trailers. Bytes move through plain method calls from the protocols
(``request_body``, ``upstream_body``...), never through an await per chunk; the task awaits
only two futures: the response head and the end of the response body.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Final, TypeAlias

from lbx._hookcall import suspends
from lbx.errors import ErrorSource, ErrorType, ProxyError
from lbx.http import (
    HOP_BY_HOP,
    LAST_CHUNK,
    NO_BODY_STATUSES,
    HeaderList,
    Headers,
    RequestHeader,
    ResponseHeader,
    encode_chunk,
    field_from_hook,
)
from lbx.session import Session
from lbx.upstream import BodyKind, UpstreamConnection

if TYPE_CHECKING:
    from lbx.h1 import H1Downstream
    from lbx.h2stream import H2Stream
    from lbx.h2upstream import H2UpstreamStream
    from lbx.proxy import ProxyService

    # What lbx.downstream.Downstream describes, as the two concrete classes: compiled, a call
    # on this union is a direct call to the one the object is (a Protocol would make every
    # call a generic method lookup, on the HTTP/1.1 path too).
    Downstream: TypeAlias = "H1Downstream | H2Stream"
    # The upstream side: an HTTP/1.1 connection or an HTTP/2 stream, called the same way.
    Upstream: TypeAlias = "UpstreamConnection | H2UpstreamStream"

log: Final = logging.getLogger("lbx.exchange")
Fields: TypeAlias = dict[str, str] | list[tuple[str, str]]  # a response's fields, from a hook

# Request body bytes buffered before the upstream connection is ready; past it, reading pauses.
REQUEST_BUFFER_HIGH_WATER: Final = 64 * 1024
# Response body bytes held while response hooks run; past it, reading the upstream pauses.
RESPONSE_BUFFER_HIGH_WATER: Final = 64 * 1024

_RELAYED_INFORMATIONAL: Final = frozenset({100, 103})


class RequestBody(enum.IntEnum):
    """How the request body is framed: none, Content-Length, or chunked."""

    NONE = 0
    LENGTH = 1
    CHUNKED = 2


class Exchange:
    """One request's exchange: its ``Session``, its client connection, its upstream attempt."""

    __slots__ = (
        "_body_buffer",
        "_body_buffered",
        "_body_kind",
        "_body_sent_any",
        "_collected",
        "_done_future",
        "_failure",
        "_head_future",
        "_read_mark",
        "_resp_body_kind",
        "_resp_mode",
        "_resp_pending",
        "_resp_pending_size",
        "_streaming_response",
        "_tunnel",
        "_tunnel_bytes",
        "_tunnel_eofs",
        "_upstream_paused",
        "_upstream_read_paused",
        "body_done",
        "conn",
        "expect_continue",
        "fresh",
        "h2",
        "keep_alive",
        "refusal",
        "response_complete",
        "response_started",
        "response_trailers",
        "service",
        "session",
        "streaming_request",
        "upgrade_names",
        "upstream",
        "upstream_framing",
    )

    def __init__(
        self,
        conn: Downstream,
        service: ProxyService,
        req_header: RequestHeader,
        body_kind: int,
        upstream_framing: HeaderList,
        keep_alive: bool,
    ) -> None:
        self.conn = conn
        self.service = service
        self.session = Session(self, req_header)
        self.upstream_framing = upstream_framing
        """The framing fields of the request that goes upstream (the kernel's, after hooks)."""
        self.keep_alive = keep_alive
        self.h2 = False
        """The client side is an HTTP/2 stream: it frames the body itself (``BodyKind.FRAMES``)."""
        self.response_trailers: HeaderList | None = None
        """Trailer fields of the upstream response, passed on where the client side can."""
        self.fresh = False
        """The next attempt opens a new upstream connection (a pooled one just failed)."""
        self.expect_continue = 0
        """1: the client sent ``Expect: 100-continue``; 2: lbx answered it with its own 100."""
        self.upgrade_names: frozenset[bytes] | None = None
        """The lower-cased protocols in ``session.upgrade``: a 101 may switch to these only."""
        self.refusal: ProxyError | None = None
        """Set when lbx answered the request itself while reading its body (``refuse``)."""
        self._body_kind = body_kind
        self._tunnel = False
        self._tunnel_bytes = 0
        self._tunnel_eofs = 0  # 1: the client finished sending, 2: the upstream did
        self._body_buffer: list[bytes] = []
        self._body_buffered = 0
        self.body_done = body_kind == RequestBody.NONE
        self._body_sent_any = False
        self.streaming_request = False
        self._streaming_response = False
        self.upstream: Upstream | None = None
        self._upstream_paused = False
        self._head_future: asyncio.Future[None] | None = None
        self._done_future: asyncio.Future[None] | None = None
        self._read_mark = 0  # what _activity() was when the body's read deadline was set
        self._failure: ProxyError | None = None
        self.response_started = False
        self.response_complete = False
        self._resp_mode = BodyKind.NONE
        self._resp_body_kind = BodyKind.NONE
        self._resp_pending: list[bytes] = []
        self._resp_pending_size = 0
        self._upstream_read_paused = False
        self._collected: list[bytes] | None = None

    def __repr__(self) -> str:
        return f"<Exchange of {self.session!r}>"

    def finish(self) -> None:
        """The request is over: its session no longer reaches this exchange, so reference
        counting frees both now instead of the cycle collector later (a hook may keep the
        session; it then answers ``response_written`` and refuses to respond)."""
        self.session._exchange = None

    def log_refused(self, status: int, error: ProxyError) -> None:
        """``logging`` for a request refused before its phases ran (as nginx), then ``finish``."""
        session = self.session
        session.response_status = status
        self.response_started = self.response_complete = True
        hook = self.service.hooks.logging
        try:
            done = None if hook is None else hook.run(session, session.ctx, error)
            if done is not None and suspends(done):
                self.conn.loop.create_task(_finish_logging(done, self))
                return
        except Exception:
            log.exception("logging hook failed, %s", session.request_summary())
        self.finish()

    # -- answers written by lbx or by hooks (through the Session) ------------------------------
    async def respond(self, status: int, body: bytes = b"", headers: Fields | None = None) -> None:
        """A complete response written by a hook (``Session.respond``)."""
        if self.response_started:
            raise RuntimeError("a response was already sent for this request")
        items = headers.items() if isinstance(headers, dict) else (headers or [])
        framed = ("content-length", "transfer-encoding")  # lbx frames the body: these go
        kept = [field_from_hook(n, v) for n, v in items if n.lower() not in framed]
        head = ResponseHeader(status, Headers(kept))
        bodyless = status in NO_BODY_STATUSES  # (no Content-Length for them: RFC 9110 8.6)
        framing: HeaderList = [] if bodyless else [(b"Content-Length", b"%d" % len(body))]
        if not self.body_done:  # the rest of the request body is unread: no reuse
            self.keep_alive = False
        if not self.keep_alive:
            framing.append((b"Connection", b"close"))
        self._mark_started(status)
        no_body = self.session.req_header.method == "HEAD" or bodyless or not body
        self.conn.send_head(head, framing, [] if no_body else [body], True)
        self.session.body_bytes_sent += 0 if no_body else len(body)
        self.response_complete = True
        await self.conn.drain()

    async def respond_error(self, status: int) -> None:
        """Pingora's error response: empty body, ``Cache-Control: private, no-store``."""
        if not self.body_done:
            self.keep_alive = False
        self._mark_started(status)
        self.conn.send_error(status, not self.keep_alive)
        self.response_complete = True
        await self.conn.drain()

    def _mark_started(self, status: int) -> None:
        if self.response_started:
            raise RuntimeError("a response was already sent for this request")
        self.response_started = True
        self.session.response_status = status
        if self.conn.shutting_down:
            self.keep_alive = False
        if self.session.upgrade is not None and status != 101:
            # No switch after all (declined, refused or failed): the connection stays HTTP.
            self.conn.cancel_upgrade()

    # -- request body (called by the downstream protocol) ------------------------------------
    def request_body(self, data: bytes) -> None:
        self.session.body_bytes_read += len(data)
        if self.streaming_request:
            self._send_request_body(data, False)
            return
        self._body_buffer.append(data)
        self._body_buffered += len(data)
        if self._body_buffered > REQUEST_BUFFER_HIGH_WATER:
            self.conn.pause_reading_for(self)

    def request_body_end(self) -> None:
        self.body_done = True
        if self.streaming_request:
            self._send_request_body(b"", True)

    def _send_request_body(self, data: bytes, end: bool) -> None:
        upstream = self.upstream
        if upstream is None:
            return
        data = self._to_upstream(data, end)
        if data:
            self._body_sent_any = True
        upstream.send_body(data, end, self._body_kind == RequestBody.CHUNKED)

    @property
    def has_request_body(self) -> bool:
        """The request has a body (Content-Length or chunked; HTTP/2: DATA may follow)."""
        return self._body_kind != RequestBody.NONE

    def start_request_body(self) -> None:
        """The request head went upstream: send what was buffered and stream the rest."""
        self.streaming_request = True
        if self.expect_continue == 1:
            # The client waits for this before sending its body; lbx answers Expect itself
            # (never forwarded), so there is no deadlock whatever the upstream does.
            self.expect_continue = 2
            if not self.body_done and not self.response_started:
                self.conn.send_informational(100, [])
        buffered, self._body_buffer = self._body_buffer, []
        self._body_buffered = 0
        for chunk in buffered:
            self._send_request_body(chunk, False)
        if self.body_done and self._body_kind != RequestBody.NONE:
            self._send_request_body(b"", True)
        if not self._upstream_paused:
            self.conn.resume_reading_for(self)

    @property
    def retry_safe(self) -> bool:
        """No request body byte left lbx yet, so the request can be sent again elsewhere."""
        return not self._body_sent_any

    def reset_attempt(self) -> None:
        """Forget the failed upstream attempt so a retry starts clean."""
        self.upstream = None
        self._upstream_paused = False
        self.streaming_request = False
        self._head_future = None
        self._done_future = None
        self._resp_pending = []
        self._resp_pending_size = 0
        self._upstream_read_paused = False
        self.response_trailers = None
        self.session.upstream_response = None
        self.session.head_time = None

    # -- upstream exchange (called by UpstreamConnection) ------------------------------------
    def upstream_informational(self, status: int, headers: HeaderList) -> None:
        if (
            status in _RELAYED_INFORMATIONAL
            and self.session.req_header.version != "1.0"
            and not (status == 100 and self.expect_continue == 2)  # lbx sent its own 100
            and not self.response_started
        ):
            kept = [(n, v) for n, v in headers if n.lower() not in HOP_BY_HOP]
            self.conn.send_informational(status, kept)

    def upstream_head(self, status: int, headers: HeaderList, body_kind: BodyKind) -> None:
        future = self._head_future
        if future is not None:
            try:
                future.set_result(None)
            except asyncio.InvalidStateError:  # done (cancelled, timed out): done() costs a call
                return  # the attempt failed: this head is not the session's response
        self.session.upstream_response = ResponseHeader(status, Headers(headers))
        self._resp_body_kind = body_kind

    def upstream_body(self, data: bytes) -> None:
        if self._streaming_response:
            self._send_response_body(data, False)
            return
        # The head is still with the hooks: hold the body, and stop reading only if it grows
        # (a small response usually arrives whole, and pausing costs two syscalls).
        self._resp_pending.append(data)
        self._resp_pending_size += len(data)
        if (
            self._resp_pending_size > RESPONSE_BUFFER_HIGH_WATER
            and self.upstream is not None
            and not self._upstream_read_paused
        ):
            self._upstream_read_paused = True
            self.upstream.pause_reading()

    def upstream_done(self) -> None:
        self.response_complete = True
        if self._streaming_response and not self._tunnel:  # a tunnel ends its streams itself
            try:
                self._send_response_body(b"", True)
            except Exception as exc:  # a body filter's last call: the request ends with it
                error = ProxyError(ErrorType.INTERNAL_ERROR, ErrorSource.INTERNAL, repr(exc))
                self.upstream_failed(error.caused_by(exc))
                return
        future = self._done_future
        if future is not None and not future.done():
            future.set_result(None)

    def upstream_failed(self, error: ProxyError) -> None:
        for future in (self._head_future, self._done_future):
            if future is not None and not future.done():
                future.set_exception(error)
                return
        # Between the head and the wait for the body's end: the request task picks it up.
        self._failure = error

    def upstream_write_paused(self, paused: bool) -> None:
        self._upstream_paused = paused
        conn = self.conn
        upstream = self.upstream
        deadlines = self.service.connections.deadlines
        if paused:
            conn.pause_reading_for(self)
            timeout = self.service.write_timeout
            if timeout and upstream is not None:
                deadlines.set(conn.loop, upstream, timeout)  # then write_timed_out
        else:
            conn.resume_reading_for(self)
            if upstream is not None:
                deadlines.clear(upstream)

    def write_timed_out(self) -> None:
        """The upstream took no request byte for ``write_timeout`` (its deadline passed)."""
        if self.upstream is None or not self._upstream_paused:
            return
        self._abandon_upstream(
            ProxyError(
                ErrorType.WRITE_TIMEDOUT,
                ErrorSource.UPSTREAM,
                f"upstream read nothing for {self.service.write_timeout}s",
            )
        )

    def deadline_passed(self) -> None:
        """The response head's ``read_timeout`` (set by the phases), or the body's."""
        if self._done_future is not None:
            self._read_timed_out()
            return
        future = self._head_future
        peer = self.session.peer
        if future is None or future.done() or peer is None:
            return
        seconds = peer.read_timeout or self.service.read_timeout
        future.set_exception(
            ProxyError(
                ErrorType.READ_TIMEDOUT,
                ErrorSource.UPSTREAM,
                f"no response head from {peer.addr} within {seconds}s",
            )
        )

    def _read_timed_out(self) -> None:
        """The response-body inactivity check (armed by ``wait_response_end``)."""
        if self.response_complete or self._done_future is None or self._done_future.done():
            return
        if self.upstream is None:
            return
        if self._activity() != self._read_mark or self._upstream_read_paused:
            self._arm_read_timeout()
            return
        if self._tunnel:  # an idle tunnel just ends, as nginx's proxy_read_timeout ends it
            self.tunnel_closed()
            return
        self._abandon_upstream(
            ProxyError(
                ErrorType.READ_TIMEDOUT,
                ErrorSource.UPSTREAM,
                f"no response body byte for {self.service.read_timeout}s",
            )
        )

    def _activity(self) -> int:
        """Bytes moved so far: from the upstream, or both ways once a tunnel is open."""
        if self._tunnel:
            return self._tunnel_bytes
        upstream = self.upstream
        return upstream.received if upstream is not None else 0

    def _arm_read_timeout(self) -> None:
        timeout = self.service.read_timeout
        if timeout:
            self._read_mark = self._activity()
            self.service.connections.deadlines.set(self.conn.loop, self, timeout)

    def refuse(self, error: ProxyError) -> None:
        """lbx answered this request itself while reading its body (a limit, a malformed chunk):
        the answer is written; stop the upstream exchange, whose request was cut short (its
        connection is closed, never pooled), and end the request with ``error``."""
        self.refusal = error
        self.session.response_status = error.status
        self.response_started = self.response_complete = True
        self._abandon_upstream(error)

    def downstream_lost(self) -> None:
        """The client went away: stop the upstream exchange and wake the request task."""
        self._abandon_upstream(
            ProxyError(ErrorType.CONNECTION_CLOSED, ErrorSource.DOWNSTREAM, "client closed")
        )

    def _abandon_upstream(self, error: ProxyError) -> None:
        """End the upstream exchange with ``error``: its connection is closed, never pooled."""
        upstream = self.upstream
        if upstream is not None:
            upstream.close()
        self.upstream_failed(error)

    def downstream_writable(self, writable: bool) -> None:
        """Back-pressure from the client: pause or resume reading the upstream response."""
        upstream = self.upstream
        if upstream is None or not self._streaming_response:
            return
        if writable and self._upstream_read_paused:
            self._upstream_read_paused = False
            upstream.resume_reading()
        elif not writable and not self._upstream_read_paused:
            self._upstream_read_paused = True
            upstream.pause_reading()

    # -- response to the client --------------------------------------------------------------
    def send_response_head(self, head: ResponseHeader) -> None:
        """Frame and send ``head``; body bytes that arrived meanwhile follow at once."""
        if self.session.upgrade is not None and head.status == 101:
            self._open_tunnel(head)
            return
        hooks = self.service.hooks
        body_kind = self._resp_body_kind
        framing: HeaderList = []
        whole: bytes | None = None
        if body_kind is BodyKind.NONE:
            mode = BodyKind.NONE
            if hooks.response_body_filter is not None and self.response_complete:
                whole = self._filter_whole_body()  # its end, while an error can still be a 500
        elif hooks.response_body_filter is None:
            mode = (
                BodyKind.CONTENT_LENGTH
                if body_kind is BodyKind.CONTENT_LENGTH
                else self._length_unknown(head, framing)
            )
        elif self.response_complete:
            # The whole body is already here: filter it now and send its real length, instead
            # of re-framing a response whose filtered length nobody knows in advance.
            whole = self._filter_whole_body()
            head.headers._drop(b"content-length")
            framing.append((b"Content-Length", b"%d" % len(whole)))
            mode = BodyKind.CONTENT_LENGTH
        else:
            mode = self._length_unknown(head, framing)
        self._resp_mode = mode
        self._mark_started(head.status)
        if self.h2 and mode is not BodyKind.NONE:
            mode = self._resp_mode = BodyKind.FRAMES  # DATA frames; Content-Length stays if known
        if self.service.via:
            head.headers.raw.append((b"Via", b"1.1 lbx"))
        if not self.keep_alive:
            framing.append((b"Connection", b"close"))
        elif self.session.req_header.version == "1.0":
            framing.append((b"Connection", b"keep-alive"))
        # One write for the head and whatever body already arrived: a syscall per request less.
        parts: list[bytes] = []
        self._streaming_response = True
        if whole is not None:
            if whole and mode is not BodyKind.NONE:  # (a 204's filter may return bytes)
                self.session.body_bytes_sent += len(whole)
                parts.append(whole)
        else:
            self._collected = parts
            pending, self._resp_pending = self._resp_pending, []
            self._resp_pending_size = 0
            for chunk in pending:
                self._send_response_body(chunk, False)
            if self.response_complete:
                self._send_response_body(b"", True)
            self._collected = None
        self.conn.send_head(head, framing, parts, self.response_complete or mode is BodyKind.NONE)
        if self._upstream_read_paused and self.upstream is not None and self.conn.writable:
            self._upstream_read_paused = False
            self.upstream.resume_reading()

    def _length_unknown(self, head: ResponseHeader, framing: HeaderList) -> BodyKind:
        """Frame a body whose length is not known yet: chunked, or to the close for HTTP/1.0
        (HTTP/2: DATA frames until END_STREAM)."""
        head.headers._drop(b"content-length")
        if self.h2:
            return BodyKind.FRAMES
        if self.session.req_header.version == "1.1":
            framing.append((b"Transfer-Encoding", b"chunked"))
            return BodyKind.CHUNKED
        self.keep_alive = False
        return BodyKind.CLOSE_DELIMITED

    def _filter_whole_body(self) -> bytes:
        """Run the response body filters over a body that arrived whole (the last chunk ends
        the stream); returns what the client gets."""
        hook = self.service.hooks.response_body_filter
        assert hook is not None
        pending, self._resp_pending = self._resp_pending, []
        self._resp_pending_size = 0
        if not pending:
            return hook.chain(self.session, b"", True, self.session.ctx)
        session, last = self.session, len(pending) - 1
        return b"".join(
            [hook.chain(session, chunk, i == last, session.ctx) for i, chunk in enumerate(pending)]
        )

    # -- upgraded connections (WebSocket...): bytes both ways until either side closes ----------
    def _open_tunnel(self, head: ResponseHeader) -> None:
        self._mark_started(101)
        self.keep_alive = False  # after the tunnel, the connection is gone
        self._tunnel = True
        self._streaming_response = True
        pending, self._resp_pending = self._resp_pending, []
        self._resp_pending_size = 0
        head.headers._drop(b"connection")
        early = self._to_client(b"".join(pending), False)
        self.conn.send_head(head, [(b"Connection", b"upgrade")], [early] if early else [], False)
        self.session.body_bytes_sent += len(early)
        upstream = self.upstream
        # Requests that offer an Upgrade always go over HTTP/1.1 (``ProxyService._connection``).
        assert isinstance(upstream, UpstreamConnection)
        self.conn.start_tunnel(self, upstream)
        if self._upstream_read_paused and self.conn.writable:
            self._upstream_read_paused = False
            upstream.resume_reading()

    # The body filters see tunnel bytes too (as Pingora's do): each direction is one body,
    # whose end (``end_of_stream``) comes with the half-close or the close of the tunnel.
    def _to_client(self, data: bytes, end: bool) -> bytes:
        hooks = self.service.hooks
        if hooks.response_body_filter is not None:
            return hooks.response_body_filter.chain(self.session, data, end, self.session.ctx)
        return data

    def _to_upstream(self, data: bytes, end: bool) -> bytes:
        hooks = self.service.hooks
        if hooks.request_body_filter is not None:
            return hooks.request_body_filter.chain(self.session, data, end, self.session.ctx)
        return data

    def tunnel_data(self, data: bytes) -> None:
        """Bytes from the upstream side of a tunnel."""
        self._tunnel_bytes += len(data)
        if self._tunnel:
            data = self._to_client(data, False)
            if data:
                self.session.body_bytes_sent += len(data)
                self.conn.write(data)
        else:  # the 101 is still with the response hooks
            self.upstream_body(data)

    def tunnel_request_data(self, data: bytes) -> None:
        """Bytes from the client side of a tunnel."""
        self._tunnel_bytes += len(data)
        self.session.body_bytes_read += len(data)
        data = self._to_upstream(data, False)
        if data and self.upstream is not None:
            self.upstream.write(data)

    def tunnel_request_eof(self) -> None:
        """The client finished sending: pass the half-close on to the upstream."""
        self._end_request_stream()
        upstream = self.upstream
        if self._tunnel_eofs == 3 or upstream is None or not upstream.write_eof():
            self.tunnel_closed()

    def tunnel_eof(self) -> None:
        """The upstream finished sending: pass the half-close on to the client."""
        self._end_response_stream()
        if self._tunnel_eofs == 3 or not self.conn.write_eof():
            self.tunnel_closed()

    def _end_request_stream(self) -> None:
        """The client-to-upstream direction is over: the filters' last word goes out."""
        if self._tunnel_eofs & 1:
            return
        self._tunnel_eofs |= 1
        last = self._to_upstream(b"", True)
        if last and self.upstream is not None:
            self.upstream.write(last)

    def _end_response_stream(self) -> None:
        """The upstream-to-client direction is over: the filters' last word goes out."""
        if self._tunnel_eofs & 2:
            return
        self._tunnel_eofs |= 2
        last = self._to_client(b"", True)
        if last:
            self.session.body_bytes_sent += len(last)
            self.conn.write(last)

    def tunnel_closed(self) -> None:
        """Either side closed: the tunnel (and this request) is over."""
        if self.response_complete:
            return  # both sides reported the end
        if self._tunnel:
            self._end_request_stream()
            self._end_response_stream()
        upstream = self.upstream
        if upstream is not None:
            upstream.close()
        self.upstream_done()

    def _send_response_body(self, data: bytes, end: bool) -> None:
        hooks = self.service.hooks
        if hooks.response_body_filter is not None:
            data = hooks.response_body_filter.chain(self.session, data, end, self.session.ctx)
        mode = self._resp_mode
        if data and mode is not BodyKind.NONE:
            self.session.body_bytes_sent += len(data)
            self._emit(encode_chunk(data) if mode is BodyKind.CHUNKED else data)
        if end:
            if mode is BodyKind.CHUNKED:
                self._emit(LAST_CHUNK)
            elif mode is BodyKind.FRAMES and self._collected is None:
                self.conn.end_response(self.response_trailers)  # else send_head ends it

    def _emit(self, data: bytes) -> None:
        """Write response bytes, or collect them for the head's write (``send_response_head``)."""
        collected = self._collected
        if collected is None:
            self.conn.write(data)
        else:
            collected.append(data)

    def new_futures(self) -> asyncio.Future[None]:
        """A new attempt: the future of its response head (its failures come through it)."""
        future = self._head_future = self.conn.loop.create_future()
        self._done_future = None
        self._failure = None
        return future

    @property
    def failed(self) -> bool:
        """The upstream exchange failed after its head (``wait_response_end`` raises it)."""
        return self._failure is not None

    async def wait_response_end(self) -> None:
        """Wait until the upstream response body has been relayed (or raise its failure)."""
        if self._failure is not None:
            raise self._failure
        if self.response_complete:
            return
        self._done_future = self.conn.loop.create_future()
        self._arm_read_timeout()
        try:
            await self._done_future
        finally:
            self.service.connections.deadlines.clear(self)


async def _finish_logging(pending: Awaitable[None], exchange: Exchange) -> None:
    try:
        await pending
    except Exception:
        log.exception("logging hook failed, %s", exchange.session.request_summary())
    exchange.finish()
