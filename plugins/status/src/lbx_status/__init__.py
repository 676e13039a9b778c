"""lbx-status: an admin endpoint with the live state of lbx, and ``lbx status`` / ``lbx backend``.

``GET /status`` answers JSON: every service with its backends (address, weight, healthy, ejected,
enabled, ready, reason), where they come from, and live counters (requests and failures, all
workers together). As HAProxy's runtime API does, ``POST /backends/<service>/<addr>/<action>``
changes a running lbx: ``disable`` drains a backend and ``enable`` re-admits it (a flag in
memory every worker shares), ``add`` and ``remove`` change the set and ``weight`` a weight
(``{"weight": N}`` in the body), applied by the service's discovery and so by every worker at
once, until the next reload or restart. The endpoint listens on a Unix socket (owner only)
unless ``status.listen`` names a TCP address; one outside loopback needs ``status.token``, and
every request must then carry ``Authorization: Bearer <token>``. See docs/status.md.
"""

from __future__ import annotations

import json
import os
import time
import zlib
from collections.abc import Callable
from logging import getLogger
from typing import Any
from urllib.parse import unquote

import anyio.to_thread
import click

from lbx import (
    Backend,
    Change,
    Config,
    ConfigSchema,
    Field,
    NoRoom,
    PluginManager,
    ProxyError,
    Server,
    Session,
    check_weight,
    hookimpl,
)
from lbx.admin import Endpoint, Sampler, SharedRows, check_address, check_exposure, sample_every

log = getLogger("lbx.status")

SECTION = "status"
SOCKET_NAME = "lbx-status.sock"
SPARE_ROWS = 16
OPEN = 0  # gauge column: client connections open in the process
PER_BACKEND = 3  # cells per backend slot: requests, failures, which backend (``Status._tag``)
GAUGE_INTERVAL = 1.0


def _tag(addr: str) -> float:
    """Which backend a slot's counters belong to: a checksum of its address, never 0 (a slot
    never used); exact in a float cell."""
    return float(zlib.crc32(addr.encode()) + 1)


def default_listen(pid_file: str | None) -> str:
    """``unix:<directory of pid_file>/lbx-status.sock`` (``/tmp`` without a pid file)."""
    directory = os.path.dirname(pid_file) if pid_file else ""
    return "unix:" + os.path.join(directory or "/tmp", SOCKET_NAME)


CONFIG_KEYS = {
    "listen": Field(
        "str",
        None,
        "unix:/path (default: lbx-status.sock beside pid_file) or host:port (explicitly only)",
        check=check_address,
    ),
    "token": Field(
        "str",
        None,
        "a secret every request must carry (Authorization: Bearer ...); needed on a TCP address "
        "other than loopback",
    ),
}

ACTIONS = ("enable", "disable", "add", "remove", "weight")


