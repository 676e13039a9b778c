"""The server: listeners, services, background services, signals and graceful shutdown.

anyio gives the structure (task group, signals, cancellation); each listening socket has an
``Acceptor`` (``lbx.acceptor``) whose protocols carry the request path (see ``proxy.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import socket
import stat
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.abc

from lbx import background, discovery, notify, reload
from lbx.acceptor import Acceptor
from lbx.collector import YoungGeneration, tune_gc
from lbx.config import Config, ServiceConfig
from lbx.connections import Connections, format_address
from lbx.errors import ConfigError, StartupError, first_error, plural
from lbx.lb import Backend, Backends, Change, Health, LoadBalancer, split_host_port
from lbx.plugins import LbxPluginManager, installed_selection_plugins
from lbx.proxy import ProxyService, RequestHooks, build_connector
from lbx.selector import SelectorFactory
from lbx.tls import RELOAD_INTERVAL_SECONDS, CertificateError, ServerTLS
from lbx.workers import UPGRADE_OVERLAP_SECONDS, Supervisor

log = logging.getLogger("lbx.server")

LISTEN_BACKLOG = 65535  # Pingora's; the kernel caps it at net.core.somaxconn

TLS_HANDSHAKE_TIMEOUT_SECONDS = 60.0  # Pingora's downstream handshake timeout

try:
    import uvloop  # noqa: F401  # only probed: anyio starts it through backend_options
except ImportError:  # pragma: no cover - uvloop is a dependency on every platform lbx supports
    HAVE_UVLOOP = False
else:
    HAVE_UVLOOP = True


class Server:
    """Hosts the configured services in one process (Pingora's ``Server``)."""

    def __init__(self, config: Config, pm: LbxPluginManager) -> None:
        self.config = config
        self.pm = pm
        self.selectors: dict[str, SelectorFactory] = {}
        self.sources: dict[str, discovery.Source] = {}
        self.discovery: dict[str, discovery.ServiceDiscovery] = {}
        """Per service with backends: where they come from (``lbx.discovery``)."""
        self.services: list[ProxyService] = []
        self.listeners: dict[str, socket.socket] = {}
        self.bound: dict[str, str] = {}
        """Listener key -> the address it is bound to (``127.0.0.1:0`` -> the real port); kept
        where the sockets are not (the background-services process)."""
        self.connections = Connections()
        self._acceptors: list[Acceptor] = []
        self._bound_unix_paths: list[str] = []
        self._kept_unix_paths: set[str] = set()
        """Of those, the files of the running server a reload's new one serves on too."""
        self._background: list[tuple[str, Callable[..., Any], bool]] = []
        self.server_tls: dict[str, ServerTLS] = {}
        """TLS termination per service name (services with ``tls_listen``)."""
        self._busy_with = ""
        """What a signal started: "upgrading", "draining" or nothing (serving)."""
        self._handed_over = False
        """The listeners went to a new process, which is the service from then on."""
        self._stop_announced = False
        self.ready = False
        """Serving (``lbx ready`` was logged): a failure from then on is no failed start."""
        self.rebuild: Callable[[], Server] | None = None
        """Builds the server of the config file as it is now (``lbx.build``): reload."""
        self.background_group: background.BackgroundGroup | None = None
        self._tasks: anyio.abc.TaskGroup | None = None
        self._reloading_certificates = False

    # -- preparation (also what ``-t`` checks) -----------------------------------------------
    def prepare(self) -> None:
        """Build selectors and services; every problem is a ``ConfigError``."""
        config = self.config
        self.pm.hook.register_selectors(register=self._register_selector)
        self.pm.hook.register_discovery(register=discovery.registrar(self.sources))
        if config.upgrade and not self.pm.hook.acquire_listeners.get_hookimpls():
            raise ConfigError("-u/--upgrade needs the upgrade plugin (pip install lbx-upgrade)")
        if config.daemon and not self.pm.hook.daemonize.get_hookimpls():
            raise ConfigError("-d/--daemon needs the daemon plugin (pip install lbx-daemon)")
        if not config.services:
            raise ConfigError(
                "nothing to serve: define services in the config file or use --listen/--upstream",
                file=config.path,
            )
        hooks = RequestHooks(self.pm)
        connector = build_connector(
            pool_size=config.upstream_keepalive_pool_size,
            idle_timeout=min((s.idle_timeout for s in config.services), default=60),
            ca_file=config.ca_file,
            connect_timeout=10,
        )
        for index, service in enumerate(config.services):
            load_balancer = None
            if service.upstreams or service.discovery is not None:
                load_balancer = self._load_balancer(index, service.selection, service)
                load_balancer.backends.listeners.append(
                    functools.partial(self._health_changed, service.name)
                )
                self.discovery[service.name] = discovery.build(
                    config, index, service, load_balancer, self.sources
                )
            elif hooks.default_peer_only or (
                hooks.upstream_peer is not None and len(hooks.upstream_peer) <= 1
            ):
                raise config.error(
                    ("services", index, "upstreams"),
                    f"service {service.name!r} has no upstreams and no plugin chooses a peer",
                )
            self.services.append(
                ProxyService(
                    service,
                    load_balancer,
                    hooks,
                    connector,
                    self.connections,
                    max_retries=config.max_retries,
                )
            )
            if service.tls_listen:
                try:
                    self.server_tls[service.name] = ServerTLS(
                        service.name,
                        service.certificates,
                        unknown_sni=service.unknown_sni,
                        client_ca=service.client_ca,
                        client_cert=service.client_cert,
                        http2=service.http2,
                    )
                except CertificateError as exc:
                    raise config.error(("services", index, "certificates"), str(exc)) from None
        for proxy_service in self.services:
            if proxy_service.load_balancer is not None:
                proxy_service.load_balancer.backends.set_listeners.append(
                    functools.partial(self._backends_changed, proxy_service)
                )
        dynamic = [d for d in self.discovery.values() if d.dynamic]
        if dynamic:
            # Registered before the plugins' services: the first health round checks the
            # backends the first discovery found.
            self._register_background(
                "discovery", functools.partial(discovery.run_all, dynamic), True
            )
        self.pm.hook.register_background_services(server=self, register=self._register_background)

    def _backends_changed(self, service: ProxyService, change: Change) -> None:
        """A service's backend set changed in this process: let go of the peers and idle
        connections of backends that left."""
        assert service.load_balancer is not None
        closed = service.forget_backends(service.load_balancer.backends.items)
        if closed:
            log.debug(
                "service %s: closed %d idle connections to removed backends", service.name, closed
            )

    def _register_selector(self, name: str, factory: SelectorFactory) -> None:
        if name in self.selectors:
            raise ConfigError(f"two plugins register the selection algorithm {name!r}")
        self.selectors[name] = factory

    def _register_background(self, name: str, run: Callable[..., Any], ready: bool = False) -> None:
        self._background.append((name, run, ready))

    def _health_changed(self, service: str, backend: Backend, health: Health) -> None:
        """One place logs health changes and tells plugins (Pingora's log lines)."""
        if health.ready:
            log.info("service %s: %s becomes healthy", service, backend.addr)
        elif not health.enabled:  # a drain, not a fault
            log.info("service %s: %s %s: no new requests", service, backend.addr, health.reason)
        else:
            log.warning(
                "service %s: %s becomes unhealthy, %s", service, backend.addr, health.reason
            )
        self.pm.hook.backend_health_changed(service=service, backend=backend, health=health)

    def _load_balancer(self, index: int, selection: str | None, service: Any) -> LoadBalancer:
        available = sorted(self.selectors)
        if selection is None:
            if len(available) == 1:
                selection = available[0]
            elif not available:
                installed = installed_selection_plugins() or ["roundrobin"]
                example = "roundrobin" if "roundrobin" in installed else installed[0]
                raise self.config.error(
                    ("services", index),
                    f"service {service.name!r} has upstreams but no selection plugin is enabled; "
                    f"enable one with --plugin NAME or 'plugins: [NAME]' (installed: "
                    f"{', '.join(installed)}), e.g. --plugin {example}",
                )
            else:
                raise self.config.error(
                    ("services", index),
                    f"service {service.name!r}: several selection algorithms are enabled "
                    f"({', '.join(available)}); choose one with 'selection:'",
                )
        factory = self.selectors.get(selection)
        if factory is None:
            raise self.config.error(
                ("services", index, "selection"),
                f"unknown selection {selection!r}; enabled: {', '.join(available) or 'none'} "
                f"(enable the plugin that provides it with --plugin {selection})",
            )
        try:
            return LoadBalancer(
                Backends(tuple(service.upstreams)), factory, service.selection_options, selection
            )
        except ValueError as exc:
            raise self.config.error(("services", index, "selection_options"), str(exc)) from None

    # -- running -------------------------------------------------------------------------------
    def run(self) -> int:
        """Run until a signal stops the server; returns the exit code.

        ``threads: 1`` serves in this process. ``threads: N`` makes this process a supervisor of
        N worker processes sharing the listeners (see ``lbx.workers``).
        """
        if self.config.daemon and not self.pm.hook.daemonize(config=self.config):
            raise StartupError("no plugin could daemonize the process")
        tune_gc()
        if self.config.threads > 1:
            return Supervisor(self).run()
        self.run_loop(self._serve)
        return 0

    def run_loop(self, main: Callable[..., Any], *args: Any) -> Any:
        """``anyio.run`` with uvloop; start-up failures come out as the one error they are."""
        try:
            return anyio.run(
                main, *args, backend="asyncio", backend_options={"use_uvloop": HAVE_UVLOOP}
            )
        except BaseExceptionGroup as group:
            # Task groups wrap failures: report the first as the one error it is (a start-up
            # failure is one line; anything else is described, or raised, by the caller).
            raise first_error(group) from None

    async def _serve(self) -> None:
        """Everything in one process: background services, listeners, signals."""
        self.connections.young = YoungGeneration()
        async with anyio.create_task_group() as tasks:
            self._tasks = tasks
            self.background_group = background.BackgroundGroup(self._background)
            await tasks.start(self.background_group.run)
            await self.listen(await self.acquire_sockets())
            self.background_group.listening.set()
            self.start_certificate_reloader(tasks)
            await self.pm.ahook.worker_started(server=self)

            async def announce() -> None:
                await self.pm.ahook.server_started(server=self)
                log.info("lbx ready (pid %d)", os.getpid())
                self.announce_ready()

            await self._handle_signals(announce, handover=True)
            tasks.cancel_scope.cancel()
        log.info("lbx stopped")

    async def serve_worker(
        self, sockets: dict[str, socket.socket], ready: Callable[[], None]
    ) -> None:
        """A worker process: serve requests on the supervisor's sockets until told to stop.

        Also after a reload: the supervisor's new ``Server`` forks the next workers."""
        self.connections.young = YoungGeneration()
        async with anyio.create_task_group() as tasks:
            discovery.take_shared(self)
            shared = [d for d in self.discovery.values() if d.table is not None]
            if shared:
                tasks.start_soon(discovery.follow, shared, name="backend set follower")
            await self.listen(sockets)
            self.start_certificate_reloader(tasks)
            await self.pm.ahook.worker_started(server=self)

            async def announce() -> None:
                ready()

            await self._handle_signals(announce, handover=False)
            tasks.cancel_scope.cancel()
        log.info("worker stopped")

    async def serve_background(self, ready: Callable[[], None]) -> None:
        """The background-services process of a supervisor: health checks and the like."""
        async with anyio.create_task_group() as tasks:
            discovery.take_shared(self)
            await self.start_ready_services(tasks)
            self.start_other_services(tasks)
            ready()
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    break
            tasks.cancel_scope.cancel()

    async def start_ready_services(self, tasks: anyio.abc.TaskGroup) -> None:
        """Start the services that must be ready before traffic (a first round of checks)."""
        await background.start_ready(tasks, self._background)

    def start_other_services(self, tasks: anyio.abc.TaskGroup) -> None:
        background.start_others(tasks, self._background)

    def start_certificate_reloader(self, tasks: anyio.abc.TaskGroup) -> None:
        """Watch certificate files: changed ones serve new connections within a second or so."""
        if self.server_tls and not self._reloading_certificates:
            self._reloading_certificates = True
            tasks.start_soon(self._reload_certificates, name="certificate reloader")

    async def _reload_certificates(self) -> None:
        while True:
            await anyio.sleep(RELOAD_INTERVAL_SECONDS)
            for tls in self.server_tls.values():
                tls.reload_if_changed()

    @property
    def open_connections(self) -> int:
        """Client connections open in this process."""
        return len(self.connections.open)

    @property
    def idle_upstream_connections(self) -> int:
        """Idle pooled upstream connections in this process (services may share a pool)."""
        pools = {id(service.connector.pool): service.connector.pool for service in self.services}
        return sum(len(pool) for pool in pools.values())

    @property
    def has_background_services(self) -> bool:
        return bool(self._background)

    def announce_ready(self) -> None:
        """lbx serves: tell the service manager (``READY=1``, see lbx.notify). A daemon, or the
        new process of an upgrade, is not the process the manager started: it names itself the
        main process first."""
        self.ready = True
        notify.ready(main_pid=self.config.daemon or self.config.upgrade)

    def announce_stopping(self) -> None:
        """``STOPPING=1`` (once), unless the listeners were handed over: the new process is the
        service now, and this one's exit does not stop it."""
        if not self._handed_over and not self._stop_announced:
            self._stop_announced = True
            notify.stopping()

    async def _handle_signals(
        self, announce: Callable[[], Awaitable[None]], *, handover: bool
    ) -> None:
        """SIGTERM/SIGQUIT: drain gracefully (repeats are ignored); SIGINT: stop at once.

        ``announce`` says the process is ready; it runs once the signals are handled, so a
        SIGTERM sent right after "lbx ready" drains instead of killing the process. With
        ``handover``, SIGQUIT first hands the listeners to a new process (upgrade); a worker of
        a supervisor leaves that to the supervisor.
        """
        watched = [signal.SIGTERM, signal.SIGINT, signal.SIGQUIT]
        if handover:
            watched.append(signal.SIGHUP)
        with anyio.open_signal_receiver(*watched) as signals:
            await announce()
            async with anyio.create_task_group() as stopping:
                self._busy_with = ""
                async for signum in signals:
                    name = signal.Signals(signum).name
                    if signum == signal.SIGHUP:
                        if self._busy_with:
                            log.info("SIGHUP received while %s; not reloading", self._busy_with)
                        elif self._tasks is not None:
                            log.info("SIGHUP received, reloading the configuration")
                            # Signals that arrive meanwhile wait in the receiver's queue.
                            await reload.reload_in_process(self, self._tasks)
                            self.start_certificate_reloader(self._tasks)
                        continue
                    if signum == signal.SIGINT:
                        log.info("SIGINT received, exiting")
                        if self._busy_with == "upgrading":
                            # The new process may hold the listeners already: its socket files
                            # stay (a stale one is replaced when bound again).
                            self.forget_unix_paths()
                        if handover:
                            self.announce_stopping()
                        stopping.cancel_scope.cancel()
                        await self._stop_fast()
                        return
                    if self._busy_with:
                        log.info(
                            "%s received while %s; SIGINT stops at once", name, self._busy_with
                        )
                        continue
                    if handover and signum == signal.SIGQUIT:
                        log.info("SIGQUIT received, handing the listeners over")
                        self._busy_with = "upgrading"
                        stopping.start_soon(self._upgrade, stopping.cancel_scope)
                        continue
                    log.info("%s received, shutting down gracefully", name)
                    self._busy_with = "draining"
                    if handover:
                        self.announce_stopping()
                    stopping.start_soon(self._drain_then_stop, stopping.cancel_scope)

    async def _upgrade(self, scope: anyio.CancelScope) -> None:
        handed_over = await self.hand_over()
        if handed_over is False:
            self._busy_with = ""  # the new process did not take over: keep serving
            return
        if handed_over:
            # The new process runs its own: its admin endpoints wait for these addresses.
            if self.background_group is not None:
                await self.background_group.stop()
            await anyio.sleep(UPGRADE_OVERLAP_SECONDS)
        self._busy_with = "draining"
        self.announce_stopping()
        await self._drain_then_stop(scope)

    async def _drain_then_stop(self, scope: anyio.CancelScope) -> None:
        await self._stop_graceful()
        scope.cancel()

    async def hand_over(self) -> bool | None:
        """Send the listeners to a new process (``send_listeners``).

        True: the new process took over (drain after a short overlap). False: it failed, so this
        process keeps serving. None: no upgrade plugin, so SIGQUIT drains as SIGTERM does.
        """
        if self.pm.hook.send_listeners.get_hookimpls():
            notify.reloading()  # the new process's READY=1 ends it
        result = await self.pm.ahook.send_listeners(server=self)
        if result is None:
            log.warning("SIGQUIT: no plugin hands listeners over; draining as on SIGTERM")
            return None
        if not result:
            log.error("upgrade failed: the new process did not take over; still serving")
            notify.ready(main_pid=False)
            return False
        # The new process owns the sockets (and Unix socket files) from now on.
        self._handed_over = True
        self.forget_unix_paths()
        log.info(
            "listeners handed over; accepting for %gs more, then draining", UPGRADE_OVERLAP_SECONDS
        )
        return True

    async def acquire_sockets(self) -> dict[str, socket.socket]:
        """Every configured listen address: taken over (``acquire_listeners``) or bound here."""
        inherited = await self.pm.ahook.acquire_listeners(server=self) or {}
        sockets: dict[str, socket.socket] = {}
        try:
            for service in self.services:
                for key, address in listener_keys(service.config):
                    sockets[key] = inherited.pop(key, None) or self._bind(address)
        except BaseException:
            for sock in sockets.values():
                sock.close()
            raise
        finally:
            for unused in inherited.values():
                unused.close()
        self.listeners = sockets
        self.bound = {
            key: _describe(key.removeprefix(TLS_PREFIX), sock) for key, sock in sockets.items()
        }
        return sockets

    async def listen(self, sockets: dict[str, socket.socket]) -> None:
        """Serve every service on its (already listening) sockets."""
        loop = asyncio.get_running_loop()
        self.listeners = sockets
        try:
            for service in self.services:
                for address in service.config.listen:
                    sock = sockets[address]
                    sock.listen(LISTEN_BACKLOG)  # an inherited socket gets lbx's backlog too
                    bound = _describe(address, sock)
                    self._accept(loop, Acceptor(sock, service.protocol_factory, bound))
                    log.info("service %s listening on %s", service.name, bound)
                tls = self.server_tls.get(service.name)
                for address in service.config.tls_listen:
                    assert tls is not None
                    sock = sockets[TLS_PREFIX + address]
                    sock.listen(LISTEN_BACKLOG)
                    bound = _describe(address, sock)
                    acceptor = Acceptor(
                        sock,
                        service.tls_protocol_factory,
                        bound,
                        tls.listener_context,
                        TLS_HANDSHAKE_TIMEOUT_SECONDS,
                    )
                    self._accept(loop, acceptor)
                    log.info("service %s listening on %s", service.name, bound)
                    names = ", ".join(n for c in tls.certificates for n in c.names)
                    log.info("service %s: TLS on %s for %s", service.name, bound, names)
        except BaseException:
            self.close_listeners()
            raise

    def _bind(self, address: str) -> socket.socket:
        try:
            if address.startswith("unix:"):
                return self._bind_unix(address[len("unix:") :])
            host, port = split_host_port(address)
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    # [::]:port and 0.0.0.0:port are separate listeners, as in nginx.
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind((host, port))
                sock.listen(LISTEN_BACKLOG)
            except BaseException:
                sock.close()
                raise
        except OSError as exc:
            raise StartupError(f"cannot listen on {address}: {exc.strerror or exc}") from None
        sock.setblocking(False)
        return sock

    def _bind_unix(self, path: str) -> socket.socket:
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(os.stat(path).st_mode):
                probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    probe.connect(path)
                except OSError:
                    os.unlink(path)  # a stale socket file left by a dead process
                else:
                    raise OSError(98, "another process is listening there")
                finally:
                    probe.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
            os.chmod(path, 0o666)
            sock.listen(LISTEN_BACKLOG)
        except BaseException:
            sock.close()
            raise
        self._bound_unix_paths.append(path)
        return sock

    # -- what a reload needs -------------------------------------------------------------------
    @property
    def registered_background(self) -> list[background.Registered]:
        return list(self._background)

    @property
    def pool_settings(self) -> tuple[object, ...]:
        """What the upstream connection pool is built from: equal, a reload keeps the pool."""
        config = self.config
        idle = min((s.idle_timeout for s in config.services), default=60)
        return (config.upstream_keepalive_pool_size, idle, config.ca_file)

    def listen_addresses(self) -> list[tuple[str, str]]:
        """(key, address) of every listener of every service (TLS keys are ``tls:<address>``)."""
        return [pair for service in self.services for pair in listener_keys(service.config)]

    def bind(self, address: str) -> socket.socket:
        """Bind and listen on one address (``StartupError`` when it cannot)."""
        return self._bind(address)

    def keep_unix_path(self, path: str) -> None:
        """This server owns the Unix socket file at ``path`` (bound by the one it replaces)."""
        self._bound_unix_paths.append(path)
        self._kept_unix_paths.add(path)

    def abandon_listeners(self) -> None:
        """A reload's new server that will not serve (refused, or failed to start): close its
        sockets and remove the socket files it bound, not those the running one still serves."""
        self._bound_unix_paths = [
            path for path in self._bound_unix_paths if path not in self._kept_unix_paths
        ]
        self.close_listeners()

    def forget_unix_paths(self) -> None:
        """Leave the Unix socket files in place on exit (another process owns them)."""
        self._bound_unix_paths.clear()

    def _accept(self, loop: asyncio.AbstractEventLoop, acceptor: Acceptor) -> None:
        acceptor.start(loop)
        self._acceptors.append(acceptor)

    def stop_accepting(self) -> None:
        """Leave the listening sockets open (queued clients wait) but take no more."""
        for acceptor in self._acceptors:
            acceptor.close()
        self._acceptors.clear()

    def close_listeners(self) -> None:
        self.stop_accepting()
        for sock in self.listeners.values():
            sock.close()
        for path in self._bound_unix_paths:
            with contextlib.suppress(OSError):
                os.unlink(path)
        self._bound_unix_paths.clear()

    async def _stop_graceful(self) -> None:
        config = self.config
        settling = [task for acceptor in self._acceptors for task in acceptor.take_queued()]
        self.close_listeners()
        if settling:
            await asyncio.wait(settling, timeout=config.grace_period_seconds)
        # The connections just accepted have their connection_made still queued: one turn of
        # the loop lets it run, so that each is counted and its request answered (with
        # Connection: close) instead of closed with the process.
        await asyncio.sleep(0)
        await self.pm.ahook.server_stopping(server=self, graceful=True)
        self.connections.begin_shutdown()
        log.info(
            "stopped accepting; waiting up to %gs for %s",
            config.grace_period_seconds,
            plural(len(self.connections.open), "open connection"),
        )
        with anyio.move_on_after(config.grace_period_seconds):
            await self.connections.wait_closed()
        if self.connections.open:
            log.warning(
                "grace period of %gs over, closing %s",
                config.grace_period_seconds,
                plural(len(self.connections.open), "connection"),
            )
            for conn in list(self.connections.open):
                if conn.transport is not None:
                    conn.transport.close()
            with anyio.move_on_after(config.graceful_shutdown_timeout_seconds):
                await self.connections.wait_closed()
            self.connections.abort_all()
        self._close_pools()

    async def _stop_fast(self) -> None:
        self.close_listeners()
        await self.pm.ahook.server_stopping(server=self, graceful=False)
        self.connections.abort_all()
        self._close_pools()

    def _close_pools(self) -> None:
        for service in self.services:
            service.connector.close_all()


TLS_PREFIX = "tls:"
"""Listener keys (what ``upgrade`` hands over) of TLS addresses: ``tls:<address>``."""


def listener_keys(service: ServiceConfig) -> list[tuple[str, str]]:
    """(key, address) of every listener of a service; TLS ones are keyed ``tls:<address>``."""
    return [(a, a) for a in service.listen] + [(TLS_PREFIX + a, a) for a in service.tls_listen]


def _describe(address: str, sock: socket.socket) -> str:
    if address.startswith("unix:"):
        return address
    return format_address(sock.getsockname())
