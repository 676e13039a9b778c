"""Reloading the configuration (``SIGHUP``, ``lbx reload``) without closing a connection.

The new configuration is built the one way servers are built (``lbx.build``, from the file as
it is now, with the same command line); a file that does not validate is refused with its usual
``file:line`` error and the running configuration stays. What carries over: each backend's
health (by service and address, while active checks are configured) and the backend set a
dynamic source last found, so that the first update of the new configuration is a change, not a
start from nothing. What does not: an operator's runtime changes and counters.

- ``threads: 1`` (``reload_in_process``): the new server's background services replace the old
  ones (health checks, discovery, admin endpoints), every listener gets a new ``Acceptor`` on
  a duplicate of its socket (a new address is bound, a removed one closed), and every open
  client connection switches to its service's new settings for its next request; a request in
  flight finishes with the settings and the backend it started with.
- ``threads: N``: the supervisor starts a new generation of processes with the new server and
  drains the old workers (``lbx.workers``), as nginx does.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import socket
from typing import TYPE_CHECKING

import anyio.abc

from lbx import notify
from lbx.background import BackgroundGroup
from lbx.errors import ConfigError, StartupError, describe, first_error, plural

if TYPE_CHECKING:
    from lbx.server import Server

log = logging.getLogger("lbx.reload")


def rebuild(server: Server) -> Server | None:
    """The server of the configuration file as it is now, or None when it is refused (logged,
    one line with the file and the line)."""
    if server.rebuild is None:
        log.error("reload: this server was not built from a command line; nothing to reload")
        return None
    try:
        return server.rebuild()
    except (ConfigError, StartupError) as exc:
        message = str(exc)
    except Exception as exc:  # a plugin's configure failed on the new file
        log.debug("reload failed", exc_info=True)
        message = describe(exc)
    log.error("reload refused, the running configuration stays: %s", message)
    return None


def carry_over(old: Server, new: Server) -> None:
    """Give the new server's backends the state of the running ones (see the module)."""
    for name, found in new.discovery.items():
        previous = old.discovery.get(name)
        if previous is None:
            continue
        if found.dynamic and previous.dynamic:
            # Start from the set the source last found: its first update is then a change.
            found.seed(previous.found)
        if not found.dynamic:  # (a source's first update after the reload logs its change)
            change = previous.lb.backends.plan(found.lb.backends.items)[2]
            if change:
                count = plural(len(found.lb.backends.items), "backend")
                log.info(
                    "service %s: backends changed (reload): %s (%s)", name, change.describe(), count
                )
        before = {
            backend.addr: previous.lb.backends.health[backend]
            for backend in previous.lb.backends.items
        }
        backends = found.lb.backends
        checked = not backends.initial_healthy  # active checks in the new configuration
        for backend in backends.items:
            health = before.get(backend.addr)
            if health is not None and checked:
                backends.health[backend].healthy = health.healthy
                backends.health[backend].reason = health.reason


def bind_listeners(old: Server, new: Server) -> dict[str, socket.socket]:
    """The new configuration's listening sockets: a duplicate of the running one for an address
    that stays (its queue of connections is the same), a new socket for a new address. Raises
    ``StartupError`` (nothing left open) when a new address cannot be bound."""
    sockets: dict[str, socket.socket] = {}
    try:
        for key, address in new.listen_addresses():
            kept = old.listeners.get(key)
            if kept is not None:
                sock = kept.dup()
                sock.setblocking(False)
                if address.startswith("unix:"):
                    new.keep_unix_path(address[len("unix:") :])
            else:
                sock = new.bind(address)
            sockets[key] = sock
    except BaseException:
        for sock in sockets.values():
            sock.close()
        new.abandon_listeners()
        raise
    return sockets


