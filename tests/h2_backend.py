"""An HTTP/2 backend for tests: python-hyper's ``h2`` on an asyncio server (h2c prior knowledge,
or TLS with ALPN ``h2``), run on a ``BackendThread``'s loop. It answers the paths
``lbx.testing.DemoBackend`` answers (``/``, ``/echo``, ``/bytes/<n>``, ``/sleep/<s>``,
``/status/<n>``) plus ``/trailers``, ``/reset``, ``/refuse-once/<key>``, ``/garbage`` and
``/no-window`` (a request body whose flow-control window is never opened again), sends
within lbx's flow-control windows, and counts what tests look at: connections, streams at once,
PINGs, resets, a stream waiting for a window."""

from __future__ import annotations

import asyncio
import hashlib
import json
import ssl
from typing import Any, cast

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    DataReceived,
    PingReceived,
    RequestReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import H2Error

from lbx.testing import _PATTERN, BackendThread

CHUNK = 16 * 1024


_ODD_FIELDS = {
    "/odd-name": (b"content-length;x", b"50"),
    "/odd-value": (b"x-odd", b"a\x0bb\x01c"),
}


class _Stream:
    def __init__(self, headers: list[tuple[bytes, bytes]]) -> None:
        self.headers = headers
        self.size = 0
        self.digest = hashlib.sha256()
        self.task: asyncio.Task[None] | None = None


class _Protocol(asyncio.Protocol):
    def __init__(self, backend: H2Backend) -> None:
        self.backend = backend
        self.h2 = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, _Stream] = {}
        self.head_only = False
        """The request being answered is a HEAD (its answer has no DATA)."""
        self.window = asyncio.Event()
        self.writable = asyncio.Event()
        self.writable.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.backend.connections.add(self)
        self.backend.connections_total += 1
        self.h2.initiate_connection()
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.backend.connections.discard(self)
        for stream in self.streams.values():
            if stream.task is not None:
                stream.task.cancel()
        self.window.set()
        self.writable.set()

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except H2Error:
            self.flush()
            assert self.transport is not None
            self.transport.close()
            return
        for event in events:
            if isinstance(event, RequestReceived):
                self.streams[event.stream_id] = _Stream(list(event.headers or []))
                self.backend.streams_total += 1
                # A stream leaves ``streams`` once answered: the rest are in flight.
                self.backend.max_active = max(self.backend.max_active, len(self.streams))
            elif isinstance(event, DataReceived):
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    stream.size += len(event.data)
                    stream.digest.update(event.data)
                    if (b":path", b"/no-window") in stream.headers:
                        continue  # takes a body's first window, then never opens another
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, StreamEnded):
                stream = self.streams.get(event.stream_id)
                if stream is not None and stream.task is None:
                    loop = asyncio.get_running_loop()
                    stream.task = loop.create_task(self.answer(event.stream_id, stream))
            elif isinstance(event, StreamReset):
                self.backend.resets += 1
                stream = self.streams.pop(event.stream_id, None)
                if stream is not None and stream.task is not None:
                    stream.task.cancel()
            elif isinstance(event, WindowUpdated):
                self.window.set()
            elif isinstance(event, PingReceived):
                self.backend.pings += 1
        self.flush()

    async def answer(self, stream_id: int, stream: _Stream) -> None:
        try:
            await self._answer(stream_id, stream)
        except H2Error:
            pass  # reset meanwhile
        finally:
            self.streams.pop(stream_id, None)
            self.flush()

    async def _answer(self, stream_id: int, stream: _Stream) -> None:
        pseudo = {n: v for n, v in stream.headers if n[:1] == b":"}
        method, target = pseudo.get(b":method", b""), pseudo.get(b":path", b"/").decode()
        path, _, query = target.partition("?")
        name = self.backend.name
        self.head_only = method == b"HEAD"
        fields: list[tuple[bytes, bytes]] = [(b"x-backend", name.encode())]
        if path == "/echo":
            body = json.dumps(
                {
                    "backend": name,
                    "method": method.decode(),
                    "target": target,
                    "headers": [[k.decode(), v.decode()] for k, v in stream.headers],
                    "body_size": stream.size,
                    "body_sha256": stream.digest.hexdigest(),
                }
            ).encode()
            self.respond(stream_id, 200, [*fields, (b"content-type", b"application/json")], body)
        elif path.startswith("/bytes/"):
            size = int(path.split("/")[2])
            if "chunked=1" not in query:
                fields.append((b"content-length", b"%d" % size))
            self.h2.send_headers(stream_id, [(b":status", b"200"), *fields])
            self.flush()
            await self.send_all(stream_id, size)
        elif path.startswith("/sleep/"):
            self.backend.sleeping += 1
            try:
                await asyncio.sleep(float(path.split("/")[2]))
            finally:
                self.backend.sleeping -= 1
            self.respond(stream_id, 200, fields, b"slept\n")
        elif path.startswith("/status/"):
            self.respond(stream_id, int(path.split("/")[2]), fields, b"")
        elif path == "/trailers":
            self.h2.send_headers(stream_id, [(b":status", b"200"), *fields])
            self.h2.send_data(stream_id, b"with trailers\n")
            self.h2.send_headers(stream_id, [(b"x-trailer", b"yes")], end_stream=True)
        elif path.startswith("/refuse-once/"):
            # REFUSED_STREAM the first time a key is asked: the request was not processed.
            if path not in self.backend.refused:
                self.backend.refused.add(path)
                self.h2.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)
            else:
                self.respond(stream_id, 200, fields, b"processed\n")
        elif path == "/garbage":
            # A HEADERS frame whose HPACK block does not decode: a connection error.
            self.flush()
            assert self.transport is not None
            frame = b"\x00\x00\x04\x01\x05" + stream_id.to_bytes(4, "big") + b"\xff" * 4
            self.transport.write(frame)
        elif path in _ODD_FIELDS:  # what HTTP/2 carries and an HTTP/1.1 head cannot
            self.respond(stream_id, 200, [*fields, _ODD_FIELDS[path]], b"odd\n")
        elif path == "/reset":
            self.h2.send_headers(stream_id, [(b":status", b"200"), *fields])
            self.h2.send_data(stream_id, b"partial")
            self.h2.reset_stream(stream_id, ErrorCodes.INTERNAL_ERROR)
        else:
            self.respond(stream_id, 200, fields, f"Hello from backend {name}\n".encode())

    def respond(
        self, stream_id: int, status: int, fields: list[tuple[bytes, bytes]], body: bytes
    ) -> None:
        head = [(b":status", b"%d" % status), *fields, (b"content-length", b"%d" % len(body))]
        if self.head_only or status in (204, 304):
            body = b""
        self.h2.send_headers(stream_id, head, end_stream=not body)
        if body:
            self.h2.send_data(stream_id, body, end_stream=True)

    async def send_all(self, stream_id: int, size: int) -> None:
        """``size`` pattern bytes as the windows allow (a client that reads nothing stops it)."""
        sent = 0
        pattern = _PATTERN * 2  # any window-sized slice from any offset
        while sent < size:
            window = min(
                self.h2.local_flow_control_window(stream_id),
                self.h2.max_outbound_frame_size,
                size - sent,
            )
            if window <= 0:
                self.window.clear()
                self.backend.blocked += 1
                try:
                    await self.window.wait()
                finally:
                    self.backend.blocked -= 1
                continue
            offset = sent % len(_PATTERN)
            self.h2.send_data(stream_id, pattern[offset : offset + window])
            sent += window
            self.flush()
            await self.writable.wait()
        self.h2.end_stream(stream_id)


