"""An lbx service driven inside the test's own process over in-memory transports: no socket, no
thread, no child process.

``InProcessProxy`` builds a service as ``lbx serve`` does (``lbx.build``) and runs it on an
event loop of its own, stepped by the test. A client connection is the real HTTP/1.1 protocol
fed bytes (``MemoryClient``); every upstream connection is a real ``UpstreamConnection`` whose
transport records what lbx sent and answers it (``MemoryUpstream``: 200 ``ok`` unless the test
gives a handler). For fast protocol tests (tests/test_conformance.py), fuzzing (tests/fuzz) and
plugin authors checking what their hooks do on the wire. What needs time to pass (timeouts),
signals or processes is for ``LbxProcess``.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import httptools
import yaml

from lbx import config as config_module
from lbx.build import build_server, load_plugins
from lbx.http import HOP_BY_HOP
from lbx.proxy import ProxyService
from lbx.upstream import UpstreamConnection

__all__ = [
    "InProcessProxy",
    "MemoryClient",
    "MemoryTransport",
    "MemoryUpstream",
    "MemoryUpstreamConnection",
    "Response",
    "UpstreamRequest",
]

STEPS = 64
"""Loop iterations that settle the effects of one input (callbacks, the request's task)."""

UPSTREAM_ADDRESS = "127.0.0.1:1"
"""The service's upstream: never connected to, every connection is in memory."""


class MemoryTransport(asyncio.Transport):
    """Enough of an asyncio transport for lbx's protocols: what is written is kept in ``out``;
    closing reports ``connection_lost`` to the protocol on the next loop iteration."""

    def __init__(self, loop: asyncio.AbstractEventLoop, protocol: asyncio.Protocol) -> None:
        super().__init__()
        self.loop = loop
        self.protocol = protocol
        self.out = bytearray()
        self.closed = False
        self.eof = False
        self.paused = False

    def write(self, data: Any) -> None:
        self.out += data

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.loop.call_soon(self.protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = cast(asyncio.Protocol, protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self.protocol

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        extra = {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 80), "socket": _TCP}
        return extra.get(name, default)


class _Socket:
    """What a transport's ``socket`` extra info tells: a TCP socket (its options are no-ops)."""

    family = socket.AF_INET

    def setsockopt(self, *args: object) -> None:
        pass


_TCP = _Socket()


@dataclass
class UpstreamRequest:
    """One request as the in-memory upstream parsed it (strictly, with httptools)."""

    method: bytes
    target: bytes
    version: str
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""
    complete: bool = False

    def get_all(self, name: str) -> list[bytes]:
        key = name.lower().encode()
        return [v for n, v in self.headers if n.lower() == key]

    def get(self, name: str) -> bytes | None:
        values = self.get_all(name)
        return values[0] if values else None

    def names(self) -> list[bytes]:
        return [n.lower() for n, _ in self.headers]

    def hop_by_hop(self) -> list[bytes]:
        """Hop-by-hop field names present (the framing field excluded)."""
        return [n for n in self.names() if n in HOP_BY_HOP and n != b"transfer-encoding"]


Handler = Callable[["MemoryUpstreamConnection", UpstreamRequest], None]
"""Answers a complete request: ``conn.send(bytes)``, ``conn.close()``..."""


def ok(conn: MemoryUpstreamConnection, request: UpstreamRequest) -> None:
    """The default answer: ``200 OK`` with body ``ok`` (none for HEAD)."""
    conn.send(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"
        + (b"" if request.method == b"HEAD" else b"ok")
    )


class _Closed:
    """What a test waits on to see that lbx closed an upstream connection (set at once here)."""

    def __init__(self) -> None:
        self.value = False

    def is_set(self) -> bool:
        return self.value

    def wait(self, timeout: float | None = None) -> bool:
        return self.value


class MemoryUpstreamConnection(MemoryTransport):
    """One upstream connection lbx opened: ``raw`` holds what lbx sent, ``requests`` what a
    strict parser reads in it; a complete request is answered by the upstream's handler."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        protocol: UpstreamConnection,
        upstream: MemoryUpstream,
    ) -> None:
        super().__init__(loop, protocol)
        self.upstream = upstream
        self.raw = bytearray()
        self.requests: list[UpstreamRequest] = []
        self.error: str | None = None
        self.closed_by_peer = _Closed()
        self._parser = httptools.HttpRequestParser(self)
        self._current: UpstreamRequest | None = None
        self._url = b""
        self._upgraded = False
        self._switched = False  # answered 101: raw bytes both ways from now on
        self._held = b""
        """What lbx sent after an Upgrade request, until the answer: the new protocol's bytes
        after a ``101``, else the next request."""
        self._answer = b""
        """What the upstream sent after an Upgrade request, until its final status is known."""

    def write(self, data: Any) -> None:
        data = bytes(data)
        self.raw += data
        if self.error is not None or self._switched:
            return
        if self._upgraded:
            self._held += data
            return
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            offset = exc.args[0] if exc.args and isinstance(exc.args[0], int) else len(data)
            self._upgraded = True
            self._held = data[offset:]
        except httptools.HttpParserError as exc:
            self.error = repr(exc)

    def close(self) -> None:
        self.closed_by_peer.value = True
        super().close()

    def send(self, data: bytes) -> None:
        """Answer lbx: the bytes arrive as one read (on the loop's next iteration, before a
        close that follows them, as on a socket)."""
        if self.closed:
            return
        self.loop.call_soon(self._deliver, data)
        if self._upgraded and not self._switched:
            self._answer += data
            self._judge_answer()

    def _judge_answer(self) -> None:
        """Whether the answer to an Upgrade request switched, once its status line is whole
        (the answer may come in pieces, after a ``100`` or ``103``)."""
        while len(self._answer) >= len(b"HTTP/1.1 200"):
            status = self._answer[9:12]
            if status == b"101":
                self._switched = True
                self._held = self._answer = b""
                return
            if status[:1] != b"1":
                # The Upgrade answered without a switch: HTTP/1.1 goes on, with a new parser
                # (llhttp stops for good at an upgrade), from what lbx sent after the request.
                self._upgraded = False
                self._answer = b""
                self._parser = httptools.HttpRequestParser(self)
                held, self._held = self._held, b""
                if held:
                    self._feed(held)
                return
            end = self._answer.find(b"\r\n\r\n")  # an interim answer: the next one decides
            if end < 0:
                return
            self._answer = self._answer[end + 4 :]

    def _deliver(self, data: bytes) -> None:
        protocol = self.protocol
        assert isinstance(protocol, UpstreamConnection)
        if not protocol.closed:  # lbx did not close its side meanwhile
            protocol.data_received(data)

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._url = b""
        self._current = UpstreamRequest(b"", b"", "", [])

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self._current is not None
        self._current.headers.append((name, value))

    def on_headers_complete(self) -> None:
        request = self._current
        assert request is not None
        request.method = self._parser.get_method()
        request.target = self._url
        request.version = self._parser.get_http_version()
        self.requests.append(request)
        if self.upstream.on_head is not None:
            self.loop.call_soon(self.upstream.on_head, self, request)

    def on_body(self, body: bytes) -> None:
        assert self._current is not None
        self._current.body += body

    def on_message_complete(self) -> None:
        request = self._current
        assert request is not None
        request.complete = True
        self.loop.call_soon(self.upstream.handler, self, request)


class MemoryUpstream:
    """The upstream of an ``InProcessProxy``: the connections lbx opened and what it sent."""

    def __init__(self) -> None:
        self.handler: Handler = ok
        self.on_head: Handler | None = None
        """Called once a request head arrived (before its body), to answer early."""
        self.conns: list[MemoryUpstreamConnection] = []

    @property
    def requests(self) -> list[UpstreamRequest]:
        return [request for conn in self.conns for request in conn.requests]

    @property
    def raw(self) -> bytes:
        return b"".join(bytes(conn.raw) for conn in self.conns)

    def settle(self) -> None:
        """Start a test from an idle upstream (nothing is ever half-received in memory)."""
        self.reset()

    def reset(self) -> None:
        """Forget what was received (open connections stay: lbx may reuse them)."""
        for conn in self.conns:
            conn.requests.clear()
            conn.raw.clear()
        self.conns = [conn for conn in self.conns if not conn.closed]
        self.handler = ok
        self.on_head = None

    def wait_requests(self, count: int, timeout: float = 0) -> list[UpstreamRequest]:
        requests = self.requests
        assert len(requests) >= count, requests
        return requests

    def wait(self, predicate: Callable[[], bool], timeout: float = 0) -> bool:
        return predicate()

    async def dial(self, conn: UpstreamConnection) -> None:
        """``Connector.dial``: a new upstream connection, in memory."""
        transport = MemoryUpstreamConnection(asyncio.get_running_loop(), conn, self)
        self.conns.append(transport)
        conn.connection_made(transport)


@dataclass
class Response:
    """A response lbx wrote to a client."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    informational: list[int] = field(default_factory=list)
    complete: bool = True

    def get(self, name: str) -> bytes | None:
        key = name.lower().encode()
        return next((v for n, v in self.headers if n.lower() == key), None)

    def names(self) -> list[bytes]:
        return [n.lower() for n, _ in self.headers]


class _ChunkedReader:
    """The body of one chunked (or close-delimited) response (httptools callbacks)."""

    def __init__(self) -> None:
        self.body = b""
        self.done = False

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.done = True


def _head(head: bytes) -> tuple[int, list[tuple[bytes, bytes]]]:
    """The status and fields of a response head (without its empty line)."""
    lines = head.split(b"\r\n")
    fields = [(n.strip(), v.strip()) for n, _, v in (line.partition(b":") for line in lines[1:])]
    return int(lines[0].split(b" ")[1]), fields


def _parse_response(data: bytes, method: bytes) -> tuple[Response, int] | None:
    """The first final response in ``data`` and the bytes it took (1xx before it collected), or
    None while it is incomplete."""
    informational = []
    start = 0
    while True:
        end = data.find(b"\r\n\r\n", start)
        if end < 0:
            return None
        status, headers = _head(data[start:end])
        if 100 <= status < 200 and status != 101:
            informational.append(status)
            start = end + 4
            continue
        break
    names = {n.lower(): v for n, v in headers}
    body_start = end + 4
    if method == b"HEAD" or status in (101, 204, 304):
        return Response(status, headers, b"", informational), body_start
    if b"content-length" in names:
        length = int(names[b"content-length"])
        if len(data) - body_start < length:
            return None
        return Response(status, headers, data[body_start : body_start + length], informational), (
            body_start + length
        )
    reader = _ChunkedReader()
    parser = httptools.HttpResponseParser(reader)
    try:
        parser.feed_data(data[start:])
    except httptools.HttpParserError:
        return Response(status, headers, reader.body, informational, False), len(data)
    if not reader.done:
        return None
    return Response(status, headers, reader.body, informational), len(data)


class MemoryClient:
    """A client connection to an ``InProcessProxy`` (the API of tests' socket clients)."""

    def __init__(self, proxy: InProcessProxy) -> None:
        self.proxy = proxy
        self.protocol: asyncio.Protocol = proxy.service.protocol_factory()
        self.transport = MemoryTransport(proxy.loop, self.protocol)
        self._read = 0
        proxy.call(self.protocol.connection_made, self.transport)

    def send(self, data: bytes, splits: Sequence[int] = ()) -> None:
        """Deliver ``data`` to lbx, in reads cut at ``splits``; then let it act on them."""
        start = 0
        for cut in [*sorted(set(splits)), len(data)]:
            if start < cut <= len(data) and not self.transport.closed:
                # The transport's protocol: an h2c listener's first one hands over to another.
                self.proxy.call(self.transport.protocol.data_received, data[start:cut])
                start = cut

    @property
    def received(self) -> bytes:
        """Everything lbx wrote to this client."""
        return bytes(self.transport.out)

    def read_response(self, method: bytes = b"GET") -> Response:
        """The next response lbx wrote; one cut short by a close has ``complete`` False
        (``ConnectionError`` when there is none)."""
        self.proxy.settle()
        data = bytes(self.transport.out[self._read :])
        parsed = _parse_response(data, method)
        if parsed is None:
            if self.closed() and data.find(b"\r\n\r\n") >= 0:
                end = data.find(b"\r\n\r\n")
                status, headers = _head(data[:end])
                self._read += len(data)
                return Response(status, headers, data[end + 4 :], [], False)
            raise ConnectionError(f"closed before a whole response: {data!r}")
        response, used = parsed
        self._read += used
        return response

    def closed(self, timeout: float = 0) -> bool:
        """Whether lbx closed the connection, or ended its side of it (a refusal lingers)."""
        self.proxy.settle()
        return self.transport.closed or self.transport.eof

    def close(self) -> None:
        """The client goes away."""
        if not self.transport.closed:
            self.proxy.call(self.transport.close)
        self.proxy.settle()

    def __enter__(self) -> MemoryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class InProcessProxy:
    """One service of ``plugins`` (round robin by default) in front of a ``MemoryUpstream``;
    ``service`` keys (limits, forwarding modes...) go to its config as in a YAML file, and
    ``server`` keys (``upstream_keepalive_pool_size``...) to the file's top level."""

    def __init__(
        self,
        plugins: Sequence[str] = ("roundrobin",),
        server: dict[str, Any] | None = None,
        **service: Any,
    ) -> None:
        document = config_module.parse_document(
            yaml.safe_dump(
                {
                    "version": 1,
                    **(server or {}),
                    "services": [
                        {"name": "t", "listen": ["127.0.0.1:0"], "upstreams": [UPSTREAM_ADDRESS]}
                        | service
                    ],
                }
            )
        )
        pm, problems = load_plugins(document, plugins)
        built = build_server(pm, document, problems, test=True)
        self.service: ProxyService = built.services[0]
        self.upstream = MemoryUpstream()
        self.service.connector.dial = self.upstream.dial
        self.loop = asyncio.new_event_loop()
        self.errors: list[dict[str, Any]] = []
        """What escaped a callback or a task (the loop's exception handler): a test's failure."""
        self.loop.set_exception_handler(lambda _loop, context: self.errors.append(context))

    def settle(self) -> None:
        """Run the loop until what the last input set off is done (a fixed number of steps:
        in-memory answers need no waiting)."""

        async def steps() -> None:
            for _ in range(STEPS):
                await asyncio.sleep(0)

        self.loop.run_until_complete(steps())

    def call(self, function: Callable[..., object], *args: object) -> None:
        """Run ``function(*args)`` in the loop (as a protocol callback runs), then settle."""
        self.loop.call_soon(function, *args)
        self.settle()

    def client(self) -> MemoryClient:
        """A new client connection."""
        return MemoryClient(self)

    def exchange(self, data: bytes, method: bytes = b"GET") -> tuple[Response, bool]:
        """``data`` on a new connection: the first response, and whether lbx then closed."""
        with self.client() as client:
            client.send(data)
            return client.read_response(method), client.closed()

    def close(self) -> None:
        self.service.connector.pool.close_all()
        self.settle()
        pending = [task for task in asyncio.all_tasks(self.loop) if not task.done()]
        for task in pending:
            task.cancel()
        self.settle()
        self.loop.close()
