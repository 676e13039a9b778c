"""Accepting client connections: up to ``MAX_ACCEPT`` per wake-up of the event loop.

uvloop's servers take one connection per turn of the event loop (libuv 1.45 stopped accepting
in a loop). A turn that serves 1,000 busy connections lasts tens of milliseconds, so under that
load new clients waited in the listen queue for seconds: 50 accepts a second were measured,
and 1,000 new clients (a load generator's reconnect) needed 4 s to get in. lbx watches its
listening sockets itself and takes up to ``MAX_ACCEPT`` queued connections each time one is
readable, as HAProxy does (``tune.maxaccept``), then hands each to the loop as a transport with
its protocol (TLS: after the handshake).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
from collections.abc import Callable

log = logging.getLogger("lbx.server")

MAX_ACCEPT = 256
"""Connections taken per readiness of a listening socket. HAProxy takes 64
(``tune.maxaccept``), but a turn of lbx's loop lasts longer than one of HAProxy's: with 5,000
clients connecting at once, 64 per turn left the last ones 1.6-1.7 s in the listen queue (p99),
256 per turn 0.5-0.65 s, as HAProxy's. Not unbounded: the workers of ``threads: N`` share a
listening socket, and one of them taking a whole burst would leave the others idle."""

PAUSE_SECONDS = 1.0
"""After running out of file descriptors (or memory), how long accepting stops; the
connections meanwhile wait in the listen queue (asyncio's servers do the same)."""


_CLIENT_GONE = frozenset(
    getattr(errno, name)
    for name in (
        "ECONNABORTED",
        "EPROTO",
        "EPERM",
        "ENETDOWN",
        "ENETUNREACH",
        "EHOSTDOWN",
        "EHOSTUNREACH",
        "ENOPROTOOPT",
        "EOPNOTSUPP",
        "ENONET",  # Linux only
    )
    if hasattr(errno, name)
)
"""``accept`` errors about the one connection taken (Linux's accept(2) passes on a pending
network error): the next one is taken. Any other (out of descriptors or memory, a broken
listening socket) pauses accepting."""


class Acceptor:
    """One listening socket's accepting: started with ``start``, stopped with ``close`` (the
    socket itself stays open: its owner closes it or hands it to another process)."""

    def __init__(
        self,
        sock: socket.socket,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        name: str,
        ssl_context: ssl.SSLContext | None = None,
        handshake_timeout: float | None = None,
    ) -> None:
        self.sock = sock
        self.name = name
        """The listener as the server logs it (``127.0.0.1:8080``, ``unix:/run/lbx.sock``)."""
        self.protocol_factory = protocol_factory
        self.ssl_context = ssl_context
        self.handshake_timeout = handshake_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watching = False
        self._resume: asyncio.TimerHandle | None = None
        self._wrapping: set[asyncio.Task[None]] = set()
        """Accepted connections being made transports (TLS: handshaking): the loop keeps only
        weak references to tasks."""

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.sock.setblocking(False)  # a socket from another process or a plugin may not be
        self._watch(loop)

    def close(self) -> None:
        """Stop accepting."""
        loop, self._loop = self._loop, None
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
        if loop is not None:
            self._unwatch(loop)

    def take_queued(self) -> list[asyncio.Task[None]]:
        """Stop watching the socket and take every connection still in its queue (closing a
        listening socket resets them, and those clients did nothing wrong). Returns the tasks
        still making plain connections transports, which take a turn of the loop each; TLS
        handshakes under way are not waited for (a connection that completes one after a
        graceful stop began is answered with ``Connection: close``)."""
        loop = self._loop
        if loop is None:
            return []
        self._unwatch(loop)
        while self.accept(MAX_ACCEPT):
            pass
        return [] if self.ssl_context is not None else list(self._wrapping)

    def accept(self, limit: int) -> list[asyncio.Task[None]]:
        """Take up to ``limit`` queued connections; returns the tasks that make them
        transports."""
        loop = self._loop
        started: list[asyncio.Task[None]] = []
        if loop is None:
            return started
        for _ in range(limit):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                break  # the queue is empty
            except OSError as exc:
                if exc.errno in _CLIENT_GONE:
                    continue
                self._pause(loop, exc)
                break
            conn.setblocking(False)
            task = loop.create_task(self._wrap(loop, conn))
            self._wrapping.add(task)
            task.add_done_callback(self._wrapping.discard)
            started.append(task)
        return started

    async def _wrap(self, loop: asyncio.AbstractEventLoop, conn: socket.socket) -> None:
        try:
            await loop.connect_accepted_socket(
                self.protocol_factory,
                conn,
                ssl=self.ssl_context,
                ssl_handshake_timeout=self.handshake_timeout if self.ssl_context else None,
            )
        except OSError as exc:  # SSLError, ConnectionError, TimeoutError are OSErrors
            # A failed TLS handshake or a client that left at once: its connection only.
            log.debug("connection not set up: %s", exc)
            conn.close()
        except Exception:
            log.exception("cannot set up a connection on %s", self.name)
            conn.close()

    # The socket object, not its descriptor, is watched: the loop then holds it open until
    # the watch ends, so a socket closed too early cannot leave a watch on a closed (or
    # reused) descriptor.
    def _watch(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self._watching:
            loop.add_reader(self.sock, self.accept, MAX_ACCEPT)
            self._watching = True

    def _unwatch(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._watching:
            loop.remove_reader(self.sock)
            self._watching = False

    def _pause(self, loop: asyncio.AbstractEventLoop, exc: OSError) -> None:
        log.error(
            "cannot accept connections on %s: %s; retrying in %gs",
            self.name,
            exc.strerror or exc,
            PAUSE_SECONDS,
        )
        self._unwatch(loop)
        if self._resume is not None:
            self._resume.cancel()
        self._resume = loop.call_later(PAUSE_SECONDS, self._resume_accepting, loop)

    def _resume_accepting(self, loop: asyncio.AbstractEventLoop) -> None:
        self._resume = None
        if self._loop is loop:
            self._watch(loop)
