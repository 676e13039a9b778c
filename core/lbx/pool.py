"""The idle pool of HTTP/1.1 upstream connections, sized by the load it sees.

A connection goes back when its response is complete and the upstream keeps it alive
(``UpstreamConnection.reusable``); a request to the same peer takes the most recently used one.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import TYPE_CHECKING, Final

from lbx.errors import ErrorSource, ErrorType, ProxyError

if TYPE_CHECKING:
    from lbx.peer import Peer
    from lbx.upstream import UpstreamConnection

monotonic: Final = time.monotonic  # compiled: a C static, not a module attribute per call


class ConnectionPool:
    """Idle upstream connections, LIFO per peer, sized by the load (Envoy keeps what it opened).

    Under 1,000 busy clients the connections their requests needed are found again instead of
    opened anew (a connect, a TIME_WAIT socket, a slow start each). ``sweep`` closes those idle
    past their peer's ``idle_timeout`` (never handed out), then the least recently used past
    ``bound``: what the most in use at once in the period would need besides those still in use,
    at least ``upstream_keepalive_pool_size``. After a burst the surplus goes within two periods.
    The peak is of all peers together (load moving between peers may lose some). Size 0 keeps
    none.
    """

    def __init__(self, size: int, default_idle_timeout: float) -> None:
        self.size = size
        self.default_idle_timeout = default_idle_timeout
        self._sweep_interval = max(0.5, min(default_idle_timeout, 30.0) / 2)
        self._idle: dict[str, list[UpstreamConnection]] = {}
        self._lru: dict[UpstreamConnection, None] = {}
        """Every idle connection, least recently used first (cheaper than an OrderedDict)."""
        self._sweep_handle: asyncio.TimerHandle | None = None
        self._open: dict[str, int] = {}
        """Open (or opening) connections per peer, for ``max_upstream_connections``."""
        self._open_total = 0
        self._peak = 0
        """The most connections in use at once (open and not idle) since the last sweep."""
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}

    def __len__(self) -> int:
        return len(self._lru)

    def take(self, peer: Peer) -> UpstreamConnection | None:
        """An idle connection to ``peer`` that is still fresh, or None."""
        stack = self._idle.get(peer.pool_key)
        if not stack:
            return None
        now = monotonic()
        timeout = peer.idle_timeout if peer.idle_timeout is not None else self.default_idle_timeout
        lru = self._lru
        while stack:
            conn = stack.pop()
            if conn in lru:
                del lru[conn]
            if not conn.closed and now - conn.idle_since < timeout:
                self._note_in_use()
                return conn
            conn.close()
        return None

    def open_count(self, peer: Peer) -> int:
        """Connections to ``peer`` that are open or being opened."""
        return self._open.get(peer.pool_key, 0)

    @property
    def in_use(self) -> int:
        """Connections open (or opening) and not idle."""
        return self._open_total - len(self._lru)

    @property
    def bound(self) -> int:
        """How many idle connections a sweep keeps now: what the most in use at once since the
        last sweep would need besides those in use now (long requests, tunnels), at least
        ``size``."""
        return max(self.size, self._peak - self.in_use)

    def _note_in_use(self) -> None:
        in_use = self.in_use
        if in_use > self._peak:
            self._peak = in_use

    def reserve(self, key: str) -> None:
        self._open[key] = self._open.get(key, 0) + 1
        self._open_total += 1
        self._note_in_use()

    def release(self, key: str) -> None:
        self._open_total -= 1
        count = self._open.get(key, 0) - 1
        if count > 0:
            self._open[key] = count
        else:
            self._open.pop(key, None)
        self._wake(key)

    def _wake(self, key: str) -> None:
        waiters = self._waiters.get(key)
        while waiters:
            future = waiters.pop(0)
            if not future.done():
                future.set_result(None)
                return

    async def wait_for_slot(
        self, peer: Peer, limit: int, timeout: float
    ) -> UpstreamConnection | None:
        """Wait until ``peer`` has an idle connection (returned) or a free slot (None).

        Raises a 503 ``ProxyError`` when neither comes within ``timeout`` seconds.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        key = peer.pool_key
        while True:
            conn = self.take(peer)
            if conn is not None:
                return conn
            if self._open.get(key, 0) < limit:
                return None
            remaining = deadline - loop.time()
            future: asyncio.Future[None] = loop.create_future()
            waiters = self._waiters.setdefault(key, [])
            waiters.append(future)
            try:
                if remaining <= 0:
                    raise TimeoutError
                async with asyncio.timeout(remaining):
                    await future
            except TimeoutError:
                raise ProxyError(
                    ErrorType.CONNECT_ERROR,
                    ErrorSource.UPSTREAM,
                    f"all {limit} connections to {peer.addr} busy for {timeout}s",
                    status=503,
                ) from None
            finally:
                if future in waiters:
                    waiters.remove(future)
                if not waiters:
                    self._waiters.pop(key, None)

    def put(self, conn: UpstreamConnection) -> None:
        """Keep ``conn`` for reuse, or close it when pooling is off (or its backend left)."""
        if self.size <= 0 or conn.closed or conn.peer.retired:
            conn.close()
            return
        if self._waiters and conn.peer.pool_key in self._waiters:
            self._wake(conn.peer.pool_key)
        conn.resume_reading()  # an idle connection must notice when the upstream closes it
        conn.idle_since = monotonic()
        self._idle.setdefault(conn.peer.pool_key, []).append(conn)
        self._lru[conn] = None
        if self._sweep_handle is None:
            loop = asyncio.get_running_loop()
            self._sweep_handle = loop.call_later(self._sweep_interval, self.sweep)

    def discard(self, conn: UpstreamConnection) -> None:
        """Forget ``conn`` (it closed or is being closed)."""
        if conn.counted:
            conn.counted = False
            self.release(conn.peer.pool_key)
        self._lru.pop(conn, None)
        stack = self._idle.get(conn.peer.pool_key)
        if stack and conn in stack:
            stack.remove(conn)

    def close_idle(self, key: str) -> int:
        """Close the idle connections pooled for ``key`` (a backend that left); returns how
        many."""
        stack = self._idle.pop(key, None) or []
        for conn in stack:
            self._lru.pop(conn, None)
            conn.close()
        return len(stack)

    def close_all(self) -> None:
        for conn in list(self._lru):
            conn.close()
        self._idle.clear()
        self._lru.clear()
        if self._sweep_handle is not None:
            self._sweep_handle.cancel()
            self._sweep_handle = None

    def sweep(self) -> None:
        """Close what is idle past ``idle_timeout``, then past ``bound``; start the next period.
        Runs every half server ``idle_timeout`` (0.5-15 s) while any is idle; a call replaces it."""
        if self._sweep_handle is not None:
            self._sweep_handle.cancel()
        self._sweep_handle = None
        now = monotonic()
        for conn in list(self._lru):
            timeout = (
                conn.peer.idle_timeout
                if conn.peer.idle_timeout is not None
                else self.default_idle_timeout
            )
            if now - conn.idle_since >= timeout:
                conn.close()
        surplus = len(self._lru) - self.bound
        if surplus > 0:
            for conn in list(itertools.islice(self._lru, surplus)):
                conn.close()  # leaves _lru (discard)
        self._peak = self.in_use  # the next period's allowance follows the load it sees
        if self._lru:
            loop = asyncio.get_running_loop()
            self._sweep_handle = loop.call_later(self._sweep_interval, self.sweep)
