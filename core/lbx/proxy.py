"""The request path: the downstream HTTP/1.1 protocol and the phase runner (Pingora's ProxyHttp).

``DownstreamProtocol`` parses client bytes with httptools and creates a ``Session`` per request;
``ProxyService.handle`` runs the phases for it in Pingora's order, calling only the hooks that
have impls (resolved once in ``RequestHooks``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import httptools
import pluggy

from lbx import _hookcall, hashkey
from lbx._hookcall import Pending
from lbx.errors import ErrorSource, ErrorType, ProxyError
from lbx.http import (
    HOP_BY_HOP,
    LOOKALIKE_FIELD,
    PLAIN_FIELD,
    UNDERSCORES_MODES,
    HeaderList,
    Headers,
    RequestHeader,
    connection_tokens,
    error_response,
    field_kind,
    lower_name,
    path_escapes_ok,
    request_line_is_http,
    serialize_request,
    upgrade_offer,
)
from lbx.peer import Peer
from lbx.session import RequestBody, Session
from lbx.upstream import ConnectionPool, Connector, NoParserCallbacks, UpstreamConnection

if TYPE_CHECKING:
    from lbx.config import ServiceConfig
    from lbx.lb import Backend, LoadBalancer

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

MAX_SELECTION_ITERATIONS = 256
"""How many candidates a selector may offer before the request fails (Pingora's examples)."""

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
        self.header_timeout = config.header_timeout
        self.body_timeout = config.body_timeout
        self.write_timeout = config.write_timeout
        self.upgrades = frozenset(p.lower().encode("latin-1") for p in config.upgrades) - {b"h2c"}
        self.underscores = UNDERSCORES_MODES.index(config.underscores_in_headers)
        """0: pass (look-alikes dropped), 1: drop, 2: reject (``underscores_in_headers``)."""
        self.keepalive_requests = config.keepalive_requests
        self.max_connections = config.max_connections
        self.open_connections = 0
        self.max_request_line = config.max_request_line
        self.max_header_size = config.max_header_size
        self.max_headers = config.max_headers
        # What a head may take while it arrives in pieces (request line, fields, line ends).
        self.max_head_bytes = (
            config.max_request_line + config.max_header_size + 4 * config.max_headers + 1024
        )
        self.max_body_size = config.max_body_size
        self.max_upstream_connections = config.max_upstream_connections
        self.upstream_queue_timeout = config.upstream_queue_timeout
        self.via = config.via
        modes = {
            b"x-forwarded-for": config.x_forwarded_for,
            b"x-forwarded-proto": config.x_forwarded_proto,
            b"forwarded": config.forwarded,
        }
        self.special_fields = frozenset(
            {b"content-length", b"host", b"expect"}
            | {name for name, mode in modes.items() if mode != "off"}
        )
        """Request fields ``on_headers_complete`` looks at (one set lookup per field)."""
        self.append_forwarding = {name: mode == "append" for name, mode in modes.items()}
        titles = {
            b"x-forwarded-for": b"X-Forwarded-For",
            b"x-forwarded-proto": b"X-Forwarded-Proto",
            b"forwarded": b"Forwarded",
        }
        self.forwarding_fields = [
            (name, titles[name]) for name, mode in modes.items() if mode != "off"
        ]
        """The forwarding fields lbx writes, (lower-case name, name) in this order."""
        self._trusted_networks = (
            None
            if config.trusted_proxies is None
            else [ipaddress.ip_network(n, strict=False) for n in config.trusted_proxies]
        )
        self.upstream_host = config.host.encode("latin-1") if config.host else None
        self._peers: dict[Any, Peer] = {}
        self._hash_key = hashkey.key_function(config.hash_key)

    def selection_key(self, session: Session, ctx: dict[str, Any]) -> bytes:
        """The key for hashing selection: the ``selection_key`` hook, else ``hash_key``."""
        if self.hooks.selection_key is not None:
            key = self.hooks.selection_key.call_first(session, ctx)
            if key is not None:
                return bytes(key)
        return self._hash_key(session)

    def default_peer(self, session: Session, ctx: dict[str, Any]) -> Peer | None:
        """The built-in ``upstream_peer`` (``lbx.builtin.default_peer``): the next ready backend
        of this service's load balancer, never one that already failed to connect."""
        load_balancer = self.load_balancer
        if load_balancer is None:
            return None
        tried = session.tried
        if tried:
            backend = load_balancer.select_with(
                self.selection_key(session, ctx),
                MAX_SELECTION_ITERATIONS,
                lambda candidate, ready: ready and candidate not in tried,
            )
            if backend is None:
                return None  # every ready backend was tried: the request fails with the last error
        else:
            backend = load_balancer.select(
                self.selection_key(session, ctx), MAX_SELECTION_ITERATIONS
            )
        if backend is None:
            raise ProxyError.http_status(
                503, f"no ready backend in service {self.name!r} (all unhealthy or disabled)"
            )
        if log.isEnabledFor(logging.DEBUG):
            log.debug("upstream peer is: %r", backend)
        return self.peer_for(backend)

    def is_trusted(self, client_ip: str) -> bool:
        """Whether forwarding fields from this client are kept (``trusted_proxies``)."""
        networks = self._trusted_networks
        if networks is None:
            return True
        try:
            address = ipaddress.ip_address(client_ip)
        except ValueError:  # a Unix socket client
            return False
        return any(address in network for network in networks)

    def protocol_factory(self) -> DownstreamProtocol:
        return DownstreamProtocol(self)

    def peer_for(self, backend: Any) -> Peer:
        """The ``Peer`` for a backend of this service (cached: one object per backend)."""
        peer = self._peers.get(backend)
        if peer is None:
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
                done = hooks.early_request_filter.run(session, ctx)
                if type(done) is Pending:
                    await done
            if hooks.request_filter is not None:
                answered = hooks.request_filter.run(session, ctx)
                if type(answered) is Pending:
                    answered = await answered
            else:
                answered = None
            if answered is True:
                if not session.response_written:
                    raise ProxyError(
                        ErrorType.INTERNAL_ERROR,
                        ErrorSource.INTERNAL,
                        "request_filter returned True without sending a response",
                    )
            else:
                proceed = None
                if hooks.proxy_upstream_filter is not None:
                    proceed = hooks.proxy_upstream_filter.run(session, ctx)
                    if type(proceed) is Pending:
                        proceed = await proceed
                if proceed is False:
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
        refusal = session._refusal
        if refusal is not None:
            # lbx answered while reading the body (a limit, a malformed chunk): whatever the
            # phases then ran into (a client gone, no upstream) is the same request's one end.
            error = refusal
        if error is not None:
            await self._fail(session, ctx, error)
        if hooks.logging is not None:
            try:
                done = hooks.logging.run(session, ctx, error)
                if type(done) is Pending:
                    await done
            except Exception:
                log.exception("logging hook failed, %s", session.request_summary())
        session._conn.request_finished(session)

    async def _proxy(self, session: Session, ctx: dict[str, Any]) -> None:
        hooks = self.hooks
        last: ProxyError | None = None
        while True:
            session.tries += 1
            peer = None
            if hooks.upstream_peer is not None:
                peer = hooks.upstream_peer.run(session, ctx)
                if type(peer) is Pending:
                    peer = await peer
            if peer is None:
                if last is not None:
                    # A retry found no other peer: the request fails with the last error.
                    raise last
                raise ProxyError(
                    ErrorType.NO_UPSTREAM,
                    ErrorSource.INTERNAL,
                    f"no upstream_peer impl chose a peer for service {self.name!r}",
                    status=502,
                )
            session.peer = peer
            tracked = self._track_start(peer)
            try:
                last = await self._attempt(session, ctx, peer)
            finally:
                if tracked is not None:
                    self._track_finish(session, tracked)
            if last is None:
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

    async def _attempt(
        self, session: Session, ctx: dict[str, Any], peer: Peer
    ) -> ProxyError | None:
        """One upstream attempt; returns the error when it failed and a retry was decided."""
        hooks = self.hooks
        pool = self.connector.pool
        conn = None if session._fresh else pool.take(peer)
        reused = conn is not None
        if conn is None:
            try:
                limit = self.max_upstream_connections
                if limit and pool.open_count(peer) >= limit:
                    conn = await pool.wait_for_slot(peer, limit, self.upstream_queue_timeout)
                    reused = conn is not None
                if conn is None:
                    conn = await self.connector.connect(peer)
            except ProxyError as exc:
                # Nothing was sent: by default another peer is tried (nginx's default).
                exc.retry = True
                if hooks.fail_to_connect is not None:
                    hooks.fail_to_connect.call_sync(session, peer, ctx, exc)
                if exc.retry and session.tries < self.max_retries and not session._conn.lost:
                    log.warning(
                        "Fail to proxy: %s, tries: %d, retry: true, %s",
                        exc,
                        session.tries,
                        session.request_summary(),
                    )
                    if peer.backend is not None:
                        if session.tried is None:
                            session.tried = []
                        session.tried.append(peer.backend)
                    return exc
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
                and not session._fresh
                and not conn.got_response_bytes
                and session.retry_safe
                and session.req_header.method in _IDEMPOTENT
            )
            if hooks.error_while_proxy is not None:
                hooks.error_while_proxy.call_sync(session, peer, ctx, exc, reused)
            if exc.retry and session.tries < self.max_retries and session.retry_safe:
                log.warning(
                    "Fail to proxy: %s, tries: %d, retry: true, %s",
                    exc,
                    session.tries,
                    session.request_summary(),
                )
                session.reset_attempt()
                session._fresh = True  # the retry opens a new connection
                return exc
            raise
        return None

    async def _exchange(
        self,
        session: Session,
        ctx: dict[str, Any],
        conn: UpstreamConnection,
        reused: bool,
        peer: Peer,
    ) -> None:
        hooks = self.hooks
        if hooks.connected_to_upstream is not None:
            done = hooks.connected_to_upstream.run(session, reused, peer, ctx)
            if type(done) is Pending:
                await done
        request = session.req_header
        if self.upstream_host is not None or hooks.upstream_request_filter is not None:
            request = RequestHeader(
                request.method, request.uri, Headers(list(request.headers.raw)), request.version
            )
            if self.upstream_host is not None:
                request.headers.insert(b"Host", self.upstream_host)
            if hooks.upstream_request_filter is not None:
                done = hooks.upstream_request_filter.run(session, request, ctx)
                if type(done) is Pending:
                    await done
        if session._conn.lost:
            pool_put = conn.reusable
            if pool_put:
                self.connector.pool.put(conn)
            raise ProxyError(ErrorType.CONNECTION_CLOSED, ErrorSource.DOWNSTREAM, "client closed")
        session.new_futures()
        session._upstream = conn
        conn.start(
            session,
            serialize_request(request, session._upstream_framing),
            request.method == "HEAD",
            session._upgrade_names,
        )
        session.start_request_body()
        head_future = session._head_future
        assert head_future is not None
        read_timeout = peer.read_timeout or self.read_timeout
        deadlines = self.connections.deadlines
        if read_timeout:
            deadlines.set(session._conn.loop, session, read_timeout, session.head_timed_out)
        try:
            await head_future
        finally:
            deadlines.clear(session)
        response = session.upstream_response
        assert response is not None
        session.head_time = time.monotonic()
        if hooks.upstream_response_filter is not None:
            done = hooks.upstream_response_filter.run(session, response, ctx)
            if type(done) is Pending:
                await done
        if hooks.response_filter is not None:
            done = hooks.response_filter.run(session, response, ctx)
            if type(done) is Pending:
                await done
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
                status = hooks.fail_to_proxy.run(session, ctx, error)
                if type(status) is Pending:
                    status = await status
            except Exception:
                log.exception("fail_to_proxy hook failed, %s", session.request_summary())
        if status is None:
            status = error.default_status()
        if status:
            # A client's mistake, or an answer a hook chose (a 403), is not lbx's error.
            chosen = error.etype is ErrorType.HTTP_STATUS and status < 500
            log.log(
                logging.INFO if chosen or error.source is ErrorSource.DOWNSTREAM else logging.ERROR,
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


class _Rejected(Exception):
    """Raised from a parser callback to stop parsing; the status is in ``_reject``."""


class _TooManyTrailers(Exception):
    """More trailer fields than ``max_headers``."""


# Timer states of a client connection (one deadline per connection at a time).
_NO_TIMER, _IDLE, _HEAD, _BODY, _LINGER = range(5)
LINGER_SECONDS = 2.0
"""After an error answer, how long unread request bytes are drained before the close (so the
client reads the answer instead of a reset)."""

_PLAIN_REQUEST_LINE = re.compile(rb"[^ \r\n]+ /[^%# \r\n]* HTTP/1\.1\r\n")
"""The plainest request line: an origin-form target without ``%`` or ``#``, HTTP/1.1."""
_HTTP_FIRST_LINE = re.compile(rb"[^\n]* HTTP/[0-9]\.[0-9]\r\n")
"""A read's first line is a request line naming HTTP (greedy: the protocol is found from the
line's end, whatever the target's length)."""

# RFC 9110 4.2.3 / RFC 3986 3.2.2: IP-literal or reg-name, optional port.
_HOST_RE = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*)(?::[0-9]*)?\Z")


