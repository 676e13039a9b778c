"""What operators' plugins build admin endpoints with (``lbx-prometheus``, ``lbx-status``): a
tiny HTTP/1.1 server run as a background service, counters shared by every worker process, and a
sampler of per-process gauges.

Admin traffic never goes through the proxy's data path: it is served by a background service
(in the background-services process when ``threads: N``) with asyncio streams, which are plenty
fast for a scrape or a status query. A Unix socket is made readable by its owner only.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hmac
import ipaddress
import logging
import math
import os
import socket
import time
from collections.abc import Awaitable, Callable

import anyio
import anyio.abc

from lbx.errors import ConfigError
from lbx.http import is_final_status
from lbx.sharedrows import SharedRows

__all__ = [
    "Endpoint",
    "Handler",
    "Sampler",
    "SharedRows",
    "check_address",
    "check_exposure",
    "describe",
    "parse_address",
    "sample_every",
    "serve_forever",
    "start",
]

log = logging.getLogger(__name__)

Handler = Callable[[str, str, bytes], Awaitable[tuple[int, str, bytes]]]
"""``handler(method, path, body)`` returns ``(status, content_type, body)``."""

MAX_HEAD = 16 * 1024
MAX_BODY = 64 * 1024
TIMEOUT = 10.0
TAKEOVER_POLL_SECONDS = 0.2
"""How often the new process of an upgrade tries an address the previous one still holds."""
TAKEOVER_WARN_SECONDS = 30.0
"""After this long the address is not the previous lbx's handover (it lets go within seconds):
said once, as a warning."""
REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Content Too Large",
    500: "Internal Server Error",
}


def parse_address(address: str) -> tuple[str, int] | str:
    """``unix:/path`` gives the path; ``host:port`` or ``[v6]:port`` gives (host, port)."""
    if address.startswith("unix:"):
        path = address[len("unix:") :]
        if not path:
            raise ValueError(f"{address!r}: empty Unix socket path")
        return path
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{address!r}: expected host:port, [v6]:port or unix:/path")
    return host.strip("[]"), int(port)


def check_address(value: object) -> str | None:
    """A config ``Field`` check for listen addresses."""
    try:
        parse_address(str(value))
    except ValueError as exc:
        return str(exc)
    return None


def check_exposure(address: str, token: str | None) -> str | None:
    """Why an admin endpoint that can change lbx must not listen on ``address`` without a
    token (a TCP address other than loopback), or None when it may."""
    target = parse_address(address)
    if isinstance(target, str) or token:
        return None
    try:
        loopback = ipaddress.ip_address(target[0]).is_loopback
    except ValueError:
        loopback = target[0] == "localhost"
    if loopback:
        return None
    return (
        f"{address} is reachable from other machines, and this endpoint can point traffic "
        "anywhere: listen on a Unix socket or on loopback, or set a token"
    )


def describe(server: asyncio.Server, address: str) -> str:
    """The address as bound (port 0 resolved)."""
    if address.startswith("unix:"):
        return address
    name = server.sockets[0].getsockname()
    host, port = name[0], name[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def start(
    address: str, handler: Handler, what: str, token: str | None = None
) -> asyncio.Server:
    """Listen on ``address``; a Unix socket is made readable by its owner only. With ``token``
    every request must carry ``Authorization: Bearer <token>`` (else 401)."""

    async def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await asyncio.wait_for(_exchange(reader, writer, handler, token), TIMEOUT)
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    target = parse_address(address)
    try:
        if isinstance(target, str):
            with contextlib.suppress(FileNotFoundError):
                _remove_stale(target)
            old = os.umask(0o077)  # never readable by others, not even for an instant
            try:
                server = await asyncio.start_unix_server(connected, target)
            finally:
                os.umask(old)
            os.chmod(target, 0o600)
        else:
            server = await asyncio.start_server(connected, target[0], target[1], reuse_address=True)
    except OSError as exc:
        error = AddressInUse if exc.errno == errno.EADDRINUSE else ConfigError
        raise error(f"{what}: cannot listen on {address}: {exc.strerror or exc}") from None
    return server


class AddressInUse(ConfigError):
    """Another process listens on an admin endpoint's address."""


async def _when_free(
    address: str, handler: Handler, what: str, token: str | None, name: str
) -> asyncio.Server:
    """``start`` once the process that holds ``address`` let it go; a warning if that takes
    longer than an upgrade's handover should (something else holds it)."""
    warn_at = time.monotonic() + TAKEOVER_WARN_SECONDS
    while True:
        await anyio.sleep(TAKEOVER_POLL_SECONDS)
        try:
            return await start(address, handler, what, token)
        except AddressInUse as exc:
            if time.monotonic() >= warn_at:
                logging.getLogger(f"lbx.{name}").warning("%s; still trying", exc)
                warn_at = math.inf


def _remove_stale(path: str) -> None:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)  # left by a process that died
    except OSError:
        pass
    else:
        raise OSError(98, "another process is listening there")
    finally:
        probe.close()


