"""What an ``Exchange`` asks of the client side of a request, whatever the protocol.

``H1Downstream`` (``lbx.h1``) is one client connection and the client side of its requests in
turn: it frames responses as HTTP/1.1 bytes. An HTTP/2 stream (``H2Stream``, ``lbx.h2``) is the
client side of one request on a multiplexed connection: it writes HEADERS, DATA and trailers.
The exchange calls the same methods on both (one call where HTTP/1.1 had one write), so the
HTTP/1.1 path pays nothing for HTTP/2. It types its client side as the union of the two classes,
which compiled code dispatches directly; mypy checks here that both implement this interface.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from lbx.exchange import Exchange
    from lbx.h1 import H1Downstream
    from lbx.h2stream import H2Stream
    from lbx.http import HeaderList, ResponseHeader
    from lbx.proxy import ProxyService
    from lbx.upstream import UpstreamConnection


class Downstream(Protocol):
    """The client side of one request, as its ``Exchange`` writes to it."""

    loop: asyncio.AbstractEventLoop
    client_addr: str
    client_ip: str
    server_addr: str
    lost: bool
    """The client is gone (or nothing more may be written to it)."""
    writable: bool
    """False while the client does not take more bytes (back-pressure)."""

    @property
    def shutting_down(self) -> bool:
        """Graceful shutdown: this is the last request of an HTTP/1.1 connection."""
        ...

    def send_head(
        self, head: ResponseHeader, framing: HeaderList, body: list[bytes], end: bool
    ) -> None:
        """The response head with the kernel's ``framing`` fields, the body bytes that arrived
        with it (already framed for HTTP/1.1), and whether the response ends there."""

    def write(self, data: bytes) -> None:
        """Response body bytes (HTTP/1.1: framed; HTTP/2: one or more DATA frames)."""

    def end_response(self, trailers: HeaderList | None) -> None:
        """The response body is over (HTTP/2: END_STREAM, on trailers when there are some).
        Not called for HTTP/1.1, whose framing ends the body."""

    def send_informational(self, status: int, headers: HeaderList) -> None:
        """A 1xx response (100, 103) before the final one."""

    def send_error(self, status: int, close: bool) -> None:
        """Pingora's error response: empty body, ``Cache-Control: private, no-store``."""

    async def drain(self) -> None:
        """Wait until the client took what was written (or is gone)."""

    def pause_reading_for(self, reason: object) -> None:
        """Stop reading the request (body) until ``resume_reading_for(reason)``."""

    def resume_reading_for(self, reason: object) -> None: ...

    def cancel_upgrade(self) -> None:
        """An Upgrade request was answered without a switch (HTTP/1.1 only)."""

    def start_tunnel(self, exchange: Exchange, upstream: UpstreamConnection) -> None:
        """The upstream switched protocols (HTTP/1.1 only)."""

    def write_eof(self) -> bool: ...

    def abort(self) -> None:
        """Cut the response short: HTTP/1.1 closes the connection, HTTP/2 resets the stream."""

    def request_finished(self, exchange: Exchange) -> None:
        """The request's phases are over (called once by its task)."""


class ClientConnection(Protocol):
    """A client connection as graceful shutdown sees it (``lbx.connections``)."""

    transport: asyncio.Transport | None
    client_addr: str
    service: ProxyService

    def close_when_idle(self) -> None:
        """Finish what is in flight, take nothing new, then close (HTTP/2: GOAWAY)."""

    def abort(self) -> None: ...


if TYPE_CHECKING:

    def _implemented_by(h1: H1Downstream, h2: H2Stream) -> tuple[Downstream, Downstream]:
        """mypy's check that both client sides implement ``Downstream``."""
        return h1, h2
