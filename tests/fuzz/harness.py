"""An in-process lbx request path for fuzzing: client bytes in, upstream bytes out, no sockets.

``run(request, response)`` feeds ``request`` (split where the input says) to a real
``H1Downstream`` of a real ``ProxyService`` whose connector hands out real
``UpstreamConnection``s over fake transports; each upstream answers with ``response``. It checks
what must always hold, raising ``AssertionError`` otherwise:

- no exception escapes a protocol callback or a request task;
- every request that reached an upstream is one canonical HTTP/1.1 request: it parses strictly,
  has exactly one Host and at most one framing field, no hop-by-hop field, no look-alike of a
  field lbx interprets (``Content_Length``), and an ``Upgrade`` (with ``Connection: upgrade``)
  only when it names nothing but ``websocket``;
- a request line naming a protocol other than HTTP (``RTSP/1.0``) at the start of the input
  sends nothing upstream;
- a ``101`` reaches the client only when the upstream switched to ``websocket``;
- once the client is gone, no request task is left running (no hang, nothing leaked).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import Any

import httptools

import lbx
from lbx.config import ServiceConfig
from lbx.connections import Connections
from lbx.h1 import H1Downstream
from lbx.http import HOP_BY_HOP
from lbx.inprocess import MemoryTransport
from lbx.peer import Peer
from lbx.pool import ConnectionPool
from lbx.proxy import ProxyService, RequestHooks
from lbx.request_rules import is_lookalike
from lbx.upstream import Connector, UpstreamConnection

_OTHER_PROTOCOL_LINE = re.compile(rb"(?:\r\n)*[A-Z]+ [^ \r\n]+ +(?:RTSP|ICE)/[0-9]\.[0-9]\r\n")
_SWITCHED_TO_WEBSOCKET = re.compile(rb"\r\nupgrade:[ \t]*websocket[ \t]*\r\n", re.IGNORECASE)


class _Statuses:
    """The status of each response head in what lbx wrote to a client (parser callbacks); a
    101 or a cut response ends the parse."""

    def __init__(self, out: bytes) -> None:
        self.seen: list[int] = []
        self.parser = httptools.HttpResponseParser(self)
        with contextlib.suppress(httptools.HttpParserError, httptools.HttpParserUpgrade):
            self.parser.feed_data(out)

    def on_headers_complete(self) -> None:
        self.seen.append(self.parser.get_status_code())


def _statuses(out: bytes) -> list[int]:
    return _Statuses(out).seen


class _Capture:
    """Parses what lbx sends upstream, strictly, and checks it is canonical."""

    def __init__(self, upstream: UpstreamTransport) -> None:
        self.upstream = upstream
        self.headers: list[tuple[bytes, bytes]] = []
        self.url = b""

    def on_message_begin(self) -> None:
        self.headers = []
        self.url = b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        names = [name.lower() for name, _ in self.headers]
        assert names.count(b"host") == 1, self.headers
        framing = names.count(b"content-length") + names.count(b"transfer-encoding")
        assert framing <= 1, self.headers
        assert not [n for n in names if is_lookalike(n)], self.headers
        passed_on: set[bytes] = set()
        if b"upgrade" in names:  # an allowed protocol switch keeps exactly its two fields
            values = {name.lower(): value for name, value in self.headers}
            assert values.get(b"connection", b"").lower() == b"upgrade", self.headers
            protocols = {p.strip().split(b"/")[0].lower() for p in values[b"upgrade"].split(b",")}
            assert protocols == {b"websocket"}, self.headers
            passed_on = {b"connection", b"upgrade"}
        hop = [
            n for n in names if n in HOP_BY_HOP and n != b"transfer-encoding" and n not in passed_on
        ]
        assert not hop, self.headers
        assert self.url[:1] == b"/" or self.url == b"*", self.url
        self.upstream.heads += 1
        # Answer as soon as the head arrived (the body may still be on its way).
        self.upstream.loop.call_soon(self.upstream.respond)

    def on_message_complete(self) -> None:
        self.upstream.requests += 1


class UpstreamTransport(MemoryTransport):
    def __init__(
        self, loop: asyncio.AbstractEventLoop, protocol: UpstreamConnection, response: bytes
    ) -> None:
        super().__init__(loop, protocol)
        self.response = response
        self.heads = 0
        self.requests = 0
        self.tunnel = False
        self.parser = httptools.HttpRequestParser(_Capture(self))

    def write(self, data: Any) -> None:
        super().write(data)
        if self.tunnel:
            return  # after a passed-on Upgrade: raw bytes of the other protocol
        try:
            self.parser.feed_data(bytes(data))  # a parse error fails the run: lbx sent bad bytes
        except httptools.HttpParserUpgrade:
            self.tunnel = True

    def respond(self) -> None:
        if not self.closed:
            protocol = self.protocol
            assert isinstance(protocol, UpstreamConnection)
            # In two pieces, so a head split across reads is exercised too.
            middle = len(self.response) // 2
            protocol.data_received(self.response[:middle])
            if not self.closed:
                protocol.data_received(self.response[middle:])


class FakeUpstreams:
    """Dials every upstream connection over an ``UpstreamTransport`` (``Connector.dial``)."""

    def __init__(self) -> None:
        self.connector = Connector(ConnectionPool(8, 60), ca_file=None, connect_timeout=1)
        self.connector.dial = self.dial
        self.pool = self.connector.pool
        self.response = b""
        self.transports: list[UpstreamTransport] = []

    async def dial(self, conn: UpstreamConnection) -> None:
        transport = UpstreamTransport(asyncio.get_running_loop(), conn, self.response)
        self.transports.append(transport)
        conn.connection_made(transport)


class _Plugin:
    @lbx.hookimpl
    def upstream_peer(self, session: lbx.Session, ctx: dict[str, Any]) -> Peer:
        return Peer("127.0.0.1:9")


class Harness:
    def __init__(self, **config: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.errors: list[dict[str, Any]] = []
        self.loop.set_exception_handler(lambda _loop, context: self.errors.append(context))
        pm = lbx.get_plugin_manager(defaults=False)
        pm.register(_Plugin(), "fuzz-peer")
        self.connector = FakeUpstreams()
        service_config = ServiceConfig(name="fuzz", listen=[], upstreams=[], **config)
        self.service = ProxyService(
            service_config,
            None,
            RequestHooks(pm),
            self.connector.connector,
            Connections(),
            max_retries=2,
        )

    def run(self, request: bytes, response: bytes, splits: list[int]) -> bytes:
        """Feed ``request`` in pieces (cut at ``splits``); returns what the client received."""
        return self.loop.run_until_complete(self._run(request, response, splits))

    async def _run(self, request: bytes, response: bytes, splits: list[int]) -> bytes:
        self.connector.response = response
        self.connector.transports = []
        self.connector.pool.close_all()
        protocol = H1Downstream(self.service)
        transport = MemoryTransport(self.loop, protocol)
        protocol.connection_made(transport)
        start = 0
        for cut in [*sorted(set(splits)), len(request)]:
            if cut <= start or cut > len(request):
                continue
            if not transport.closed:
                protocol.data_received(request[start:cut])
            start = cut
            for _ in range(4):
                await asyncio.sleep(0)
        for _ in range(20):
            await asyncio.sleep(0)
        out = bytes(transport.out)
        if not transport.closed:
            transport.close()
        for _ in range(20):
            await asyncio.sleep(0)
        for upstream in self.connector.transports:
            upstream.close()
        for _ in range(5):
            await asyncio.sleep(0)
        pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert not pending, f"request tasks left running after the client left: {pending}"
        assert not self.errors, self.errors
        if _OTHER_PROTOCOL_LINE.match(request):
            assert not any(t.heads for t in self.connector.transports), request
        if 101 in _statuses(out):
            assert _SWITCHED_TO_WEBSOCKET.search(response), (out, response)
        return out

    def close(self) -> None:
        self.connector.pool.close_all()
        self.loop.close()
