"""The connections of checks: the event loop's own transports, under httpcore's HTTP/1.1.

httpcore's default network layer goes through anyio: a task group per connect (happy eyeballs,
even for the one IP address a backend has) and a cancel scope around every read and write; and
``httpcore.AsyncHTTPConnection`` adds a lock and a trace around each request. Measured on
loopback (uvloop), these were about 40% of the CPU of an HTTP check on a new connection
(0.39 -> 0.24 ms) and a third on a kept-alive one (0.15 -> 0.10 ms). Checks connect to IP
literals or Unix paths and their deadline covers the whole check (``ServiceChecker.check_one``),
so a plain ``asyncio.Protocol`` under ``httpcore.AsyncHTTP11Connection`` is all they need;
httpcore's per-operation ``timeout`` arguments are not used. TCP checks connect the same way.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import httpcore


class _Protocol(asyncio.Protocol):
    """Buffers what the backend sends until httpcore reads it."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.closed = False
        """The backend finished sending, or the connection is lost."""
        self.error: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._wake()

    def eof_received(self) -> bool:
        self.closed = True
        self._wake()
        return False  # a check has nothing to send after its request: let the transport close

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.error = exc
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def wait(self) -> None:
        """Until data, the end of the stream or the loss of the connection."""
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None


class AsyncioStream(httpcore.AsyncNetworkStream):
    """One connection to a backend, as httpcore reads and writes it."""

    def __init__(self, transport: asyncio.Transport, protocol: _Protocol) -> None:
        self.transport = transport
        self.protocol = protocol

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        protocol = self.protocol
        while not protocol.buffer:
            if protocol.closed:
                if protocol.error is not None:
                    raise httpcore.ReadError(str(protocol.error)) from protocol.error
                return b""
            await protocol.wait()
        data = bytes(protocol.buffer[:max_bytes])
        del protocol.buffer[:max_bytes]
        return data

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        # A check request is a few hundred bytes, far below any write buffer limit: no flow
        # control needed.
        if self.transport.is_closing():
            raise httpcore.WriteError("connection closed")
        self.transport.write(buffer)

    async def aclose(self) -> None:
        self.transport.close()

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            # httpcore asks this of an idle connection: anything to read means the backend
            # closed it (or broke the protocol), so it must not carry another request.
            return bool(self.protocol.buffer) or self.protocol.closed
        name = {
            "ssl_object": "ssl_object",
            "client_addr": "sockname",
            "server_addr": "peername",
            "socket": "socket",
        }.get(info)
        return self.transport.get_extra_info(name) if name is not None else None


async def open_stream(
    host: str,
    port: int,
    unix_path: str | None,
    ssl_context: ssl.SSLContext | None,
    server_hostname: str | None,
) -> AsyncioStream:
    """Connect to ``host:port`` (or ``unix_path``), with TLS when given a context.

    Errors are the loop's: ``OSError`` (``ssl.SSLError`` included).
    """
    loop = asyncio.get_running_loop()
    if unix_path is not None:
        transport, protocol = await loop.create_unix_connection(_Protocol, unix_path)
    else:
        transport, protocol = await loop.create_connection(_Protocol, host, port)
    if ssl_context is not None:
        try:
            tls = await loop.start_tls(
                transport, protocol, ssl_context, server_hostname=server_hostname
            )
        except BaseException:
            transport.close()
            raise
        if tls is None:  # closed by the backend during the handshake
            raise ConnectionResetError("connection closed during the TLS handshake")
        transport = tls
    return AsyncioStream(transport, protocol)
