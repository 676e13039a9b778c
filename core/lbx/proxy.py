"""The request path: the downstream HTTP/1.1 protocol and the phase runner (Pingora's ProxyHttp).

``DownstreamProtocol`` parses client bytes with httptools and creates a ``Session`` per request;
``ProxyService.handle`` runs the phases for it in Pingora's order, calling only the hooks that
have impls (resolved once in ``RequestHooks``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import httptools
import pluggy

from lbx import _hookcall, hashkey
from lbx.errors import ErrorSource, ErrorType, ProxyError
from lbx.http import (
    HOP_BY_HOP,
    HeaderList,
    Headers,
    RequestHeader,
    connection_tokens,
    error_response,
    serialize_request,
)
from lbx.session import RequestBody, Session
from lbx.upstream import ConnectionPool, Connector

if TYPE_CHECKING:
    from lbx.config import ServiceConfig
    from lbx.lb import Backend, LoadBalancer
    from lbx.peer import Peer

log = logging.getLogger("lbx.proxy")

PER_REQUEST_HOOKS = (
    "early_request_filter",
    "request_filter",
    "request_body_filter",
    "proxy_upstream_filter",
    "upstream_peer",
    "selection_key",
    "fail_to_connect",
    "connected_to_upstream",
    "upstream_request_filter",
    "error_while_proxy",
    "upstream_response_filter",
    "response_filter",
    "response_body_filter",
    "fail_to_proxy",
    "logging",
)

# Fields a client may not ask us to drop via Connection (RFC 9110 7.6.1; design-notes §4).
_PROTECTED_FIELDS = frozenset({b"host", b"content-length", b"transfer-encoding"})
DRAIN_LINGER_SECONDS = 1.0
"""On shutdown, how long an idle keep-alive connection stays open before it is closed."""

_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
_METHODS: dict[bytes, str] = {}


class RequestHooks:
    """The per-request hooks with impls, resolved once; a hook nobody implements is None."""

    __slots__ = PER_REQUEST_HOOKS

    early_request_filter: _hookcall.HookCaller | None
    request_filter: _hookcall.HookCaller | None
    request_body_filter: _hookcall.HookCaller | None
    proxy_upstream_filter: _hookcall.HookCaller | None
    upstream_peer: _hookcall.HookCaller | None
    selection_key: _hookcall.HookCaller | None
    fail_to_connect: _hookcall.HookCaller | None
    connected_to_upstream: _hookcall.HookCaller | None
    upstream_request_filter: _hookcall.HookCaller | None
    error_while_proxy: _hookcall.HookCaller | None
    upstream_response_filter: _hookcall.HookCaller | None
    response_filter: _hookcall.HookCaller | None
    response_body_filter: _hookcall.HookCaller | None
    fail_to_proxy: _hookcall.HookCaller | None
    logging: _hookcall.HookCaller | None

    def __init__(self, pm: pluggy.PluginManager) -> None:
        for name in PER_REQUEST_HOOKS:
            setattr(self, name, _hookcall.resolve(pm, name))


class Deadlines:
    """Coarse timeouts for many objects: one periodic sweep instead of a timer per request.

    A loop timer costs about 1.5 µs to arm and cancel, and every request needed two (response
    head, keep-alive idle); a deadline here is a dict entry, checked every ``RESOLUTION``.
    """

    RESOLUTION = 0.25

    def __init__(self) -> None:
        self._entries: dict[object, tuple[float, Callable[[], None]]] = {}
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def set(
        self,
        loop: asyncio.AbstractEventLoop,
        key: object,
        seconds: float,
        on_expire: Callable[[], None],
    ) -> None:
        """Call ``on_expire`` once ``seconds`` passed, unless ``clear(key)`` came first."""
        self._entries[key] = (loop.time() + seconds, on_expire)
        if self._handle is None:
            self._loop = loop
            self._handle = loop.call_later(self.RESOLUTION, self._sweep)

    def clear(self, key: object) -> None:
        self._entries.pop(key, None)

    def _sweep(self) -> None:
        loop = self._loop
        assert loop is not None
        now = loop.time()
        expired = [key for key, (deadline, _) in self._entries.items() if deadline <= now]
        for key in expired:
            entry = self._entries.pop(key, None)
            if entry is not None:
                entry[1]()
        self._handle = loop.call_later(self.RESOLUTION, self._sweep) if self._entries else None


class Connections:
    """Every open client connection of the process, for graceful shutdown."""

    def __init__(self) -> None:
        self.open: set[DownstreamProtocol] = set()
        self.deadlines = Deadlines()
        self.shutting_down = False
        self._all_closed: asyncio.Event | None = None

    def add(self, conn: DownstreamProtocol) -> None:
        self.open.add(conn)

    def remove(self, conn: DownstreamProtocol) -> None:
        self.open.discard(conn)
        if not self.open and self._all_closed is not None:
            self._all_closed.set()

    def begin_shutdown(self) -> None:
        """Close idle keep-alive connections; busy ones close after their current response."""
        self.shutting_down = True
        for conn in list(self.open):
            conn.close_when_idle()

    async def wait_closed(self) -> None:
        if not self.open:
            return
        self._all_closed = asyncio.Event()
        await self._all_closed.wait()

    def abort_all(self) -> None:
        for conn in list(self.open):
            conn.abort()


class ProxyService:
    """One configured service: its listeners share this load balancer, hooks and connector."""

    def __init__(
        self,
        config: ServiceConfig,
        load_balancer: LoadBalancer | None,
        hooks: RequestHooks,
        connector: Connector,
        connections: Connections,
        *,
        max_retries: int,
    ) -> None:
        self.config = config
        self.name = config.name
        self.load_balancer = load_balancer
        self.hooks = hooks
        self.connector = connector
        self.connections = connections
        self.max_retries = max(1, max_retries)
        self.read_timeout = config.read_timeout
        self.keepalive_timeout = config.keepalive_timeout
        self.upstream_host = config.host.encode("latin-1") if config.host else None
        self._peers: dict[Any, Peer] = {}
        self._hash_key = hashkey.key_function(config.hash_key)

    def selection_key(self, session: Session, ctx: dict[str, Any]) -> bytes:
        """The key for hashing selection: the ``selection_key`` hook, else ``hash_key``."""
        if self.hooks.selection_key is not None:
            key = self.hooks.selection_key.call_first(session=session, ctx=ctx)
            if key is not None:
                return bytes(key)
        return self._hash_key(session)

    def protocol_factory(self) -> DownstreamProtocol:
        return DownstreamProtocol(self)

    def peer_for(self, backend: Any) -> Peer:
        """The ``Peer`` for a backend of this service (cached: one object per backend)."""
        peer = self._peers.get(backend)
        if peer is None:
            from lbx.peer import Peer

            cfg = self.config
            peer = Peer(
                backend,
                tls=cfg.tls,
                sni=cfg.sni,
                verify_cert=cfg.verify_cert,
                verify_hostname=cfg.verify_hostname,
                connection_timeout=cfg.connect_timeout,
                read_timeout=cfg.read_timeout,
                idle_timeout=cfg.idle_timeout,
            )
            self._peers[backend] = peer
        return peer

    # -- the phases --------------------------------------------------------------------------
    async def handle(self, session: Session) -> None:
        """Run one request through every phase; always ends with ``logging``."""
        hooks = self.hooks
        ctx = session.ctx
        error: ProxyError | None = None
        try:
            if hooks.early_request_filter is not None:
                await hooks.early_request_filter(session=session, ctx=ctx)
            if (
                hooks.request_filter is not None
                and await hooks.request_filter(session=session, ctx=ctx) is True
            ):
                if not session.response_written:
                    raise ProxyError(
                        ErrorType.INTERNAL_ERROR,
                        ErrorSource.INTERNAL,
                        "request_filter returned True without sending a response",
                    )
            elif (
                hooks.proxy_upstream_filter is not None
                and await hooks.proxy_upstream_filter(session=session, ctx=ctx) is False
            ):
                if not session.response_written:
                    await session.respond_error(502)
            else:
                await self._proxy(session, ctx)
        except ProxyError as exc:
            error = exc
        except Exception as exc:
            log.exception("internal error, %s", session.request_summary())
            error = ProxyError(ErrorType.INTERNAL_ERROR, ErrorSource.INTERNAL, repr(exc))
            error.__cause__ = exc
        if error is not None:
            await self._fail(session, ctx, error)
        if hooks.logging is not None:
            try:
                await hooks.logging(session=session, ctx=ctx, error=error)
            except Exception:
                log.exception("logging hook failed, %s", session.request_summary())
        session._conn.request_finished(session)

    async def _proxy(self, session: Session, ctx: dict[str, Any]) -> None:
        hooks = self.hooks
        while True:
            session.tries += 1
            peer = None
            if hooks.upstream_peer is not None:
                peer = await hooks.upstream_peer(session=session, ctx=ctx)
            if peer is None:
                raise ProxyError(
                    ErrorType.NO_UPSTREAM,
                    ErrorSource.INTERNAL,
                    f"no upstream_peer impl chose a peer for service {self.name!r}",
                    status=502,
                )
            session.peer = peer
            tracked = self._track_start(peer)
            try:
                retry = await self._attempt(session, ctx, peer)
            finally:
                if tracked is not None:
                    self._track_finish(session, tracked)
            if not retry:
                return

    def _track_start(self, peer: Peer) -> tuple[LoadBalancer, Backend, float] | None:
        """Tell a selector that wants feedback (least connections, latency) about an attempt."""
        lb = self.load_balancer
        backend = peer.backend
        if lb is None or not lb.tracks or backend is None:
            return None
        lb.selector.on_start(backend)  # type: ignore[attr-defined]  # lb.tracks checked it
        return lb, backend, time.monotonic()

    def _track_finish(self, session: Session, tracked: tuple[LoadBalancer, Backend, float]) -> None:
        lb, backend, started = tracked
        head_time = session.head_time or time.monotonic()
        ok = session.upstream_response is not None and session.upstream_response.status < 500
        lb.selector.on_finish(backend, head_time - started, ok)  # type: ignore[attr-defined]

    async def _attempt(self, session: Session, ctx: dict[str, Any], peer: Peer) -> bool:
        """One upstream attempt; returns True when it failed and a retry was decided."""
        hooks = self.hooks
        pool = self.connector.pool
        conn = pool.take(peer)
        reused = conn is not None
        if conn is None:
            try:
                conn = await self.connector.connect(peer)
            except ProxyError as exc:
                if hooks.fail_to_connect is not None:
                    hooks.fail_to_connect.call_sync(session=session, peer=peer, ctx=ctx, error=exc)
                if exc.retry and session.tries < self.max_retries:
                    log.warning(
                        "Fail to proxy: %s, tries: %d, retry: true, %s",
                        exc,
                        session.tries,
                        session.request_summary(),
                    )
                    return True
                raise
            if session._conn.lost:
                pool.put(conn)
                raise ProxyError(
                    ErrorType.CONNECTION_CLOSED, ErrorSource.DOWNSTREAM, "client closed"
                ) from None
        try:
            await self._exchange(session, ctx, conn, reused, peer)
        except ProxyError as exc:
            conn.close()
            if exc.source is not ErrorSource.UPSTREAM or session.response_written:
                raise
            # A pooled connection may have been closed by the upstream just as we reused it:
            # sending again is safe if nothing came back and no body byte left lbx.
            exc.retry = (
                reused
                and not conn.got_response_bytes
                and session.retry_safe
                and session.req_header.method in _IDEMPOTENT
            )
            if hooks.error_while_proxy is not None:
                hooks.error_while_proxy.call_sync(
                    session=session, peer=peer, ctx=ctx, error=exc, client_reused=reused
                )
            if exc.retry and session.tries < self.max_retries and session.retry_safe:
                session.reset_attempt()
                return True
            raise
        return False

    async def _exchange(
        self,
        session: Session,
        ctx: dict[str, Any],
        conn: Any,
        reused: bool,
        peer: Peer,
    ) -> None:
        hooks = self.hooks
        if hooks.connected_to_upstream is not None:
            await hooks.connected_to_upstream(session=session, reused=reused, peer=peer, ctx=ctx)
        request = session.req_header
        if self.upstream_host is not None or hooks.upstream_request_filter is not None:
            request = RequestHeader(
                request.method, request.uri, Headers(list(request.headers.raw)), request.version
            )
            if self.upstream_host is not None:
                request.headers.insert(b"Host", self.upstream_host)
            if hooks.upstream_request_filter is not None:
                await hooks.upstream_request_filter(
                    session=session, upstream_request=request, ctx=ctx
                )
        session.new_futures()
        session._upstream = conn
        conn.start(
            session, serialize_request(request, session._upstream_framing), request.method == "HEAD"
        )
        session.start_request_body()
        head_future = session._head_future
        assert head_future is not None
        read_timeout = peer.read_timeout or self.read_timeout
        deadlines = self.connections.deadlines
        if read_timeout:
            deadlines.set(
                session._conn.loop,
                session,
                read_timeout,
                functools.partial(_time_out, head_future, peer, read_timeout),
            )
        try:
            await head_future
        finally:
            deadlines.clear(session)
        response = session.upstream_response
        assert response is not None
        session.head_time = time.monotonic()
        if hooks.upstream_response_filter is not None:
            await hooks.upstream_response_filter(
                session=session, upstream_response=response, ctx=ctx
            )
        if hooks.response_filter is not None:
            await hooks.response_filter(session=session, upstream_response=response, ctx=ctx)
        session.send_response_head(response)
        await session.wait_response_end()
        session._upstream = None
        if conn.reusable and session._body_done and session._streaming_request:
            self.connector.pool.put(conn)
        else:
            conn.close()

    async def _fail(self, session: Session, ctx: dict[str, Any], error: ProxyError) -> None:
        hooks = self.hooks
        status = None
        if hooks.fail_to_proxy is not None:
            try:
                status = await hooks.fail_to_proxy(session=session, ctx=ctx, error=error)
            except Exception:
                log.exception("fail_to_proxy hook failed, %s", session.request_summary())
        if status is None:
            status = error.default_status()
        if status:
            log.error(
                "Fail to proxy: %s, status: %d, tries: %d, retry: false, %s",
                error,
                status,
                session.tries,
                session.request_summary(),
            )
        conn = session._conn
        if session.response_written or not status or conn.lost:
            # A response already started (or the client is gone): the only honest signal left
            # is closing the connection, so a short body is never taken for a complete one.
            if session.response_written and not session._resp_complete:
                conn.abort()
            session.set_keepalive(False)
            return
        if error.source is ErrorSource.DOWNSTREAM:
            session.set_keepalive(False)
        await session.respond_error(status)


def _time_out(future: asyncio.Future[None], peer: Peer, seconds: float) -> None:
    if not future.done():
        future.set_exception(
            ProxyError(
                ErrorType.READ_TIMEDOUT,
                ErrorSource.UPSTREAM,
                f"no response head from {peer.addr} within {seconds}s",
            )
        )


class DownstreamProtocol(asyncio.Protocol):
    """One client connection: parses requests, runs one at a time, answers in order."""

    def __init__(self, service: ProxyService) -> None:
        self.service = service
        self.transport: asyncio.Transport | None = None
        self.loop: asyncio.AbstractEventLoop
        self.client_addr = ""
        self.client_ip = ""
        self.server_addr = ""
        self.lost = False
        self.writable = True
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._headers: HeaderList = []
        self._current: Session | None = None
        self._parsing: Session | None = None
        self._queue: deque[Session] = deque()
        self._pause_reasons: set[object] = set()
        self._drain_waiter: asyncio.Future[None] | None = None
        self._close_when_idle = False
        self._client_ip = b""

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        # Kept: on Python 3.11 every get_running_loop() costs a getpid() syscall.
        self.loop = asyncio.get_running_loop()
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            peer = transport.get_extra_info("peername")
            local = transport.get_extra_info("sockname")
            self.client_addr = _format_addr(peer)
            self.server_addr = _format_addr(local)
            self.client_ip = str(peer[0])
        else:
            self.client_addr = "unix"
            self.server_addr = "unix:" + str(transport.get_extra_info("sockname") or "")
            self.client_ip = "unix"
        self._client_ip = self.client_ip.encode("latin-1")
        self.service.connections.add(self)
        if self.service.connections.shutting_down:
            transport.close()
            return
        self._arm_timer()

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            # Upgrade is not proxied yet: the request was forwarded without it (hop-by-hop), so
            # whatever follows is parsed as the next request.
            offset = exc.args[0] if exc.args and isinstance(exc.args[0], int) else len(data)
            self._parser = httptools.HttpRequestParser(self)
            if offset < len(data):
                self.data_received(data[offset:])
        except httptools.HttpParserError as exc:
            self._bad_request(400, f"malformed request: {exc}")

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._cancel_timer()
        self.service.connections.remove(self)
        current = self._current
        if current is not None:
            current.downstream_lost()
        self._queue.clear()
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

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
        self._headers = []

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        # The idle timer also bounds how long a request head may take to arrive (slowloris).
        self._cancel_timer()
        parser = self._parser
        method_bytes: bytes = parser.get_method()
        method = _METHODS.get(method_bytes)
        if method is None:
            method = method_bytes.decode("latin-1")
            if len(_METHODS) < 64:
                _METHODS[method_bytes] = method
        version: str = parser.get_http_version()
        keep_alive = bool(parser.should_keep_alive()) and not self._close_when_idle
        headers: HeaderList = []
        content_length = None
        chunked = False
        hosts = 0
        forwarded_for: list[bytes] = []
        drop: set[bytes] | None = None
        for name, value in self._headers:
            lower = name.lower()
            if lower in HOP_BY_HOP:
                if lower == b"transfer-encoding":
                    chunked = True
                elif lower == b"connection":
                    tokens = connection_tokens(value)
                    drop = tokens if drop is None else drop | tokens
                continue
            if lower == b"content-length":
                content_length = value
                continue
            if lower == b"host":
                hosts += 1
            elif lower == b"x-forwarded-for":
                forwarded_for.append(value)
                continue
            headers.append((name, value))
        problem = None
        if method == "CONNECT":
            problem = (405, "CONNECT is not proxied")
        elif version not in ("1.1", "1.0"):
            problem = (505, f"HTTP/{version} is not supported")
        elif chunked and version == "1.0":
            problem = (400, "Transfer-Encoding in an HTTP/1.0 request")
        elif version == "1.1" and hosts != 1:
            problem = (400, "an HTTP/1.1 request needs exactly one Host field")
        elif drop and drop & _PROTECTED_FIELDS:
            problem = (400, "Connection names a field that cannot be dropped")
        if problem is not None:
            self._bad_request(*problem)
            return
        if drop:
            headers = [item for item in headers if item[0].lower() not in drop]
        forwarded_for.append(self._client_ip)
        headers.append((b"X-Forwarded-For", b", ".join(forwarded_for)))
        if chunked:
            body_kind = RequestBody.CHUNKED
            framing: HeaderList = [(b"Transfer-Encoding", b"chunked")]
        elif content_length is not None and content_length.strip() != b"0":
            body_kind = RequestBody.LENGTH
            framing = [(b"Content-Length", content_length.strip())]
        else:
            body_kind = RequestBody.NONE
            framing = [(b"Content-Length", b"0")] if content_length is not None else []
        head = RequestHeader(method, self._url.decode("latin-1"), Headers(headers), version)
        session = Session(self, self.service, head, body_kind, framing, keep_alive)
        self._parsing = session
        if self._current is None:
            self._start(session)
        else:
            self._queue.append(session)

    def on_body(self, body: bytes) -> None:
        if self._parsing is not None:
            self._parsing.request_body(body)

    def on_message_complete(self) -> None:
        session = self._parsing
        self._parsing = None
        if session is None:
            return
        session.request_body_end()
        if session is not self._current:
            # Pipelined: hold further input until the queued requests are answered.
            self.pause_reading_for("pipeline")

    # -- request life cycle ------------------------------------------------------------------
    def _start(self, session: Session) -> None:
        self._current = session
        session._task = self.loop.create_task(self.service.handle(session))

    def request_finished(self, session: Session) -> None:
        """Called by the request task when a request is fully answered (or failed)."""
        session._task = None
        if self._current is not session:
            return
        self._current = None
        transport = self.transport
        if self.lost or transport is None:
            return
        if not session.keep_alive or not session._body_done or self._close_when_idle:
            transport.close()
            self.lost = True
            return
        if self._queue:
            self._start(self._queue.popleft())
            if not self._queue:
                self.resume_reading_for("pipeline")
        else:
            self._arm_timer()

    def _bad_request(self, status: int, reason: str) -> None:
        log.info("%s from %s: %d", reason, self.client_addr, status)
        transport = self.transport
        if transport is None or self.lost:
            return
        if self._current is None:
            transport.write(error_response(status, close=True))
            transport.close()
            self.lost = True
        elif self._parsing is self._current:
            # The request in flight has a body we can no longer frame: cut it off.
            self.abort()
        else:
            # Answer the request in flight first; then the connection closes.
            self._close_when_idle = True
            self._queue.clear()
            self.pause_reading_for("bad-request")

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
        if not self._pause_reasons and self.transport is not None and not self.lost:
            self.transport.pause_reading()
        self._pause_reasons.add(reason)

    def resume_reading_for(self, reason: object) -> None:
        if reason not in self._pause_reasons:
            return
        self._pause_reasons.discard(reason)
        if not self._pause_reasons and self.transport is not None and not self.lost:
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
            self._cancel_timer()
            self._arm_timer(DRAIN_LINGER_SECONDS)

    def abort(self) -> None:
        if self.transport is not None and not self.lost:
            self.lost = True
            self.transport.abort()

    # -- timers ------------------------------------------------------------------------------
    def _arm_timer(self, timeout: float | None = None) -> None:
        if timeout is None:
            timeout = self.service.keepalive_timeout
        if timeout:
            self.service.connections.deadlines.set(self.loop, self, timeout, self._idle_timeout)

    def _cancel_timer(self) -> None:
        self.service.connections.deadlines.clear(self)

    def _idle_timeout(self) -> None:
        if self._current is None and self.transport is not None and not self.lost:
            self.transport.close()
            self.lost = True


def _format_addr(addr: Any) -> str:
    if isinstance(addr, tuple) and len(addr) >= 2:
        host = str(addr[0])
        return f"[{host}]:{addr[1]}" if ":" in host else f"{host}:{addr[1]}"
    return str(addr)


def build_connector(
    *, pool_size: int, idle_timeout: float, ca_file: str | None, connect_timeout: float
) -> Connector:
    """The process-wide connector and its idle pool."""
    return Connector(
        ConnectionPool(pool_size, idle_timeout), ca_file=ca_file, connect_timeout=connect_timeout
    )