async def reload_in_process(server: Server, tasks: anyio.abc.TaskGroup) -> bool:
    """``threads: 1``: apply the configuration file as it is now; False when it was refused."""
    notify.reloading()
    path = server.config.path or "the command line"
    new = rebuild(server)
    if new is None:
        notify.ready(main_pid=False)
        return False
    try:
        sockets = bind_listeners(server, new)
    except StartupError as exc:
        log.error("reload refused, the running configuration stays: %s", exc)
        notify.ready(main_pid=False)
        return False
    carry_over(server, new)
    new.connections = server.connections
    same_pool = server.pool_settings == new.pool_settings
    for service in new.services:
        service.connections = server.connections
        if same_pool and server.services:
            service.connector = server.services[0].connector
    # The admin endpoints of the new configuration may listen where the old ones do: stop the
    # old background services first (health verdicts stay as they are meanwhile).
    previous = server.background_group
    if previous is not None:
        await previous.stop()
    group = BackgroundGroup(new.registered_background)
    try:
        await tasks.start(group.run)
    except Exception as exc:
        cause = first_error(exc) if isinstance(exc, BaseExceptionGroup) else exc
        log.error("reload refused, the running configuration stays: %s", describe(cause))
        for sock in sockets.values():
            sock.close()
        new.abandon_listeners()
        if previous is not None:
            restarted = BackgroundGroup(previous.services)
            await tasks.start(restarted.run)
            restarted.listening.set()
            server.background_group = restarted
        notify.ready(main_pid=False)
        return False
    moved = take_over_services(server, new)
    await new.listen(sockets)
    retire_listeners(server, keep=set(sockets))
    old_pm = server.pm
    old_view = copy.copy(server)
    adopt(server, new)
    server.background_group = group
    group.listening.set()
    await old_pm.ahook.server_stopping(server=old_view, graceful=True)
    if not same_pool:
        for service in old_view.services:
            service.connector.pool.close_all()
    await server.pm.ahook.worker_started(server=server)
    log.info(
        "configuration reloaded from %s (pid %d): %s, %s kept",
        path,
        os.getpid(),
        plural(len(server.services), "service"),
        plural(moved, "open connection"),
    )
    notify.ready(main_pid=False)
    return True


def retire_listeners(server: Server, keep: set[str]) -> None:
    """Stop the running server's accepting and close its sockets (the new one serves the ``keep``
    addresses on duplicates of them) and remove the Unix socket files of the others."""
    server.stop_accepting()
    kept_paths = set()
    for key, sock in server.listeners.items():
        if key in keep and key.startswith("unix:"):
            kept_paths.add(key[len("unix:") :])
        sock.close()
    for path in server._bound_unix_paths:
        if path not in kept_paths:
            with contextlib.suppress(OSError):
                os.unlink(path)


ADOPTED = (
    "config", "pm", "selectors", "sources", "discovery", "services", "listeners", "bound",
    "server_tls", "_background", "_acceptors", "_bound_unix_paths", "rebuild",
)  # fmt: skip
"""What the running ``Server`` object takes from the new one (it runs the signal handling and
the shutdown, so it stays; everything it serves with is replaced)."""


def adopt(server: Server, new: Server) -> None:
    for name in ADOPTED:
        setattr(server, name, getattr(new, name))


RUNTIME_STATE = frozenset({"open_connections", "connections"})
"""What a service object keeps across a reload: its count of open connections, the registry."""


def take_over_services(old: Server, new: Server) -> int:
    """A service that stays keeps its object, which open connections and requests in flight
    hold, and takes every setting of the new one (phases, hooks, backends, limits, timeouts):
    a connection's next request uses them. A service that is gone closes its connections once
    idle. Returns how many open connections stay."""
    running = {service.name: service for service in old.services}
    for index, service in enumerate(new.services):
        current = running.pop(service.name, None)
        if current is None:
            continue
        names = getattr(type(service), "__mypyc_attrs__", None) or tuple(vars(service))
        for name in names:
            if name not in RUNTIME_STATE and not name.startswith("__"):
                setattr(current, name, getattr(service, name))
        new.services[index] = current
    stay = 0
    for conn in list(old.connections.open):
        if conn.service.name in running:
            conn.close_when_idle()
        else:
            stay += 1
    return stay