_DETACHED_REQUEST_PARSER = httptools.HttpRequestParser(NoParserCallbacks())
"""What a closed connection keeps instead of its parser (which references the connection)."""


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
        self._max_headers = service.max_headers
        self._max_url = service.max_request_line
        self._trailers = -1
        """Trailer fields of the chunked request being read (-1: reading a head, not trailers)."""
        self._forwarding: list[tuple[bytes, bytes, bytes | None]] = []
        self._forwarded_for = b""
        self._head_bytes = 0
        self._fed = 0
        self._in_head = False
        self._chunk = b""
        """The read being parsed (empty between reads)."""
        self._feed_idle = False
        """The read being parsed started between requests: its first line is a request line."""
        self._line_first = False
        """The head being parsed started its read (after CR/LF at most)."""
        self._head_raw: list[bytes] | None = None
        """The reads of a head that spans several (bounded by the head limits)."""
        self._refusal: tuple[int, ProxyError, Session | None] | None = None
        """A refused pipelined request, answered once the requests before it are."""
        self._reject: tuple[int, str] | None = None
        self._discard = False
        self._requests = 0
        self._timer = _NO_TIMER
        self._body_mark = -1
        self._current: Session | None = None
        self._parsing: Session | None = None
        self._queue: list[Session] = []
        """Pipelined requests waiting their turn: a list, since an empty deque takes 760 bytes
        per connection and a pipeline is short (reading pauses while requests wait)."""
        self._task: asyncio.Task[None] | None = None
        """Runs the connection's requests (``_serve``); the loop keeps only a weak reference."""
        self._waiting: asyncio.Future[None] | None = None
        """What the task awaits between requests."""
        self._pause_reasons: set[object] = set()
        self._drain_waiter: asyncio.Future[None] | None = None
        self._close_when_idle = False
        self._client_ip = b""
        self._trusted = True
        self._scheme = b"http"
        self._good_host = b""
        self._last: Session | None = None
        """The most recent request parsed (an Upgrade request ends the HTTP input)."""
        self._early = b""
        """Bytes that followed an Upgrade request, held until the upstream answers it."""
        self._tunnel: Session | None = None
        """The request whose 101 turned this connection into a byte stream."""

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        # Kept: on Python 3.11 every get_running_loop() costs a getpid() syscall.
        self.loop = asyncio.get_running_loop()
        service = self.service
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
        if transport.get_extra_info("sslcontext") is not None:
            self._scheme = b"https"
        self._trusted = service.is_trusted(self.client_ip)
        if service.forwarding_fields:
            self._forwarding = [
                (lower, name, self._forwarding_value(lower))
                for lower, name in service.forwarding_fields
            ]
        service.connections.add(self)
        service.open_connections += 1
        if service.max_connections and service.open_connections > service.max_connections:
            log.warning(
                "service %s: %d client connections open, closing %s",
                service.name,
                service.max_connections,
                self.client_addr,
            )
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
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._chunk = b""
            offset = exc.args[0] if exc.args and isinstance(exc.args[0], int) else len(data)
            self._parser = httptools.HttpRequestParser(self)
            last = self._last
            if last is not None and last.upgrade is not None:
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
            reject, self._reject = self._reject, None
            if reject is None and isinstance(exc.__context__, _TooManyTrailers):
                reject = (431, "too many trailer fields")
            if reject is None:
                reject = (_parse_error_status(exc), f"malformed request: {exc}")
            self._bad_request(*reject)
            return
        self._chunk = b""  # a read is not kept: an idle connection holds no buffer
        if self._in_head:
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
        # The parser holds this protocol's callbacks, and the last request holds the protocol:
        # without these cycles reference counting frees the connection now, not the collector.
        self._parser = _DETACHED_REQUEST_PARSER
        self._last = None
        self._refusal = None
        self._head_raw = None
        service = self.service
        service.open_connections -= 1
        service.connections.remove(self)
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
        self._headers = []
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
            self._reject = (414, f"request target longer than {self._max_url} bytes")
            raise _Rejected

    def on_header(self, name: bytes, value: bytes) -> None:
        # Counted in on_headers_complete: a head is bounded by the read size (one piece) or by
        # data_received (several). Trailer fields are not forwarded, only counted.
        if self._trailers < 0:
            self._headers.append((name, value))
            return
        self._trailers += 1
        if self._trailers > self._max_headers:
            raise _TooManyTrailers

    def on_headers_complete(self) -> None:
        self._in_head = False
        service = self.service
        parser = self._parser
        method_bytes: bytes = parser.get_method()
        method = _METHODS.get(method_bytes)
        if method is None:
            method = method_bytes.decode("latin-1")
            if len(_METHODS) < 64:
                _METHODS[method_bytes] = method
        version: str = parser.get_http_version()
        keep_alive = bool(parser.should_keep_alive()) and not self._close_when_idle
        self._requests += 1
        if self._requests == service.keepalive_requests:
            keep_alive = False
        headers: HeaderList = []
        content_length = None
        te = None
        hosts = 0
        host = b""
        expect = None
        upgrade: bytes | None = None
        received: dict[bytes, list[bytes]] | None = None
        drop: set[bytes] | None = None
        underscored = False
        special = service.special_fields
        fields = self._headers
        for item in fields:
            name, value = item
            lower = lower_name(name)
            if lower in HOP_BY_HOP:
                if lower == b"transfer-encoding":
                    te = value if te is None else te + b"," + value
                elif lower == b"connection":
                    tokens = connection_tokens(value)
                    drop = tokens if drop is None else drop | tokens
                elif lower == b"upgrade":
                    upgrade = value if upgrade is None else upgrade + b"," + value
                continue
            kind = field_kind(lower)
            if kind != PLAIN_FIELD:
                # A backend may read "_" as "-" (CGI/WSGI): Content_Length must never reach it.
                mode = service.underscores
                if mode == 2 and b"_" in lower:
                    underscored = True
                if mode or kind == LOOKALIKE_FIELD:
                    continue
            if lower in special:
                if lower == b"host":
                    hosts += 1
                    host = value
                elif lower == b"content-length":
                    content_length = value
                    continue
                elif lower == b"expect":
                    expect = value
                    continue
                else:  # a forwarding field lbx writes itself
                    if received is None:
                        received = {}
                    received.setdefault(lower, []).append(value)
                    continue
            headers.append(item)
        url = self._url
        length = 0
        # The request line of a head that started its read is that read's first line: one match
        # tells it is the plainest (origin-form target without % or #, HTTP/1.1; llhttp also
        # takes RTSP/ and ICE/ lines). Anything else is checked in _check_head.
        plain_line = (
            self._line_first
            and self._head_bytes < 0
            and _PLAIN_REQUEST_LINE.match(self._chunk) is not None
        )
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
            # Anything but the plainest request: every rule is checked (raises _Rejected).
            headers, url, host, length = self._check_head(
                method,
                version,
                url,
                headers,
                hosts,
                host,
                te,
                content_length,
                expect,
                drop,
                upgrade is not None,
                underscored,
                plain_line,
            )
        for lower, field_name, ours in self._forwarding:
            values = received.get(lower) if received is not None else None
            if ours is None:  # Forwarded: the element names the host of this request
                ours = self._forwarded_for + _quoted_host(host)
            if values is not None and self._trusted and service.append_forwarding[lower]:
                values.append(ours)
                ours = b", ".join(values)
            headers.append((field_name, ours))
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
        offer = None
        if upgrade is not None and drop is not None and b"upgrade" in drop:
            offer = self._upgrade_offer(method, version, body_kind, upgrade)
            if offer is not None:
                framing = [*framing, (b"Connection", b"upgrade"), (b"Upgrade", offer[0])]
        head = RequestHeader(method, url.decode("latin-1"), Headers(headers), version)
        session = Session(self, service, head, body_kind, framing, keep_alive)
        if offer is not None:
            session.upgrade = offer[0].decode("latin-1")
            session._upgrade_names = offer[1]
        self._last = session
        if body_kind:
            if expect is not None and version == "1.1":
                session._expect_continue = 1
            self._body_mark = -1
            self._arm_timer(service.body_timeout, _BODY)
        elif self._timer:
            self._cancel_timer()
        self._parsing = session
        if self._current is None:
            self._start(session)
        else:
            self._queue.append(session)

    def _check_head(
        self,
        method: str,
        version: str,
        url: bytes,
        headers: HeaderList,
        hosts: int,
        host: bytes,
        te: bytes | None,
        content_length: bytes | None,
        expect: bytes | None,
        drop: set[bytes] | None,
        upgrade: bool,
        underscored: bool,
        plain_line: bool,
    ) -> tuple[HeaderList, bytes, bytes, int]:
        """The request rules beyond the plainest GET: (headers, target, host, body length)."""
        service = self.service
        problem = None
        if not plain_line and not self._request_line_is_http(url):
            problem = (400, NOT_HTTP)
        elif method == "CONNECT":
            problem = (405, "CONNECT is not proxied")
        elif version != "1.1" and version != "1.0":
            problem = (505, f"HTTP/{version} is not supported")
        elif te is not None and version == "1.0":
            problem = (400, "Transfer-Encoding in an HTTP/1.0 request")
        elif te is not None and te.strip().lower() != b"chunked":
            problem = (501, f"transfer coding {te.decode('latin-1')!r} is not supported")
        elif hosts > 1 or (hosts == 0 and version == "1.1"):
            problem = (400, "an HTTP/1.1 request needs exactly one Host field")
        elif host != self._good_host and _HOST_RE.match(host) is None:
            problem = (400, "invalid Host")
        elif drop and drop & _PROTECTED_FIELDS:
            problem = (400, "Connection names a field that cannot be dropped")
        elif underscored:
            problem = (400, "a header field name with '_' (underscores_in_headers: reject)")
        elif url[:1] != b"/" or url.find(b"#") >= 0:  # find: "in" would try b"#" as an int
            url, host, problem = _other_target(method, url, host)
        elif hosts:
            self._good_host = host
        length = 0
        if problem is not None:
            pass
        elif url.find(b"%") >= 0 and not path_escapes_ok(url.split(b"?", 1)[0]):
            problem = (400, "a broken %-escape or %00 in the request path")
        elif len(self._headers) > service.max_headers:
            problem = (431, f"more than {service.max_headers} header fields")
        elif sum(len(n) + len(v) for n, v in self._headers) > service.max_header_size:
            problem = (431, f"header fields larger than {service.max_header_size} bytes")
        elif content_length is not None:
            length = int(content_length)
            if service.max_body_size and length > service.max_body_size:
                problem = (413, f"request body of {length} bytes over the limit")
        if problem is not None:
            pass
        elif upgrade and (te is not None or length) and drop and b"upgrade" in drop:
            # httptools would take the body for upgraded-protocol bytes: refuse, never guess.
            problem = (400, "an Upgrade request with a body")
        elif expect is not None and expect.lower() != b"100-continue":
            problem = (417, "unsupported Expect")
        if problem is not None:
            self._reject = problem
            raise _Rejected
        if te is not None:
            self._trailers = 0  # fields after the body are trailers (bounded like the head's)
        if drop:
            headers = [item for item in headers if item[0].lower() not in drop]
        if hosts == 0:
            headers.append((b"Host", host))
        elif url is not self._url:  # absolute-form: Host comes from the target
            headers = [(n, host if n.lower() == b"host" else v) for n, v in headers]
        return headers, url, host, length

    def _upgrade_offer(
        self, method: str, version: str, body_kind: int, upgrade: bytes
    ) -> tuple[bytes, frozenset[bytes]] | None:
        """The ``Upgrade`` value lbx passes on and its protocol names, or None.

        Only a bodyless HTTP/1.1 GET may switch (RFC 9110 7.8, RFC 6455). The client's list is
        reduced to the service's ``upgrades:`` (``h2c`` never is one): ``websocket, h2c`` goes
        upstream as ``websocket``.
        """
        if method != "GET" or version != "1.1" or body_kind != RequestBody.NONE:
            return None
        return upgrade_offer(upgrade, self.service.upgrades)

    def _request_line_is_http(self, url: bytes) -> bool:
        """``request_line_is_http`` over the read (or reads) that hold this head's start."""
        if self._head_bytes < 0:
            region = self._chunk
            if self._line_first and _HTTP_FIRST_LINE.match(region) is not None:
                return True  # the usual case, without a search through the whole read
        elif self._head_raw is not None:
            region = b"".join(self._head_raw)
        else:  # not reached: a head spanning reads keeps them
            return False
        return request_line_is_http(region, url)

    def _forwarding_value(self, lower: bytes) -> bytes | None:
        """What this connection adds to a forwarding field (None: Forwarded, per request)."""
        if lower == b"x-forwarded-for":
            return self._client_ip
        if lower == b"x-forwarded-proto":
            return self._scheme
        if self.client_ip == "unix":
            node = b"unknown"
        elif ":" in self.client_ip:
            node = b'"[' + self._client_ip + b']"'
        else:
            node = self._client_ip
        self._forwarded_for = b"for=" + node + b";proto=" + self._scheme
        return None

    def on_body(self, body: bytes) -> None:
        session = self._parsing
        if session is not None:
            session.request_body(body)
            limit = self.service.max_body_size
            if limit and session.body_bytes_read > limit:
                self._refuse_body(413, "request body over the limit")

    def on_message_complete(self) -> None:
        session = self._parsing
        self._parsing = None
        if session is None:
            return
        if self._timer == _BODY:
            self._cancel_timer()
        session.request_body_end()
        if session is not self._current:
            # Pipelined: hold further input until the queued requests are answered.
            self.pause_reading_for("pipeline")

    # -- upgraded connections --------------------------------------------------------------
    def start_tunnel(self, session: Session, upstream: UpstreamConnection) -> None:
        """The upstream switched protocols: from now on client bytes go to it unparsed."""
        self._tunnel = session
        self._cancel_timer()
        early, self._early = self._early, b""
        if early:
            session.tunnel_request_data(early)
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
    def _start(self, session: Session) -> None:
        self._current = session
        waiter = self._waiting
        if waiter is not None:
            self._waiting = None
            waiter.set_result(None)
        elif self._task is None:
            self._task = self.loop.create_task(self._serve())
        # else the task is finishing the previous request, and takes this one next

    async def _serve(self) -> None:
        """The connection's task: its requests one after the other, then the next one's wait.

        One task per connection, not per request: creating a Task costs more than a request's
        phases with no hooks. Requests share the task's context variables, so per-request state
        belongs in ``ctx``.
        """
        handle = self.service.handle
        try:
            while True:
                session = self._current
                if session is not None:
                    await handle(session)  # ends with request_finished: the next one, or None
                elif self.lost:
                    break
                else:
                    waiter = self._waiting = self.loop.create_future()
                    await waiter  # a request (_start) or the end of the connection
        except BaseException:
            self.abort()  # cancelled, or a bug escaped handle(): the connection's state is unknown
            raise
        finally:
            self._task = None

    def request_finished(self, session: Session) -> None:
        """Called by the connection's task when a request is fully answered (or failed)."""
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
        error = _refusal_error(status, reason)
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
        session = self._parsing
        self._parsing = None
        self._discard = True
        if session is None or self.lost or self.transport is None:
            return
        error = _refusal_error(status, reason)
        if session is not self._current:
            # Pipelined: the requests before it are answered first (it is the last one read).
            if session in self._queue:
                self._queue.remove(session)
            self._refusal = (status, error, session)
            self.pause_reading_for("bad-request")
        elif session.response_written:
            self.abort()  # a response is on its way: a short one must not look complete
        else:
            self._refuse(status)
            session.refuse(error)  # its task ends the request, logged once, with this error

    def _refuse(self, status: int) -> None:
        """Answer ``status`` with ``Connection: close``, then linger and close."""
        transport = self.transport
        assert transport is not None
        transport.write(error_response(status, close=True))
        self._linger()

    def _log_refused(self, status: int, error: ProxyError, session: Session | None) -> None:
        """The ``logging`` hook for a request refused before its phases ran (nginx logs them):
        ``session`` if it was parsed, else one built from what was read of the head."""
        service = self.service
        log.info("Refused: %s, status: %d, from %s", error.context, status, self.client_addr)
        hook = service.hooks.logging
        if hook is None:
            return
        if session is None:
            head = self._head_read(error.context != NOT_HTTP)
            session = Session(self, service, head, RequestBody.NONE, [], False)
        session.response_status = status
        session._resp_started = session._resp_complete = True
        try:
            done = hook.run(session, session.ctx, error)
            if type(done) is Pending:
                self.loop.create_task(_finish_logging(done, session))
        except Exception:
            log.exception("logging hook failed, %s", session.request_summary())

    def _head_read(self, http: bool) -> RequestHeader:
        """What was read of a refused head: method, target (cut at ``LOGGED_TARGET_BYTES``),
        version and fields as far as the parser got (empty strings where it did not, and for
        the version of a line that is not ``http``)."""
        url = self._url
        method = version = ""
        if url:  # the method precedes the target
            method = self._parser.get_method().decode("latin-1")
            if http and (self._headers or not self._in_head):  # the request line was complete
                version = self._parser.get_http_version()
        target = url[:LOGGED_TARGET_BYTES].decode("latin-1")
        return RequestHeader(method, target, Headers(list(self._headers)), version)

    def _linger(self) -> None:
        """Stop writing, drain what the client still sends for a moment, then close."""
        transport = self.transport
        assert transport is not None
        self.lost = True  # nothing more is written
        self._discard = True
        if self._pause_reasons:
            self._pause_reasons.clear()
            transport.resume_reading()
        if transport.can_write_eof():
            transport.write_eof()
        self._arm_timer(LINGER_SECONDS, _LINGER)

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
            self._arm_timer(DRAIN_LINGER_SECONDS)

    def abort(self) -> None:
        if self.transport is not None and not self.lost:
            self.lost = True
            self.transport.abort()

    # -- timers (one deadline per connection, in the shared sweeper) -------------------------
    def _arm_timer(self, timeout: float | None = None, state: int = _IDLE) -> None:
        if timeout is None:
            timeout = self.service.keepalive_timeout
        if timeout:
            self._timer = state
            self.service.connections.deadlines.set(self.loop, self, timeout, self._on_timer)
        elif self._timer:
            self._cancel_timer()

    def _cancel_timer(self) -> None:
        self._timer = _NO_TIMER
        self.service.connections.deadlines.clear(self)

    def _on_timer(self) -> None:
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
            session = self._parsing
            if session is None:
                return
            if session.body_bytes_read != self._body_mark or self._pause_reasons:
                # Progress, or lbx itself stopped reading (back-pressure): wait again.
                self._body_mark = session.body_bytes_read
                self._arm_timer(self.service.body_timeout, _BODY)
                return
            self._refuse_body(408, "request body stalled")
        elif self._current is None:
            transport.close()
            self.lost = True