class Status:
    """The status of one run: counters in memory every worker shares (one row per process), the
    server, the endpoint, and the hooks that count."""

    def __init__(self, config: Config, listen: str, token: str | None = None) -> None:
        self.listen = listen
        self.token = token
        # Per service: its requests and failures, then PER_BACKEND cells for each slot a
        # backend may hold (``ServiceDiscovery.slot``), so that backends discovered or added at
        # run time are counted too.
        self.columns: dict[str, int] = {}
        self.capacity: dict[str, int] = {}
        column = 1
        for service in config.services:
            if service.name not in self.columns:
                self.columns[service.name] = column
                self.capacity[service.name] = service.max_backends
                column += 2 + PER_BACKEND * service.max_backends
        self.rows = SharedRows(column, config.threads + SPARE_ROWS, gauges=(OPEN,))
        self.sampler: Sampler | None = None
        self.server: Server | None = None
        self.started = time.time()

    def sample(self) -> None:
        """Record this process's open client connections (``sample_every`` second)."""
        if self.server is not None:
            self.rows.cells[self.rows.row() + OPEN] = self.server.open_connections

    @hookimpl
    def register_background_services(self, server: Server, register: Callable[..., None]) -> None:
        self.server = server
        endpoint = Endpoint(
            SECTION,
            self.listen,
            self.handle,
            "admin endpoint on {address}",
            self.token,
            takeover=server.config.upgrade,
        )
        register("status", endpoint.serve, ready=True)

    @hookimpl
    async def worker_started(self, server: Server) -> None:
        """Each process that serves requests samples its own open connections."""
        self.server = server
        self.sampler = sample_every(GAUGE_INTERVAL, self.sample)

    @hookimpl
    async def server_stopping(self, server: Server) -> None:
        """Stop sampling (at shutdown, and when a reload replaces this configuration)."""
        if self.sampler is not None:
            self.sampler.cancel()

    @hookimpl
    def logging(self, session: Session, error: ProxyError | None) -> None:
        peer = session.peer
        status = session.response_status
        self.count(
            session.service.name,
            peer.addr if peer is not None else None,
            error is not None or status is None or status >= 500,
        )

    def count(self, service: str, addr: str | None, failed: bool) -> None:
        column = self.columns.get(service)
        if column is None:
            return
        cells = self.rows.cells
        base = self.rows.row()
        cells[base + column] += 1
        if failed:
            cells[base + column + 1] += 1
        if not addr:
            return
        at = self._backend_column(service, addr)
        if at < 0:
            return
        at += base
        tag = _tag(addr)
        if cells[at + 2] != tag:  # the slot counted a backend that left: start from zero
            cells[at] = cells[at + 1] = 0.0
            cells[at + 2] = tag
        cells[at] += 1
        if failed:
            cells[at + 1] += 1

    def _backend_column(self, service: str, addr: str) -> int:
        """The first of the backend's PER_BACKEND cells in a row, -1 if it has none."""
        found = self.server.discovery.get(service) if self.server is not None else None
        slot = found.slot(addr) if found is not None else None
        if slot is None or slot >= self.capacity[service]:
            return -1
        return self.columns[service] + 2 + PER_BACKEND * slot

    def _backend_counts(self, service: str, addr: str) -> tuple[int, int]:
        """A backend's requests and failures over every process's row."""
        at = self._backend_column(service, addr)
        if at < 0:
            return 0, 0
        tag = _tag(addr)
        requests = failures = 0.0
        for row in self.rows.claimed():
            if row[at + 2] == tag:
                requests += row[at]
                failures += row[at + 1]
        return int(requests), int(failures)

    def snapshot(self) -> dict[str, Any]:
        """The JSON document of ``GET /status``."""
        totals = self.rows.totals()
        server = self.server
        services = []
        bound = server.bound if server is not None else {}
        for service in server.services if server is not None else []:
            lb: Any = service.load_balancer
            column = self.columns.get(service.name)
            found = server.discovery.get(service.name) if server is not None else None
            entry: dict[str, Any] = {
                "name": service.name,
                "listen": [bound.get(a, a) for a in service.config.listen],
                "tls_listen": [bound.get("tls:" + a, a) for a in service.config.tls_listen],
                "selection": lb.selector_name if lb is not None else None,
                "discovery": None
                if found is None
                else {
                    "source": found.source_name,
                    "updates": found.updates,
                    "last_error": found.last_error,
                },
                "requests": int(totals[column]) if column else 0,
                "failures": int(totals[column + 1]) if column else 0,
                "backends": [],
            }
            for backend in lb.backends.items if lb is not None else ():
                health = lb.backends.health[backend]
                requests, failures = self._backend_counts(service.name, backend.addr)
                entry["backends"].append(
                    {
                        "addr": backend.addr,
                        "weight": backend.weight,
                        "healthy": health.healthy,
                        "ejected": health.ejected,
                        "enabled": health.enabled,
                        "ready": health.ready,
                        "reason": health.reason,
                        "requests": requests,
                        "failures": failures,
                    }
                )
            services.append(entry)
        return {
            "pid": os.getppid()
            if server is not None and server.config.threads > 1
            else os.getpid(),
            "threads": server.config.threads if server is not None else 1,
            "uptime_seconds": round(time.time() - self.started, 3),
            "open_connections": int(totals[OPEN]),
            "services": services,
        }

    async def change(
        self, service_name: str, addr: str, action: str, body: bytes
    ) -> tuple[int, dict[str, Any]]:
        """One runtime change of a backend (``ACTIONS``), answered as JSON."""
        server = self.server
        service = (
            next((s for s in server.services if s.name == service_name), None) if server else None
        )
        found = server.discovery.get(service_name) if server is not None else None
        if service is None or found is None:
            return 404, {"error": f"no service {service_name!r} with backends"}
        backends = found.lb.backends
        try:
            options = json.loads(body) if body.strip() else {}
            weight = options.get("weight", 1) if isinstance(options, dict) else None
        except ValueError:
            weight = None
        try:
            weight = check_weight(weight)
        except ValueError as exc:
            return 400, {"error": f'the body must be {{"weight": N}}: {exc}'}
        change = Change()
        if action == "add":
            try:
                parsed = await anyio.to_thread.run_sync(Backend.parse, addr, weight)
            except ValueError as exc:
                return 400, {"error": str(exc)}
            try:
                change = await found.add(*parsed)
            except NoRoom as exc:
                return 409, {"error": str(exc)}
        elif action in ("remove", "weight"):
            try:
                change = await (
                    found.remove(addr) if action == "remove" else found.set_weight(addr, weight)
                )
            except LookupError as exc:
                return 404, {"error": str(exc.args[0])}
        else:
            target = backends.find(addr)
            if target is None:
                return 404, {"error": f"service {service_name!r} has no backend {addr!r}"}
            backends.set_enabled(target, action == "enable")
            log.warning(
                "service %s: %s %s by the admin endpoint",
                service_name,
                addr,
                "enabled" if action == "enable" else "disabled (draining)",
            )
            return 200, {"service": service_name, "addr": addr, "enabled": action == "enable"}
        return 200, {
            "service": service_name,
            "addr": addr,
            "action": action,
            "change": change.describe() or "nothing changed",
            "backends": [b.addr for b in backends.items],
        }

    async def handle(self, method: str, path: str, body: bytes) -> tuple[int, str, bytes]:
        parts = [unquote(p) for p in path.strip("/").split("/")]
        if parts == ["status"]:
            if method not in ("GET", "HEAD"):
                return _json(405, {"error": "use GET"})
            return _json(200, self.snapshot())
        if len(parts) == 4 and parts[0] == "backends" and parts[3] in ACTIONS:
            if method != "POST":
                return _json(405, {"error": "use POST"})
            return _json(*await self.change(parts[1], parts[2], parts[3], body))
        return _json(
            404,
            {"error": f"GET /status or POST /backends/<service>/<addr>/{'|'.join(ACTIONS)}"},
        )


def _json(status: int, document: dict[str, Any]) -> tuple[int, str, bytes]:
    return status, "application/json", json.dumps(document).encode() + b"\n"


@hookimpl
def add_config_keys(schema: ConfigSchema) -> None:
    schema.add_section(SECTION, CONFIG_KEYS)


@hookimpl
def configure(config: Config, plugin_manager: PluginManager) -> None:
    """Build this run's ``Status`` (before the workers fork) and register its hooks; refuse
    an endpoint other machines could reach without a token."""
    section = config.sections.get(SECTION) or {}
    listen = section.get("listen") or default_listen(config.pid_file)
    token = section.get("token")
    problem = check_exposure(listen, token)
    if problem:
        raise config.error((SECTION, "listen"), problem)
    if config.test:
        return
    plugin_manager.register(Status(config, listen, token), name="status.state")


@hookimpl
def register_commands(cli: click.Group) -> None:
    from lbx_status.commands import backend, status

    cli.add_command(status)
    cli.add_command(backend)
