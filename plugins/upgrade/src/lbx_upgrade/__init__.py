"""lbx-upgrade: zero-downtime upgrades, with Pingora's protocol (``lbx serve -u``).

The new process, started with ``-u``, listens on ``upgrade_sock``; the old one, on SIGQUIT,
connects there and sends every listening socket in one message (``SCM_RIGHTS``), the payload
being the listen addresses joined by spaces, in the order of the descriptors. Beyond Pingora, the
new process answers ``ready`` on the same connection once it serves; only then does the old one
keep accepting for a few seconds and drain. If the new process never connects, or dies before it
serves, the old one keeps serving. The listening sockets are never closed, so no client sees a
refused connection. Either order works: the new process waits for the old one, and the old one
retries while the new one is not there yet.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import sys
import time
from collections.abc import Callable
from typing import TypeVar

import anyio

from lbx import (
    Config,
    ConfigSchema,
    Field,
    PluginManager,
    Server,
    StartupError,
    hookimpl,
)

__all__ = ["RECEIVE_TIMEOUT_SECONDS", "SEND_TIMEOUT_SECONDS", "Takeover"]

RECEIVE_TIMEOUT_SECONDS = 30.0
"""How long a new process (``-u``) waits for the old one by default (``upgrade:`` section)."""

SEND_TIMEOUT_SECONDS = 15.0
"""How long the old process keeps trying to reach the new one (Pingora: 5 tries, 1 s apart;
longer here because a new Python process under load can take seconds to start)."""

SEND_RETRY_INTERVAL = 0.2

MAX_FDS = 64
PAYLOAD_SIZE = 4096
READY = b"ready\n"

log = logging.getLogger("lbx.upgrade")

T = TypeVar("T")


class UpgradeFailed(Exception):
    """The new process did not take over; the old one keeps serving."""


def supported() -> bool:
    return sys.platform.startswith("linux") and hasattr(socket, "send_fds")


@hookimpl
def add_config_keys(schema: ConfigSchema) -> None:
    schema.add_section(
        "upgrade",
        {
            "receive_timeout_seconds": Field(
                "number",
                RECEIVE_TIMEOUT_SECONDS,
                "how long `-u` waits for the old process to send its listeners",
                minimum=0.1,
            ),
            "send_timeout_seconds": Field(
                "number",
                SEND_TIMEOUT_SECONDS,
                "on SIGQUIT, how long the old process tries to reach the new one",
                minimum=0.1,
            ),
        },
    )


@hookimpl
def configure(config: Config, plugin_manager: PluginManager) -> None:
    """With ``-u``, take part in the start-up: a ``Takeover`` receives the listeners."""
    if config.upgrade:
        plugin_manager.register(Takeover(), "upgrade.takeover")


class Takeover:
    """The new process of an upgrade (``-u``): takes the old one's listening sockets, and tells
    it once this process serves them (``server_started``)."""

    def __init__(self) -> None:
        self.handover: socket.socket | None = None
        """The connection from the old process, answered ``ready`` once this one serves."""

    @hookimpl
    async def acquire_listeners(self, server: Server) -> dict[str, socket.socket] | None:
        """Wait on ``upgrade_sock`` for the old process's listening sockets."""
        if not supported():
            raise StartupError("-u/--upgrade needs passing file descriptors, which only Linux has")
        path = server.config.upgrade_sock
        timeout = server.config.sections["upgrade"]["receive_timeout_seconds"]
        listeners, self.handover = await receive_listeners(path, timeout)
        return listeners

    @hookimpl
    async def server_started(self, server: Server) -> None:
        """Tell the old process that this one serves now (it may drain)."""
        if self.handover is not None:
            with contextlib.suppress(OSError):
                self.handover.sendall(READY)
            self.handover.close()
            self.handover = None


@hookimpl
async def send_listeners(server: Server) -> bool | None:
    """On SIGQUIT: send every listening socket to the new process on ``upgrade_sock``."""
    if not supported() or not server.listeners:
        return None
    section = server.config.sections["upgrade"]
    try:
        await send_listeners_to(
            server.config.upgrade_sock,
            dict(server.listeners),
            section["send_timeout_seconds"],
            section["receive_timeout_seconds"],
        )
    except (OSError, UpgradeFailed) as exc:
        log.error("upgrade: %s", exc)
        return False
    return True


