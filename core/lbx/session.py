"""``Session``: one request as hooks see it, whatever protocol brought it.

Every public name here is for hooks (docs/hooks.md lists them). The bytes of the request move
in its ``Exchange`` (``lbx.exchange``), which the session only reaches to answer for a hook.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Final

from lbx.http import is_final_status, replacement_head

if TYPE_CHECKING:
    from lbx.exchange import Exchange
    from lbx.http import RequestHeader, ResponseHeader
    from lbx.peer import Peer
    from lbx.proxy import ProxyService

monotonic: Final = time.monotonic  # compiled: a C static, not a module attribute per call


class Session:
    """One HTTP request through the proxy, as hooks see it (Pingora's ``Session``).

    Attributes hooks read: ``req_header`` (the client's request head), ``client_addr``
    (``ip:port``), ``client_ip``, ``server_addr``, ``service`` (``.name``, ``.load_balancer``),
    ``peer`` (set once ``upstream_peer`` chose), ``tries``, ``tried``, ``response_status``,
    ``upstream_response``, ``body_bytes_read``, ``body_bytes_sent``, ``start_time``,
    ``head_time``, ``ctx``, ``upgrade``.
    """

    __slots__ = (
        "_exchange",
        "_req_header",
        "_upgrade",
        "body_bytes_read",
        "body_bytes_sent",
        "client_addr",
        "client_ip",
        "ctx",
        "head_time",
        "peer",
        "response_status",
        "server_addr",
        "service",
        "start_time",
        "tried",
        "tries",
        "upstream_response",
    )

    def __init__(self, exchange: Exchange, req_header: RequestHeader) -> None:
        self._exchange: Exchange | None = exchange
        """None once the request is over (``Exchange.finish``)."""
        conn = exchange.conn
        self.service: ProxyService = exchange.service
        self._req_header = req_header
        self.client_addr: str = conn.client_addr
        self.client_ip: str = conn.client_ip
        self.server_addr: str = conn.server_addr
        self.peer: Peer | None = None
        self.tries = 0
        self.tried: list[Any] | None = None
        """Backends whose connection failed in this request; ``upstream_peer`` skips them."""
        self.response_status: int | None = None
        self.upstream_response: ResponseHeader | None = None
        self.body_bytes_read = 0
        self.body_bytes_sent = 0
        self.start_time = monotonic()
        self.head_time: float | None = None
        self.ctx: dict[str, Any] = {}
        self._upgrade: str | None = None

    @property
    def upgrade(self) -> str | None:
        """The ``Upgrade`` value lbx passes on (``websocket``): the client's list reduced to the
        service's ``upgrades:``; None when the request does not switch protocols. Hooks read
        it: the connection's framing follows it."""
        return self._upgrade

    @property
    def req_header(self) -> RequestHeader:
        return self._req_header

    @req_header.setter
    def req_header(self, head: RequestHeader) -> None:
        self._req_header = replacement_head(self._req_header, head)

    def __repr__(self) -> str:
        return f"<Session {self.req_header.method} {self.req_header.uri} from {self.client_addr}>"

    def _live(self) -> Exchange:
        exchange = self._exchange
        if exchange is None:
            raise RuntimeError("this request is over")
        return exchange

    @property
    def response_written(self) -> bool:
        """Whether a response head was already sent to the client."""
        exchange = self._exchange
        return exchange is None or exchange.response_started

    @property
    def keep_alive(self) -> bool:
        """Whether the client connection will be kept open after this request."""
        exchange = self._exchange
        return exchange is not None and exchange.keep_alive

    def set_keepalive(self, keep_alive: bool) -> None:
        """Force the client connection closed (False) after this response."""
        exchange = self._live()
        exchange.keep_alive = exchange.keep_alive and keep_alive

    def request_summary(self) -> str:
        """``GET /path, Host: example.com``: Pingora's one-line description of the request."""
        head = self.req_header
        return f"{head.method} {head.uri}, Host: {head.headers.get('host', '')}"

    async def respond(
        self,
        status: int,
        body: bytes = b"",
        headers: dict[str, str] | list[tuple[str, str]] | None = None,
    ) -> None:
        """Send a complete response from a hook (then return True from ``request_filter``)."""
        await self._live().respond(final_status(status), body, headers)

    async def respond_error(self, status: int) -> None:
        """Send Pingora's error response: empty body, ``Cache-Control: private, no-store``."""
        await self._live().respond_error(final_status(status))


def final_status(status: int) -> int:
    """``status``, or ValueError when it is not one a hook may answer with (``is_final_status``)."""
    if not is_final_status(status):
        raise ValueError(f"status {status} is not a final status (200-599)")
    return status
