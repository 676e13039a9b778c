"""``H2Stream``: the client side of one request on an HTTP/2 connection (``lbx.h2``).

What the request's ``Exchange`` writes (``lbx.downstream.Downstream``) becomes HEADERS, DATA
within the client's flow-control windows, and END_STREAM or trailers; a client that gives no
window makes the stream hold up to ``OUTPUT_HIGH_WATER`` bytes, then pause the upstream.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Final

from h2.errors import ErrorCodes

from lbx.http import HOP_BY_HOP, NO_BODY_STATUSES, HeaderList, ResponseHeader

if TYPE_CHECKING:
    from lbx.exchange import Exchange
    from lbx.h2 import H2Downstream
    from lbx.upstream import UpstreamConnection

OUTPUT_HIGH_WATER: Final = 64 * 1024
"""Response bytes a stream holds for a client that gives no window; past it the upstream
response is paused (as a full socket buffer pauses it for HTTP/1.1)."""

_STATUS: Final = {code: b"%d" % code for code in range(100, 600)}
_CONNECTION_SPECIFIC: Final = HOP_BY_HOP | {b"host"}
"""Fields an HTTP/2 response never carries (RFC 9113 8.2.2; Host is a request field)."""
_ERROR_FIELDS: Final[HeaderList] = [
    (b"server", b"lbx"),
    (b"content-length", b"0"),
    (b"cache-control", b"private, no-store"),
]


def h2_fields(status: int, fields: HeaderList) -> HeaderList:
    """A response head in HTTP/2 form: ``:status`` first, names lower-cased, no
    connection-specific fields."""
    out = [(b":status", _STATUS.get(status) or b"%d" % status)]
    for name, value in fields:
        lower = name.lower()
        if lower not in _CONNECTION_SPECIFIC:
            out.append((lower, value))
    return out


class H2Stream:
    """The client side of one request on an HTTP/2 connection (``lbx.downstream.Downstream``)."""

    def __init__(self, conn: H2Downstream, stream_id: int) -> None:
        self.conn = conn
        self.stream_id = stream_id
        self.loop = conn.loop
        self.client_addr = conn.client_addr
        self.client_ip = conn.client_ip
        self.server_addr = conn.server_addr
        self.lost = False
        """Reset, or the connection is gone: nothing more is written."""
        self.writable = True
        self.exchange: Exchange | None = None
        self.task: asyncio.Task[None] | None = None
        self.finished = False
        """The request's phases are over (``request_finished``)."""
        self.remote_ended = False
        self.content_length = -1
        """The request's ``content-length`` (-1: none), which its DATA must add up to."""
        self.ended = False
        """END_STREAM was sent (or is queued behind ``_outbox``)."""
        self._outbox: list[bytes] = []
        self._outbox_size = 0
        self._trailers: HeaderList | None = None
        self._paused: set[object] = set()
        self._unacked = 0
        """Request body bytes taken while reading is paused: acknowledged (window) on resume."""
        self._drain_waiter: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        return f"<H2Stream {self.stream_id} from {self.client_addr}>"

    # -- the response (lbx.downstream.Downstream) ---------------------------------------------
    @property
    def shutting_down(self) -> bool:
        return False  # streams end one by one; the connection sends GOAWAY

    def send_head(
        self, head: ResponseHeader, framing: HeaderList, body: list[bytes], end: bool
    ) -> None:
        if self.lost:
            return
        fields = h2_fields(head.status, head.headers.raw + framing if framing else head.headers.raw)
        only_head = end and not body and not self._has_trailers()
        if not self.conn.send_headers(self, fields, only_head):
            return
        if only_head:
            self._ended()
            return
        for part in body:
            self._queue(part)
        if end:
            self.end_response(self._exchange_trailers())
        else:
            self._flush()

    def write(self, data: bytes) -> None:
        if not self.lost and data:
            self._queue(data)
            self._flush()

    def end_response(self, trailers: HeaderList | None) -> None:
        if self.lost or self.ended:
            return
        self.ended = True
        self._trailers = trailers
        self._flush()

    def send_informational(self, status: int, headers: HeaderList) -> None:
        if not self.lost and status != 101:
            self.conn.send_headers(self, h2_fields(status, headers), False)

    def send_error(self, status: int, close: bool) -> None:
        fields = [(b":status", _STATUS[status]), *_ERROR_FIELDS]
        if status in NO_BODY_STATUSES:  # no content-length for them (RFC 9110 8.6)
            del fields[2]
        if not self.lost and self.conn.send_headers(self, fields, True):
            self._ended()

    async def drain(self) -> None:
        if self.lost or not self._outbox:
            return
        self._drain_waiter = self.loop.create_future()
        await self._drain_waiter

    def pause_reading_for(self, reason: object) -> None:
        self._paused.add(reason)

    def resume_reading_for(self, reason: object) -> None:
        if reason not in self._paused:
            return
        self._paused.discard(reason)
        if not self._paused and self._unacked:
            unacked, self._unacked = self._unacked, 0
            self.conn.acknowledge(self, unacked)

    def cancel_upgrade(self) -> None:
        """Not reached: an HTTP/2 request offers no Upgrade."""

    def start_tunnel(self, exchange: Exchange, upstream: UpstreamConnection) -> None:
        self.abort()  # not reached: lbx never offers an upgrade on an HTTP/2 request

    def write_eof(self) -> bool:
        return False

    def abort(self) -> None:
        """Cut the response short: RST_STREAM INTERNAL_ERROR (the connection goes on)."""
        self.reset(ErrorCodes.INTERNAL_ERROR)

    def request_finished(self, exchange: Exchange) -> None:
        if self.finished:
            return
        self.finished = True
        self.conn.stream_finished(self)
        self._release_window()
        if not self.lost and not self.ended:
            # The phases ended without a response end (a bug, or lbx's error answer was not
            # possible): the client must not wait for the rest.
            self.reset(ErrorCodes.INTERNAL_ERROR)
        self._maybe_done()

    # -- internals ----------------------------------------------------------------------------
    def _has_trailers(self) -> bool:
        exchange = self.exchange
        return exchange is not None and bool(exchange.response_trailers)

    def _exchange_trailers(self) -> HeaderList | None:
        exchange = self.exchange
        return exchange.response_trailers if exchange is not None else None

    def _queue(self, data: bytes) -> None:
        self._outbox.append(data)
        self._outbox_size += len(data)
        if self.writable and self._outbox_size > OUTPUT_HIGH_WATER:
            self._set_writable(False)

    def _flush(self) -> None:
        """Send what the client's flow-control windows allow; END_STREAM once all is out."""
        if self.lost:
            return
        sent = self.conn.send_data(self, self._outbox)
        if sent:
            self._outbox_size -= sent
        if not self._outbox:
            if self.ended and self.conn.send_end(self, self._trailers):
                self._ended()
                return
            waiter = self._drain_waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        if not self.writable and self._outbox_size <= OUTPUT_HIGH_WATER // 2 and self.conn.writable:
            self._set_writable(True)
        self.conn.write_pending()

    def _set_writable(self, writable: bool) -> None:
        self.writable = writable
        exchange = self.exchange
        if exchange is not None and not self.finished:
            exchange.downstream_writable(writable)

    def _ended(self) -> None:
        """END_STREAM is sent: a request body still coming is no longer wanted (RFC 9113 8.1)."""
        self.ended = True
        self._outbox = []
        self._outbox_size = 0
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if not self.remote_ended and self.finished:
            self.reset(ErrorCodes.NO_ERROR)
        self.conn.write_pending()
        self._maybe_done()

    def reset(self, code: int) -> None:
        """RST_STREAM ``code``; the request (if still running) sees a client gone."""
        if self.lost:
            return
        self.lost = True
        self.conn.send_reset(self, code)
        self.gone()

    def gone(self) -> None:
        """Reset by either side, or the connection closed: stop the exchange."""
        self.lost = True
        self._outbox = []
        self._outbox_size = 0
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        exchange = self.exchange
        if exchange is not None and not self.finished:
            exchange.downstream_lost()
        self._release_window()
        self._maybe_done()

    def _release_window(self) -> None:
        """Body bytes held unacknowledged (reading paused) go back to the connection's window:
        nobody will take them now."""
        unacked, self._unacked = self._unacked, 0
        if unacked:
            self.conn.acknowledge(self, unacked)

    def _maybe_done(self) -> None:
        if self.finished and (self.lost or (self.ended and not self._outbox)):
            self.conn.forget(self)