class H2Backend:
    """One HTTP/2 backend server on a ``BackendThread``'s loop."""

    def __init__(self, name: str, ssl_context: ssl.SSLContext | None = None, port: int = 0) -> None:
        self.name = name
        self.ssl_context = ssl_context
        if ssl_context is not None:
            ssl_context.set_alpn_protocols(["h2"])
        self.port = port
        self.connections: set[_Protocol] = set()
        self.connections_total = 0
        self.streams_total = 0
        self.max_active = 0
        self.pings = 0
        self.resets = 0
        self.refused: set[str] = set()
        self.sleeping = 0
        self.blocked = 0
        """Streams waiting for lbx to open its window."""
        self._server: asyncio.AbstractServer | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Protocol(self),
            "127.0.0.1",
            self.port,
            ssl=self.ssl_context,
            reuse_address=True,
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for conn in list(self.connections):
                if conn.transport is not None:
                    conn.transport.abort()
            await self._server.wait_closed()
            self._server = None


def start_h2_backend(
    thread: BackendThread, name: str, ssl_context: ssl.SSLContext | None = None, port: int = 0
) -> H2Backend:
    """Start an ``H2Backend`` on ``thread``'s loop (port 0: any free port; stopped by
    ``stop_h2_backend``)."""
    backend = H2Backend(name, ssl_context, port)
    asyncio.run_coroutine_threadsafe(backend.start(), thread.loop).result(10)
    return backend


def stop_h2_backend(thread: BackendThread, backend: H2Backend) -> None:
    asyncio.run_coroutine_threadsafe(backend.stop(), thread.loop).result(10)


def run_in(thread: BackendThread, function: Any) -> Any:
    """Call ``function()`` on the backend loop (its counters are read there)."""

    async def call() -> Any:
        return function()

    return asyncio.run_coroutine_threadsafe(call(), thread.loop).result(10)
