"""The phases of a request (Pingora's ProxyHttp): ``ProxyService.handle`` runs them in order.

A client protocol (``lbx.h1``) hands each request over as a ``Session``; ``handle`` calls the
hooks that have impls (resolved once in ``RequestHooks``), picks a peer, retries as the rules
allow, exchanges the request with the upstream and always ends with ``logging``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Collection
from typing import TYPE_CHECKING, Any, Final

import pluggy

from lbx import _hookcall, hashkey
from lbx._hookcall import suspends
from lbx.builtin import default_peer as builtin_default_peer
from lbx.connections import ClientOrigin, Connections, accepted
from lbx.errors import ErrorSource, ErrorType, ProxyError
from lbx.exchange import Exchange
from lbx.h1 import H1Downstream
from lbx.h2 import select_protocol
from lbx.h2pool import H2Pool
from lbx.h2upstream import H2UpstreamStream
from lbx.http import Headers, RequestHeader, is_final_status, serialize_request
from lbx.peer import HTTP_VERSION_ALPN, Peer
from lbx.pool import ConnectionPool
from lbx.request_rules import HeadRules, forwarding_values
from lbx.session import Session
from lbx.upstream import Connector, UpstreamConnection, declared_length

if TYPE_CHECKING:
    from lbx.config import ServiceConfig
    from lbx.downstream import ClientConnection
    from lbx.lb import Backend, LoadBalancer

monotonic: Final = time.monotonic  # compiled: a C static, not a module attribute per call

log: Final = logging.getLogger("lbx.proxy")

PER_REQUEST_HOOKS: Final = (
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

MAX_SELECTION_ITERATIONS: Final = 256
"""How many candidates a selector may offer before the request fails (Pingora's examples)."""

ORIGINS_KEPT: Final = 4096
"""Client origins (``ClientOrigin``) a service keeps before it starts over."""
_IDEMPOTENT: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
_HTTP_VERSIONS: Final = {"1": 1, "2": 2, "auto": HTTP_VERSION_ALPN}
"""``upstream_http_version`` as ``Peer.http_version``."""


class RequestHooks:
    """The per-request hooks with impls, resolved once; a hook nobody implements is None.

    ``upstream_peer`` is None too when the built-in ``default_peer`` is its only impl
    (``default_peer_only``): the phases then call the service's ``default_peer`` directly.
    """

    __slots__ = (*PER_REQUEST_HOOKS, "default_peer_only")

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
        peer = self.upstream_peer
        self.default_peer_only = (
            type(peer) is _hookcall.HookCaller  # not traced (LBX_DEBUG_HOOKS logs every call)
            and peer.only_calls(builtin_default_peer.upstream_peer)
        )
        if self.default_peer_only:
            self.upstream_peer = None


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
        if connector.h2_pool is None:
            connector.h2_pool = H2Pool(connector)
        self.h2_pool: H2Pool = connector.h2_pool
        self.connections = connections
        self.max_retries = max(1, max_retries)
        self.read_timeout = config.read_timeout
        self.keepalive_timeout = config.keepalive_timeout
        self.header_timeout = config.header_timeout
        self.body_timeout = config.body_timeout
        self.write_timeout = config.write_timeout
        self.rules = HeadRules(config)
        """What the request rules read of this service (``lbx.request_rules``)."""
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
        self._trusted_networks = (
            None
            if config.trusted_proxies is None
            else [ipaddress.ip_network(n, strict=False) for n in config.trusted_proxies]
        )
        self._origins: dict[tuple[str, str, bool], ClientOrigin] = {}
        """Client origins by (client IP, listener address, TLS), at most ``ORIGINS_KEPT``. Not
        runtime state (``lbx.reload.RUNTIME_STATE``): a reload starts it over, new rules."""
        self.upstream_host = config.host.encode("latin-1") if config.host else None
        self._peers: dict[Any, Peer] = {}
        self._hash_key = None if config.hash_key is None else hashkey.key_function(config.hash_key)
        self._debug = log.isEnabledFor(logging.DEBUG)
        """Whether each peer choice is logged (the level is set before servers are built)."""

    def selection_key(self, session: Session, ctx: dict[str, Any]) -> bytes:
        """The key for hashing selection: the ``selection_key`` hook, else ``hash_key``."""
        if self.hooks.selection_key is not None:
            key = self.hooks.selection_key.call_first(session, ctx)
            if key is not None:
                return bytes(key)
        hash_key = self._hash_key
        return b"" if hash_key is None else hash_key(session)

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
                503,
                f"no ready backend in service {self.name!r} (all unhealthy or disabled,"
                " or the selector offered none of the ready ones)",
            )
        if self._debug:
            log.debug("upstream peer is: %r", backend)
        return self.peer_for(backend)

    def forget_backends(self, current: Collection[Backend]) -> int:
        """The backend set changed to ``current``: drop the cached peers of backends that left
        (or changed weight); those whose address left are retired, their idle pooled
        connections closed now and the busy ones once their request is over. Returns how many
        idle connections were closed."""
        addresses = {backend.addr for backend in current}
        closed = 0
        for backend in [b for b in self._peers if b not in current]:
            peer = self._peers.pop(backend)
            if backend.addr not in addresses:
                peer.retired = True
                closed += self.connector.pool.close_idle(peer.pool_key)
        return closed

    def admit(self, conn: ClientConnection) -> bool:
        """Count a new client connection; False (logged) when it is one over
        ``max_connections``: the caller answers and closes it."""
        self.connections.add(conn)
        self.open_connections += 1
        if self.max_connections and self.open_connections > self.max_connections:
            log.warning(
                "service %s: %d client connections open, closing %s",
                self.name,
                self.max_connections,
                conn.client_addr,
            )
            return False
        return True

    def release(self, conn: ClientConnection) -> None:
        """A client connection admitted by ``admit`` is closed."""
        self.open_connections -= 1
        self.connections.remove(conn)

    def client_origin(self, transport: asyncio.BaseTransport) -> tuple[str, ClientOrigin]:
        """A new client connection's ``client_addr``, and what it shares with the other
        connections from its IP to its listener (made for the first of them)."""
        client_addr, server_addr, client_ip = accepted(transport)
        tls = transport.get_extra_info("sslcontext") is not None
        key = (client_ip, server_addr, tls)
        origins = self._origins
        origin = origins.get(key)
        if origin is None:
            if len(origins) >= ORIGINS_KEPT:
                origins.clear()  # bounded: many distinct clients start the cache over
            scheme = b"https" if tls else b"http"
            rules = self.rules
            forwarding = forwarding_values(rules, client_ip, scheme) if rules.forwarding else ()
            origin = ClientOrigin(client_ip, server_addr, self.is_trusted(client_ip), forwarding)
            origins[key] = origin
        return client_addr, origin

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

    def protocol_factory(self) -> asyncio.Protocol:
        """A new plaintext client connection's protocol (asyncio's ``protocol_factory``):
        HTTP/1.1, or with ``h2c: true`` whichever the connection preface tells."""
        if self.config.h2c:
            return select_protocol(self, tls=False)
        return H1Downstream(self)

    def tls_protocol_factory(self) -> asyncio.Protocol:
        """A new TLS client connection's protocol: HTTP/2 or HTTP/1.1, as ALPN chose."""
        return select_protocol(self, tls=True)

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
                http_version=_HTTP_VERSIONS[str(cfg.upstream_http_version)],
                max_h2_streams=cfg.max_h2_streams,
                h2_ping_interval=cfg.h2_ping_interval,
            )
            self._peers[backend] = peer
        return peer

    # -- the phases --------------------------------------------------------------------------
    async def handle(self, exchange: Exchange) -> None:
        """Run one request through every phase; always ends with ``logging``."""
        hooks = self.hooks
        session = exchange.session
        ctx = session.ctx
        error: ProxyError | None = None
        try:
            if hooks.early_request_filter is not None:
                done = hooks.early_request_filter.run(session, ctx)
                if suspends(done):
                    await done
            if hooks.request_filter is not None:
                answered = hooks.request_filter.run(session, ctx)
                if suspends(answered):
                    answered = await answered
            else:
                answered = None
            if answered is True:
                if not exchange.response_started:
                    raise ProxyError(
                        ErrorType.INTERNAL_ERROR,
                        ErrorSource.INTERNAL,
                        "request_filter returned True without sending a response",
                    )
            else:
                proceed = None
                if hooks.proxy_upstream_filter is not None:
                    proceed = hooks.proxy_upstream_filter.run(session, ctx)
                    if suspends(proceed):
                        proceed = await proceed
                if proceed is False:
                    if not exchange.response_started:
                        await exchange.respond_error(502)
                else:
                    await self._proxy(exchange, session, ctx)
        except ProxyError as exc:
            error = exc
        except Exception as exc:
            log.exception("internal error, %s", session.request_summary())
            error = ProxyError(ErrorType.INTERNAL_ERROR, ErrorSource.INTERNAL, repr(exc))
            error.__cause__ = exc
        refusal = exchange.refusal
        if refusal is not None:
            # lbx answered while reading the body (a limit, a malformed chunk): whatever the
            # phases then ran into (a client gone, no upstream) is the same request's one end.
            error = refusal
        if error is not None:
            await self._fail(exchange, session, ctx, error)
        if hooks.logging is not None:
            try:
                done = hooks.logging.run(session, ctx, error)
                if suspends(done):
                    await done
            except Exception:
                log.exception("logging hook failed, %s", session.request_summary())
        exchange.conn.request_finished(exchange)
        exchange.finish()

    async def _proxy(self, exchange: Exchange, session: Session, ctx: dict[str, Any]) -> None:
        hooks = self.hooks
        last: ProxyError | None = None
        while True:
            session.tries += 1
            chosen: Any = None  # Any: a hook's result may be something to await until awaited
            if hooks.default_peer_only:
                chosen = self.default_peer(session, ctx)
            elif hooks.upstream_peer is not None:
                chosen = hooks.upstream_peer.run(session, ctx)
                if suspends(chosen):
                    chosen = await chosen
            peer = chosen
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
                last = await self._attempt(exchange, session, ctx, peer)
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
        return lb, backend, monotonic()

    def _track_finish(self, session: Session, tracked: tuple[LoadBalancer, Backend, float]) -> None:
        lb, backend, started = tracked
        head_time = session.head_time or monotonic()
        ok = session.upstream_response is not None and session.upstream_response.status < 500
        lb.selector.on_finish(backend, head_time - started, ok)  # type: ignore[attr-defined]

    async def _attempt(
        self, exchange: Exchange, session: Session, ctx: dict[str, Any], peer: Peer
    ) -> ProxyError | None:
        """One upstream attempt; returns the error when it failed and a retry was decided."""
        hooks = self.hooks
        client = exchange.conn
        try:
            # An idle pooled connection is the usual case: taken without a coroutine.
            pooled = self._pooled(exchange, peer)
            if pooled is not None:
                conn: UpstreamConnection | H2UpstreamStream = pooled
                reused = True
            else:
                conn, reused = await self._connection(exchange, peer)
        except ProxyError as exc:
            # Nothing was sent: by default another peer is tried (nginx's default).
            exc.retry = True
            if hooks.fail_to_connect is not None:
                hooks.fail_to_connect.call_sync(session, peer, ctx, exc)
            if exc.retry and session.tries < self.max_retries and not client.lost:
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
        if client.lost:
            self._give_back(conn)
            raise ProxyError(
                ErrorType.CONNECTION_CLOSED, ErrorSource.DOWNSTREAM, "client closed"
            ) from None
        try:
            await self._exchange(exchange, session, ctx, conn, reused, peer)
        except ProxyError as exc:
            conn.close()
            if exc.source is not ErrorSource.UPSTREAM or exchange.response_started:
                raise
            # A pooled connection may have been closed by the upstream just as we reused it:
            # sending again is safe if nothing came back and no body byte left lbx.
            exc.retry = exchange.retry_safe and (
                (
                    reused
                    and not exchange.fresh
                    and not conn.got_response_bytes
                    and session.req_header.method in _IDEMPOTENT
                )
                # An HTTP/2 backend that says it did not process the stream (REFUSED_STREAM,
                # above its GOAWAY's last id): any method may go again (RFC 9113 8.7).
                or (isinstance(conn, H2UpstreamStream) and conn.unprocessed)
            )
            if hooks.error_while_proxy is not None:
                hooks.error_while_proxy.call_sync(session, peer, ctx, exc, reused)
            if exc.retry and session.tries < self.max_retries and exchange.retry_safe:
                log.warning(
                    "Fail to proxy: %s, tries: %d, retry: true, %s",
                    exc,
                    session.tries,
                    session.request_summary(),
                )
                exchange.reset_attempt()
                exchange.fresh = True  # the retry opens a new connection
                return exc
            raise
        except BaseException:  # a hook's error (or a cancellation): the connection is not reused
            conn.close()
            raise
        return None

    def _pooled(self, exchange: Exchange, peer: Peer) -> UpstreamConnection | None:
        """An idle HTTP/1.1 connection to ``peer`` from the pool, when this attempt may reuse
        one and goes over HTTP/1.1."""
        if exchange.fresh or (peer.http_version != 1 and exchange.upgrade_names is None):
            return None
        return self.connector.pool.take(peer)

    async def _connection(
        self, exchange: Exchange, peer: Peer
    ) -> tuple[UpstreamConnection | H2UpstreamStream, bool]:
        """A connection (HTTP/1.1) or a stream (HTTP/2) to ``peer`` when the pool had none
        (``_pooled``), and whether it served a request before. A request that offers an Upgrade
        goes over HTTP/1.1 (HTTP/2 has no ``101``)."""
        if peer.http_version != 1 and exchange.upgrade_names is None:
            got = await self.h2_pool.stream(peer, exchange.fresh)
            if type(got) is H2UpstreamStream:
                return got, got.reused
            if got is not None:
                return got, False  # TLS's ALPN chose HTTP/1.1 on this new connection
            # None: this peer's ALPN chose HTTP/1.1 before; its pooled connections serve it.
        pool = self.connector.pool
        conn = None if exchange.fresh else pool.take(peer)
        if conn is not None:
            return conn, True
        limit = self.max_upstream_connections
        if limit and pool.open_count(peer) >= limit:
            conn = await pool.wait_for_slot(peer, limit, self.upstream_queue_timeout)
            if conn is not None:
                return conn, True
        return await self.connector.connect(peer), False

    def _give_back(self, conn: UpstreamConnection | H2UpstreamStream) -> None:
        """The attempt is over: a complete HTTP/1.1 connection goes back to the pool, a stream
        gives its slot back to its HTTP/2 connection (reset if unfinished), the rest close."""
        if type(conn) is UpstreamConnection and conn.reusable:
            self.connector.pool.put(conn)
        else:
            conn.close()

    async def _exchange(
        self,
        exchange: Exchange,
        session: Session,
        ctx: dict[str, Any],
        conn: UpstreamConnection | H2UpstreamStream,
        reused: bool,
        peer: Peer,
    ) -> None:
        hooks = self.hooks
        request = session.req_header
        if hooks.connected_to_upstream is not None:
            done = hooks.connected_to_upstream.run(session, reused, peer, ctx)
            if suspends(done):
                await done
        if self.upstream_host is not None or hooks.upstream_request_filter is not None:
            raw = list(request.headers.raw)
            request = RequestHeader(request.method, request.uri, Headers(raw), request.version)
            if self.upstream_host is not None:
                request.headers.insert(b"Host", self.upstream_host)
            if hooks.upstream_request_filter is not None:
                done = hooks.upstream_request_filter.run(session, request, ctx)
                if suspends(done):
                    await done
        client = exchange.conn
        if client.lost:  # (_attempt closes the connection)
            raise ProxyError(ErrorType.CONNECTION_CLOSED, ErrorSource.DOWNSTREAM, "client closed")
        head_future = exchange.new_futures()
        exchange.upstream = conn
        if isinstance(conn, H2UpstreamStream):
            conn.start_request(
                exchange,
                request,
                exchange.upstream_framing,
                request.method == "HEAD",
                not exchange.has_request_body,
            )
        else:
            framing = exchange.upstream_framing
            conn.start(
                exchange,
                serialize_request(request, framing),
                request.method == "HEAD",
                exchange.upgrade_names,
                declared_length(framing),
            )
        exchange.start_request_body()
        read_timeout = peer.read_timeout or self.read_timeout
        deadlines = self.connections.deadlines
        if read_timeout:
            deadlines.set(client.loop, exchange, read_timeout)  # its deadline_passed
        try:
            await head_future
        finally:
            deadlines.clear(exchange)
        response = session.upstream_response
        assert response is not None
        session.head_time = monotonic()
        if hooks.upstream_response_filter is not None:
            done = hooks.upstream_response_filter.run(session, response, ctx)
            if suspends(done):
                await done
        if hooks.response_filter is not None:
            done = hooks.response_filter.run(session, response, ctx)
            if suspends(done):
                await done
        exchange.send_response_head(response)
        if not exchange.response_complete or exchange.failed:
            await exchange.wait_response_end()
        exchange.upstream = None
        if exchange.body_done and exchange.streaming_request:
            self._give_back(conn)
        else:
            conn.close()

    async def _fail(
        self, exchange: Exchange, session: Session, ctx: dict[str, Any], error: ProxyError
    ) -> None:
        hooks = self.hooks
        status = None
        if hooks.fail_to_proxy is not None:
            try:
                status = hooks.fail_to_proxy.run(session, ctx, error)
                if suspends(status):
                    status = await status
            except Exception:
                log.exception("fail_to_proxy hook failed, %s", session.request_summary())
        if status is None:
            status = error.default_status()
        # A hook's (or a ProxyError.http_status's): 0 (answer nothing) or a final status.
        if not is_final_status(status) and not (type(status) is int and status == 0):
            log.error("status %r is not a final status (200-599): answered 500", status)
            status = 500
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
        if exchange.response_started or not status or exchange.conn.lost:
            # A response already started (or the client is gone): the only honest signal left
            # is closing the connection, so a short body is never taken for a complete one.
            if exchange.response_started and not exchange.response_complete:
                exchange.conn.abort()
            exchange.keep_alive = False
            return
        if error.source is ErrorSource.DOWNSTREAM:
            exchange.keep_alive = False
        await exchange.respond_error(status)


def build_connector(
    *, pool_size: int, idle_timeout: float, ca_file: str | None, connect_timeout: float
) -> Connector:
    """The process-wide connector and its idle pool."""
    return Connector(
        ConnectionPool(pool_size, idle_timeout), ca_file=ca_file, connect_timeout=connect_timeout
    )
