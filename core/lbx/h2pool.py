"""``H2Pool``: the HTTP/2 upstream connections of a process, shared by concurrent requests.

A peer with ``http_version`` 2 (or ALPN) gets one connection carrying up to ``max_h2_streams``
requests at once (Pingora's ``PeerOptions``); a request finding every connection full opens
another. Requests arriving while the first connection is being opened wait for it instead of
each opening one. A backend that refuses HTTP/2 (ALPN chose ``http/1.1``, or it answered the
preface with something else) is remembered for ``H1_MEMORY_SECONDS``, and its requests go over
lbx's HTTP/1.1 pool (``lbx.upstream``) meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Final

from lbx.errors import ErrorSource, ErrorType, ProxyError
from lbx.h2upstream import H2UpstreamConnection, H2UpstreamStream, PrefaceRefused
from lbx.peer import HTTP_VERSION_ALPN

if TYPE_CHECKING:
    from lbx.peer import Peer
    from lbx.upstream import Connector, UpstreamConnection

monotonic: Final = time.monotonic  # compiled: a C static, not a module attribute per call

log: Final = logging.getLogger("lbx.h2pool")

H1_MEMORY_SECONDS: Final = 300.0
"""How long a peer that refused HTTP/2 is spoken to in HTTP/1.1 before HTTP/2 is tried again."""

_ALPN: Final = {2: ("h2",), HTTP_VERSION_ALPN: ("h2", "http/1.1")}


class H2Pool:
    """HTTP/2 connections per peer (``pool_key``), and the peers that refused HTTP/2."""

    def __init__(self, connector: Connector) -> None:
        self.connector = connector
        self._conns: dict[str, list[H2UpstreamConnection]] = {}
        self._opening: dict[str, asyncio.Future[None]] = {}
        self._h1_until: dict[str, float] = {}

    def __len__(self) -> int:
        return sum(len(conns) for conns in self._conns.values())

    def idle_timeout(self, peer: Peer) -> float:
        timeout = peer.idle_timeout
        return timeout if timeout is not None else self.connector.pool.default_idle_timeout

    def speaks_h2(self, peer: Peer) -> bool:
        """Whether requests to ``peer`` try HTTP/2 (not a plaintext ALPN peer, not a peer that
        refused it lately)."""
        if peer.http_version == HTTP_VERSION_ALPN and not peer.tls:
            return False
        until = self._h1_until.get(peer.pool_key)
        if until is None:
            return True
        if monotonic() < until:
            return False
        del self._h1_until[peer.pool_key]
        return True

    async def stream(self, peer: Peer, fresh: bool) -> H2UpstreamStream | UpstreamConnection | None:
        """A stream to ``peer`` on a connection with room (``fresh``: on a new connection), or
        the HTTP/1.1 connection TLS's ALPN chose instead, or None when the peer refuses HTTP/2
        (then the caller uses the HTTP/1.1 pool). Connect errors are ``ProxyError``s."""
        key = peer.pool_key
        while True:
            if not fresh:
                for conn in self._conns.get(key, ()):
                    if conn.has_room:
                        return conn.take_stream()
                opening = self._opening.get(key)
                if opening is not None:
                    # Another request is opening a connection: its streams are for us too.
                    await asyncio.shield(opening)
                    continue
            if not self.speaks_h2(peer):
                return None
            return await self._open(peer, key)

    async def _open(self, peer: Peer, key: str) -> H2UpstreamStream | UpstreamConnection | None:
        connector = self.connector
        opened = asyncio.get_running_loop().create_future()
        self._opening.setdefault(key, opened)
        try:
            timeout = peer.connection_timeout or connector.connect_timeout
            alpn = _ALPN[peer.http_version]
            ssl_context = connector.ssl_context(peer, alpn) if peer.tls else None
            conn = await connector.open(
                peer,
                timeout,
                ssl_context,
                (peer.sni or peer.host) if peer.tls else None,
                lambda: H2UpstreamConnection(peer, self),
            )
            try:
                async with asyncio.timeout(timeout):
                    await conn.ready
            except PrefaceRefused as exc:
                self._refused(peer, str(exc))
                return None
            except TimeoutError as exc:
                conn.close()
                raise ProxyError(
                    ErrorType.CONNECT_TIMEDOUT,
                    ErrorSource.UPSTREAM,
                    f"no HTTP/2 SETTINGS from {peer.addr} within {timeout}s",
                ).caused_by(exc) from exc
            if conn.fallback is not None:
                self._refused(peer, "ALPN chose HTTP/1.1")
                fallback = conn.fallback
                connector.pool.reserve(key)  # counted as any HTTP/1.1 connection
                fallback.counted = True
                if fallback.closed:
                    connector.pool.discard(fallback)
                return fallback
            self._conns.setdefault(key, []).append(conn)
            return conn.take_stream()
        finally:
            if self._opening.get(key) is opened:
                del self._opening[key]
            opened.set_result(None)

    def _refused(self, peer: Peer, reason: str) -> None:
        log.info("%s does not speak HTTP/2 (%s): HTTP/1.1 for now", peer.addr, reason)
        self._h1_until[peer.pool_key] = monotonic() + H1_MEMORY_SECONDS

    def forget(self, conn: H2UpstreamConnection) -> None:
        """``conn`` takes no new stream (GOAWAY, closing)."""
        conns = self._conns.get(conn.peer.pool_key)
        if conns is not None and conn in conns:
            conns.remove(conn)
            if not conns:
                del self._conns[conn.peer.pool_key]

    def close_all(self) -> None:
        for conns in list(self._conns.values()):
            for conn in list(conns):
                conn.close()
        self._conns.clear()