NOT_HTTP = "the request line names a protocol other than HTTP"

LOGGED_TARGET_BYTES = 1024
"""How much of a refused request's target the ``logging`` hook gets."""


def _refusal_error(status: int, reason: str) -> ProxyError:
    """The error a refused request ends with: the client's (``DOWNSTREAM``), with its status."""
    return ProxyError(ErrorType.HTTP_STATUS, ErrorSource.DOWNSTREAM, reason, status=status)


async def _finish_logging(pending: Pending, session: Session) -> None:
    try:
        await pending
    except Exception:
        log.exception("logging hook failed, %s", session.request_summary())


def _parse_error_status(exc: Exception) -> int:
    """The status for an httptools error: 505 for a version it rejects, else 400."""
    return 505 if "HTTP version" in str(exc) else 400


def _other_target(
    method: str, url: bytes, host: bytes
) -> tuple[bytes, bytes, tuple[int, str] | None]:
    """A target that is not origin-form: ``*`` for OPTIONS, or absolute-form (rewritten to
    origin-form; its authority becomes Host, RFC 9112 3.2.2). Anything else is a 400."""
    if b"#" in url:
        return url, host, (400, "a fragment in the request target")
    if url == b"*":
        return url, host, None if method == "OPTIONS" else (400, "'*' is only for OPTIONS")
    lowered = url[:8].lower()
    if lowered.startswith((b"http://", b"https://")):
        try:
            # Any: httptools' stub types the fields as bytes, but absent ones are None.
            parts: Any = httptools.parse_url(url)
        except httptools.HttpParserInvalidURLError:
            return url, host, (400, "invalid absolute-form target")
        if parts.userinfo or not parts.host:
            return url, host, (400, "invalid authority in the request target")
        authority = parts.host if b":" not in parts.host else b"[" + parts.host + b"]"
        if parts.port is not None:
            authority += b":%d" % parts.port
        if _HOST_RE.match(authority) is None:
            return url, host, (400, "invalid authority in the request target")
        target = parts.path or b"/"
        if parts.query is not None:
            target += b"?" + parts.query
        return target, authority, None
    return url, host, (400, "invalid request target")


def _quoted_host(host: bytes) -> bytes:
    """``;host="..."`` for a Forwarded element (empty without a Host)."""
    if not host:
        return b""
    return b';host="' + host.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


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
