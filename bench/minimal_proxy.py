"""The floor for a Python proxy on lbx's stack: scenario (p)'s job with nothing else.

asyncio Protocols, httptools and uvloop, callbacks only: no task per request, no check of the
request, no hook, no timeout, no limit. It parses each request head, sends it to the next
upstream in turn (adding ``X-Forwarded-For`` and ``X-Forwarded-Proto`` as lbx and nginx do) on
a kept-alive connection, and relays the response head and body in one write. GET without a
body only: what ``wrk`` sends in scenario (p). Its user time per request is what lbx's is
compared with (issue 18: at most 7 µs against 5.7 for such a proxy).

    python bench/minimal_proxy.py LISTEN_HOST:PORT UPSTREAM_HOST:PORT [UPSTREAM_HOST:PORT...]
"""

from __future__ import annotations

import asyncio
import itertools
import sys
from typing import Any

import httptools
import uvloop

Address = tuple[str, int]


def address(text: str) -> Address:
    host, port = text.rsplit(":", 1)
    return host, int(port)


class Upstream(asyncio.Protocol):
    """A kept-alive connection to one upstream; answers one client request at a time."""

    def __init__(self, pool: list[Upstream]) -> None:
        self.pool = pool
        self.parser = httptools.HttpResponseParser(self)
        self.client: Client | None = None
        self.transport: Any = None
        self.head: list[bytes] = []
        self.out: list[bytes] = []

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        client = self.client
        self.parser.feed_data(data)
        if client is not None and self.out:
            client.transport.write(b"".join(self.out))
        self.out = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head.append(b"%s: %s\r\n" % (name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        self.out.append(b"HTTP/1.1 %d OK\r\n%s\r\n" % (status, b"".join(self.head)))
        self.head = []

    def on_body(self, body: bytes) -> None:
        self.out.append(body)

    def on_message_complete(self) -> None:
        self.client = None
        self.pool.append(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self.pool:
            self.pool.remove(self)


class Client(asyncio.Protocol):
    """One client connection: each request head goes to the next upstream."""

    def __init__(self, upstreams: itertools.cycle[tuple[Address, list[Upstream]]]) -> None:
        self.upstreams = upstreams
        self.parser = httptools.HttpRequestParser(self)
        self.transport: Any = None
        self.url = b""
        self.head: list[bytes] = []
        self.forwarded = b""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")[0]
        self.forwarded = b"X-Forwarded-For: %s\r\nX-Forwarded-Proto: http\r\n" % peer.encode()

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head.append(b"%s: %s\r\n" % (name, value))

    def on_headers_complete(self) -> None:
        request = b"%s %s HTTP/1.1\r\n%s%s\r\n" % (
            self.parser.get_method(),
            self.url,
            b"".join(self.head),
            self.forwarded,
        )
        self.head = []
        upstream_address, pool = next(self.upstreams)
        if pool:
            upstream = pool.pop()
            upstream.client = self
            upstream.transport.write(request)
        else:
            asyncio.get_running_loop().create_task(self.connect(upstream_address, pool, request))

    async def connect(self, to: Address, pool: list[Upstream], request: bytes) -> None:
        loop = asyncio.get_running_loop()
        _, upstream = await loop.create_connection(lambda: Upstream(pool), *to)
        upstream.client = self
        upstream.transport.write(request)


async def serve(listen: Address, upstreams: list[Address]) -> None:
    pools: itertools.cycle[tuple[Address, list[Upstream]]]
    pools = itertools.cycle([(upstream, []) for upstream in upstreams])
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Client(pools), *listen, backlog=4096)
    await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(serve(address(sys.argv[1]), [address(a) for a in sys.argv[2:]]))
