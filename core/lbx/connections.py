"""Bookkeeping of client connections: every open one (for graceful shutdown), coarse deadlines
for many objects in one periodic sweep, what the connections from one client share, and the
request parsers they borrow."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import TYPE_CHECKING, Any, Final, Protocol

from lbx.collector import YoungGeneration
from lbx.h1parse import ParserPool
from lbx.request_rules import Forwarding

if TYPE_CHECKING:
    from lbx.downstream import ClientConnection

log: Final = logging.getLogger("lbx.connections")
monotonic: Final = time.monotonic  # compiled: a C static, not a module attribute per call

DRAIN_LINGER_SECONDS: Final = 1.0
"""On shutdown, how long an idle client connection stays open before it is closed (HTTP/2:
between the first GOAWAY, when any stream may still come, and the last one)."""
LINGER_SECONDS: Final = 2.0
"""After an error answer (HTTP/1.1) or a connection error (HTTP/2), how long what the client
still sends is read and dropped before the close, so that it reads the answer, not a reset."""


class Expiring(Protocol):
    """What a deadline is set for (``Deadlines``)."""

    def deadline_passed(self) -> None:
        """The deadline set for this object passed (it is no longer set)."""


class Deadlines:
    """Coarse timeouts for many objects: one periodic sweep instead of a timer per request.

    A loop timer costs about 1.5 µs to arm and cancel, and every request needed two (response
    head, keep-alive idle); a deadline here is a dict entry, the object and its time, checked
    every ``RESOLUTION``. One deadline per object: the object tells by its state what passed
    (no callback object made per deadline, nor kept by an idle connection).
    """

    RESOLUTION = 0.25

    def __init__(self) -> None:
        self._entries: dict[Expiring, float] = {}
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def set(self, loop: asyncio.AbstractEventLoop, key: Expiring, seconds: float) -> None:
        """Call ``key.deadline_passed()`` once ``seconds`` passed, unless ``clear(key)`` or
        another ``set(key, ...)`` came first."""
        # monotonic() rather than loop.time(): a C function call, not a method lookup (set and
        # clear run twice per request).
        self._entries[key] = monotonic() + seconds
        if self._handle is None:
            self._loop = loop
            self._handle = loop.call_later(self.RESOLUTION, self._sweep)

    def clear(self, key: Expiring) -> None:
        entries = self._entries
        if key in entries:  # compiled to dict operations; pop(key, None) is a method call
            del entries[key]

    def _sweep(self) -> None:
        loop = self._loop
        assert loop is not None
        now = monotonic()
        entries = self._entries
        for key in [key for key, deadline in entries.items() if deadline <= now]:
            deadline = entries.get(key)
            if deadline is not None and deadline <= now:  # not cleared or set again meanwhile
                del entries[key]
                try:
                    key.deadline_passed()
                except Exception:  # (a body filter hook, ending a tunnel): the others still run
                    log.exception("a deadline of %r failed", key)
        self._handle = loop.call_later(self.RESOLUTION, self._sweep) if entries else None


class Connections:
    """Every open client connection of the process, for graceful shutdown."""

    def __init__(self) -> None:
        self.open: set[ClientConnection] = set()
        self.deadlines = Deadlines()
        self.parsers = ParserPool()
        """HTTP/1.1 request parsers, lent to the connections while they read (``lbx.h1parse``)."""
        self.shutting_down = False
        self.streams = 0
        """Requests running on HTTP/2 connections (``streams_changed``): a few connections
        may carry thousands of them."""
        self.young: YoungGeneration | None = None
        """Set where requests are served (``Server._serve``, ``serve_worker``): the collector
        follows the open connections and their HTTP/2 streams."""
        self._all_closed: asyncio.Event | None = None

    def add(self, conn: ClientConnection) -> None:
        self.open.add(conn)
        self._size_collector()

    def remove(self, conn: ClientConnection) -> None:
        self.open.discard(conn)
        self._size_collector()
        if not self.open and self._all_closed is not None:
            self._all_closed.set()

    def streams_changed(self, change: int) -> None:
        """An HTTP/2 connection's running requests changed by ``change``."""
        self.streams += change
        self._size_collector()

    def _size_collector(self) -> None:
        """Resize the youngest generation when the load left the range it was sized for."""
        young = self.young
        if young is not None:
            load = len(self.open) + self.streams
            if load > young.grow_above or load < young.shrink_below:
                young.resize(load)

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


class ClientOrigin:
    """What the client connections from one IP to one listener have in common, kept once for
    all of them: the names lbx logs them by, whether the client is trusted
    (``trusted_proxies``) and the forwarding fields its requests get. A connection's own is
    only its ``client_addr`` (the port): a client, or a proxy in front of lbx, that opens many
    connections costs about 300 bytes less per connection, and no address parse for each."""

    def __init__(
        self, client_ip: str, server_addr: str, trusted: bool, forwarding: Forwarding
    ) -> None:
        self.client_ip = client_ip
        self.server_addr = server_addr
        self.trusted = trusted
        self.forwarding = forwarding


def format_address(addr: Any) -> str:
    """A socket address as lbx logs it: ``ip:port``, ``[v6]:port``."""
    if isinstance(addr, tuple) and len(addr) >= 2:
        host = str(addr[0])
        return f"[{host}]:{addr[1]}" if ":" in host else f"{host}:{addr[1]}"
    return str(addr)


def accepted(transport: asyncio.BaseTransport) -> tuple[str, str, str]:
    """A new client connection's ``(client_addr, server_addr, client_ip)`` as lbx logs them
    (``unix`` for a Unix socket's client). (uvloop, like asyncio, turns Nagle's algorithm off
    on every TCP connection: a response head does not wait for its body.)"""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        peer = transport.get_extra_info("peername")
        local = transport.get_extra_info("sockname")
        return format_address(peer), format_address(local), str(peer[0])
    return "unix", "unix:" + str(transport.get_extra_info("sockname") or ""), "unix"