async def receive_listeners(
    path: str, timeout: float
) -> tuple[dict[str, socket.socket], socket.socket]:
    """Serve ``path`` once: accept the old process and take its sockets.

    Returns them with the connection, which stays open until this process serves (then it
    answers ``ready`` there). The waits are the event loop's, not a thread's, so that SIGINT
    ends them at once (a thread blocked in ``accept`` would hold the exit for ``timeout``).
    """
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.setblocking(False)
    try:
        server.bind(path)
        os.chmod(path, 0o600)
        server.listen(1)
        log.info(
            "-u: waiting up to %gs for the running lbx to send its listeners on %s", timeout, path
        )
        with anyio.move_on_after(timeout):
            conn, _ = await _when_readable(server, server.accept)
            conn.setblocking(False)
            try:
                payload, fds, _, _ = await _when_readable(
                    conn, lambda: socket.recv_fds(conn, PAYLOAD_SIZE, MAX_FDS)
                )
            except BaseException:
                conn.close()
                raise
            return _listeners(payload, fds, conn)
        raise StartupError(
            f"-u: no running lbx sent its listeners on {path} within {timeout:g}s "
            "(send it SIGQUIT; does it use the same upgrade_sock?)"
        )
    except OSError as exc:
        raise StartupError(f"-u: cannot receive listeners on {path}: {exc}") from None
    finally:
        server.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


async def _when_readable(sock: socket.socket, operation: Callable[[], T]) -> T:
    """``operation()`` on the non-blocking ``sock`` once it is readable (again, after a spurious
    wake-up or a client that connected and left)."""
    while True:
        await anyio.wait_readable(sock)
        try:
            return operation()
        except BlockingIOError:
            continue


def _listeners(
    payload: bytes, fds: list[int], conn: socket.socket
) -> tuple[dict[str, socket.socket], socket.socket]:
    """The sockets received, by listen address (checked against the payload)."""
    addresses = payload.decode("latin-1").split()  # any bytes: a wrong count fails below
    if not payload and not fds:
        conn.close()
        raise StartupError("-u: the running lbx closed the connection without sending listeners")
    if len(addresses) != len(fds):
        conn.close()
        for fd in fds:
            os.close(fd)
        raise StartupError(f"-u: got {len(fds)} sockets for {len(addresses)} addresses")
    listeners = {}
    for address, fd in zip(addresses, fds, strict=True):
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        listeners[address] = sock
    return listeners, conn


async def send_listeners_to(
    path: str,
    listeners: dict[str, socket.socket],
    timeout: float = SEND_TIMEOUT_SECONDS,
    ready_timeout: float = RECEIVE_TIMEOUT_SECONDS,
) -> None:
    """Connect to the new process (retrying while it starts), send the sockets, and wait until
    it answers ``ready``; raises ``UpgradeFailed`` or ``OSError`` when it does not. The waits
    are the event loop's, so SIGINT cuts them short."""
    addresses = list(listeners)
    payload = " ".join(addresses).encode()
    if len(payload) > PAYLOAD_SIZE or len(addresses) > MAX_FDS:
        raise OSError(errno.EMSGSIZE, "too many listeners to hand over")
    deadline = time.monotonic() + timeout
    while True:
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.setblocking(False)  # a full backlog makes a blocking connect wait, on the loop
        try:
            client.connect(path)
        except (FileNotFoundError, ConnectionRefusedError, BlockingIOError):
            client.close()
            if time.monotonic() >= deadline:
                raise
            await anyio.sleep(SEND_RETRY_INTERVAL)
            continue
        with client:
            socket.send_fds(client, [payload], [listeners[a].fileno() for a in addresses])
            with anyio.move_on_after(ready_timeout) as waiting:
                await anyio.wait_readable(client)
            if waiting.cancelled_caught:
                raise UpgradeFailed(
                    f"the new process took the listeners but did not serve within "
                    f"{ready_timeout:g}s"
                )
            if client.recv(len(READY)) != READY:
                raise UpgradeFailed("the new process took the listeners but exited before serving")
        return