async def serve_forever(server: asyncio.Server, address: str) -> None:
    """Serve until cancelled, then close (and remove the Unix socket file, unless another
    process bound a new one there meanwhile: the next lbx of an upgrade)."""
    target = parse_address(address)
    ours = _inode(target) if isinstance(target, str) else None
    try:
        await asyncio.Event().wait()
    finally:
        # Removed while still listening: a successor's probe of the file then finds it busy
        # and waits, so this never removes the file it binds next.
        if isinstance(target, str) and ours is not None and _inode(target) == ours:
            with contextlib.suppress(OSError):
                os.unlink(target)
        server.close()


def _inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


class Endpoint:
    """An admin endpoint as a background service: ``register(name, endpoint.serve, ready=True)``
    in ``register_background_services`` starts it before lbx serves (a bad address stops the
    start with one line) and logs where it listens."""

    def __init__(
        self,
        name: str,
        address: str,
        handler: Handler,
        announce: str = "endpoint on {address}",
        token: str | None = None,
        takeover: bool = False,
    ) -> None:
        self.token = token
        """When set, requests without ``Authorization: Bearer <token>`` are answered 401."""
        self.takeover = takeover
        """The new process of an upgrade (``config.upgrade``): an address in use is taken once
        it is free (the previous lbx lets go once it handed its listeners over), instead of
        stopping the start."""
        self.name = name
        """The plugin's config section: errors name ``<name>.listen``."""
        self.address = address
        self.handler = handler
        self.announce = announce
        """The log line once it listens, ``{address}`` being where (port 0 resolved)."""

    async def serve(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        what = f"{self.name}.listen"
        try:
            server = await start(self.address, self.handler, what, self.token)
        except AddressInUse:
            if not self.takeover:
                raise
            logging.getLogger(f"lbx.{self.name}").info(
                "%s: %s is in use; listening there once the previous lbx lets go of it",
                self.name,
                self.address,
            )
            task_status.started()  # the upgrade must not wait: the old process lets go after it
            task_status = anyio.TASK_STATUS_IGNORED
            server = await _when_free(self.address, self.handler, what, self.token, self.name)
        bound = describe(server, self.address)
        logging.getLogger(f"lbx.{self.name}").info(
            "%s: %s", self.name, self.announce.format(address=bound)
        )
        task_status.started()
        await serve_forever(server, self.address)


def sample_every(seconds: float, sample: Callable[[], None]) -> Sampler:
    """Call ``sample`` now and then every ``seconds`` on the running loop, until the returned
    ``Sampler`` is cancelled (call it from ``worker_started``; cancel it in
    ``server_stopping``: a reload starts the plugins of the new configuration)."""
    sampler = Sampler(seconds, sample)
    sampler.tick()
    return sampler


class Sampler:
    """A ``sample_every`` in progress."""

    def __init__(self, seconds: float, sample: Callable[[], None]) -> None:
        self.seconds = seconds
        self.sample = sample
        self._handle: asyncio.TimerHandle | None = None
        self.cancelled = False

    def tick(self) -> None:
        if self.cancelled:
            return
        self.sample()
        self._handle = asyncio.get_running_loop().call_later(self.seconds, self.tick)

    def cancel(self) -> None:
        self.cancelled = True
        if self._handle is not None:
            self._handle.cancel()


async def _exchange(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    handler: Handler,
    token: str | None = None,
) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    if len(head) > MAX_HEAD:
        await _send(writer, 413, "text/plain", b"request head too large\n")
        return
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        await _send(writer, 400, "text/plain", b"bad request\n")
        return
    method, target = parts[0], parts[1]
    length = 0
    authorization = ""
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            if not value.strip().isdigit():
                await _send(writer, 400, "text/plain", b"bad content-length\n")
                return
            length = int(value)
        elif name.strip().lower() == "authorization":
            authorization = value.strip()
    if token is not None and not hmac.compare_digest(
        authorization.encode("latin-1"), f"Bearer {token}".encode("latin-1", "replace")
    ):
        await _send(writer, 401, "text/plain", b"missing or wrong Authorization: Bearer token\n")
        return
    if length > MAX_BODY:
        await _send(writer, 413, "text/plain", b"body too large\n")
        return
    body = await reader.readexactly(length) if length else b""
    try:
        status, content_type, payload = await handler(method, target.split("?", 1)[0], body)
        if not (is_final_status(status) and content_type.isascii() and content_type.isprintable()):
            # Both go into the head as they are: a CR or LF would add fields of its choosing.
            raise ValueError(f"answer with status {status!r}, content type {content_type!r}")
    except Exception:
        log.exception("admin endpoint failed on %s %s", method, target)
        status, content_type, payload = 500, "text/plain", b"internal error\n"
    await _send(writer, status, content_type, b"" if method == "HEAD" else payload)


async def _send(writer: asyncio.StreamWriter, status: int, content_type: str, body: bytes) -> None:
    head = (
        f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    writer.write(head.encode("latin-1") + body)
    await writer.drain()
