"""Raw-socket helpers for the HTTP conformance tests: a capture upstream and a raw client.

- ``Upstream``: a threaded HTTP/1.1 server on 127.0.0.1 that records the exact bytes each
  connection received, parses them strictly (httptools) into ``Request``s, and answers each
  request with ``handler(conn, request)``. The default handler answers ``200`` with ``ok``. A
  handler can instead misbehave (see the ``fault_*`` helpers): close, reset, stall, send garbage,
  truncate.
- ``Client``: a raw socket to lbx that reads responses exactly (Content-Length, chunked, none for
  HEAD/1xx/204/304) and tells whether lbx closed the connection.
"""

from __future__ import annotations

import contextlib
import fcntl
import select
import socket
import struct
import termios
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httptools
import pytest

from lbx.http import HOP_BY_HOP
from lbx.testing import LbxProcess

TIMEOUT = 10.0
TCP_INFO_UNACKED = 24
"""Offset of ``tcpi_unacked`` in ``struct tcp_info`` (8 one-byte fields, then rto, ato, snd_mss,
rcv_mss)."""


@dataclass
class Request:
    """One request as the upstream parsed it."""

    method: bytes
    target: bytes
    version: str
    headers: list[tuple[bytes, bytes]]
    body: bytes
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
        """Hop-by-hop field names present (framing fields excluded)."""
        return [n for n in self.names() if n in HOP_BY_HOP and n != b"transfer-encoding"]


class UpstreamConn:
    """One connection the upstream accepted."""

    def __init__(self, upstream: Upstream, sock: socket.socket) -> None:
        self.upstream = upstream
        self.sock = sock
        self.raw = bytearray()
        self.requests: list[Request] = []
        self.error: str | None = None
        self.closed_by_peer = threading.Event()
        self.in_message = False
        """A request has begun and not ended (its head or body is still coming)."""
        self.completed = 0
        """Requests received whole on this connection (not cleared by ``Upstream.reset``)."""
        self._parser = httptools.HttpRequestParser(self)
        self._current: Request | None = None
        self._url = b""

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.in_message = True
        self._url = b""
        self._current = Request(b"", b"", "", [], b"")

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
        with self.upstream.changed:
            self.upstream.changed.notify_all()
        if self.upstream.on_head is not None:
            self.upstream.on_head(self, request)

    def on_body(self, body: bytes) -> None:
        assert self._current is not None
        self._current.body += body

    def on_message_complete(self) -> None:
        request = self._current
        assert request is not None
        request.complete = True
        self.in_message = False
        self.completed += 1
        self.upstream.handler(self, request)
        with self.upstream.changed:
            self.upstream.changed.notify_all()

    def idle(self) -> bool:
        """Nothing more is coming from an earlier request: the connection is closed, or lbx
        keeps it between requests (one or more received whole, none begun, no byte unread)."""
        if self.closed_by_peer.is_set():
            return True
        return self.completed > 0 and not self.in_message and self.unread() == 0

    def unread(self) -> int:
        """Bytes the kernel received for this connection that ``serve`` did not read yet."""
        try:
            return struct.unpack("i", fcntl.ioctl(self.sock, termios.FIONREAD, b"\0" * 4))[0]
        except OSError:  # closed meanwhile: nothing more comes
            return 0

    def send(self, data: bytes) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(data)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()

    def reset(self) -> None:
        """Close with a TCP RST."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def serve(self) -> None:
        try:
            while True:
                try:
                    data = self.sock.recv(65536)
                except OSError:
                    break
                if not data:
                    break
                self.raw += data
                if self.upstream.stop_reading.is_set():
                    continue
                try:
                    self._parser.feed_data(data)
                except httptools.HttpParserUpgrade:
                    self.error = "upgrade"
                except httptools.HttpParserError as exc:
                    self.error = repr(exc)
                    break
        finally:
            self.closed_by_peer.set()
            with self.upstream.changed:
                self.upstream.changed.notify_all()
            with contextlib.suppress(OSError):
                self.sock.close()


def ok(conn: UpstreamConn, request: Request) -> None:
    """The default handler: ``200 OK`` with body ``ok`` (no body for HEAD)."""
    conn.send(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"
        + (b"" if request.method == b"HEAD" else b"ok")
    )


def respond_with(data: bytes, then: str | None = None) -> Callable[[UpstreamConn, Request], None]:
    """A handler that sends ``data`` as is; ``then`` is ``close``, ``reset`` or None."""

    def handler(conn: UpstreamConn, request: Request) -> None:
        conn.send(data)
        if then == "close":
            conn.close()
        elif then == "reset":
            conn.reset()

    return handler


class Upstream:
    """A capture (and fault-injecting) upstream server in threads."""

    def __init__(
        self,
        handler: Callable[[UpstreamConn, Request], None] = ok,
        *,
        backlog: int = 128,
        accept: bool = True,
    ) -> None:
        self.handler = handler
        self.on_head: Callable[[UpstreamConn, Request], None] | None = None
        self.changed = threading.Condition()
        self.conns: list[UpstreamConn] = []
        self.stop_reading = threading.Event()
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(backlog)
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self._closing = False
        if accept:
            threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        self.listener.setblocking(False)
        while not self._closing:
            try:
                select.select([self.listener], [], [])
            except (OSError, ValueError):  # closed
                return
            # Taken from the queue and listed in one step under the lock ``idle`` is checked
            # with: a connection is always in one place or the other.
            with self.changed:
                try:
                    sock, _ = self.listener.accept()
                except BlockingIOError:
                    continue
                except OSError:
                    return
                conn = UpstreamConn(self, sock)
                self.conns.append(conn)
                self.changed.notify_all()
            threading.Thread(target=conn.serve, daemon=True).start()

    @property
    def requests(self) -> list[Request]:
        return [r for conn in list(self.conns) for r in conn.requests]

    @property
    def raw(self) -> bytes:
        """Every byte received, all connections (in the order they were accepted)."""
        return b"".join(bytes(conn.raw) for conn in list(self.conns))

    def idle(self) -> bool:
        """No connection waits to be accepted, and none is in the middle of a request."""
        return self.accept_queue() == 0 and all(conn.idle() for conn in list(self.conns))

    def accept_queue(self) -> int:
        """Connections the kernel completed that ``_accept`` did not take yet (Linux reports a
        listener's accept queue as ``tcpi_unacked`` in ``TCP_INFO``)."""
        info = self.listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
        return int(struct.unpack_from("I", info, TCP_INFO_UNACKED)[0])

    def settle(self, timeout: float = TIMEOUT) -> None:
        """Start a test from a known-idle upstream: wait until no connection is in the middle
        of an earlier test's request (lbx may still be sending it, or closing its connection),
        then ``reset``. Without the wait, bytes of a chunked upload cut short by the test before
        could arrive after the reset, in the next test's ``raw``."""
        if not self.wait(self.idle, timeout):
            busy = [bytes(c.raw[:60]) for c in list(self.conns) if not c.idle()]
            raise AssertionError(f"the capture upstream is still busy after {timeout}s: {busy}")
        self.reset()

    def reset(self) -> None:
        """Forget what was received so far (connections stay open, lbx may reuse them)."""
        with self.changed:
            for conn in self.conns:
                conn.requests.clear()
                conn.raw.clear()
            self.conns = [c for c in self.conns if not c.closed_by_peer.is_set()]
        self.handler = ok
        self.on_head = None
        self.stop_reading.clear()

    def wait(self, predicate: Callable[[], bool], timeout: float = TIMEOUT) -> bool:
        deadline = time.monotonic() + timeout
        with self.changed:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.changed.wait(min(left, 0.1))
        return True

    def wait_requests(self, count: int, timeout: float = TIMEOUT) -> list[Request]:
        assert self.wait(lambda: len(self.requests) >= count, timeout), self.requests
        return self.requests

    def close(self) -> None:
        self._closing = True
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept thread's select
        self.listener.close()
        for conn in list(self.conns):
            with contextlib.suppress(OSError):
                conn.sock.close()


@dataclass
class Response:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    informational: list[int] = field(default_factory=list)
    complete: bool = True

    def get(self, name: str) -> bytes | None:
        key = name.lower().encode()
        for n, v in self.headers:
            if n.lower() == key:
                return v
        return None

    def names(self) -> list[bytes]:
        return [n.lower() for n, _ in self.headers]


class _ResponseReader:
    def __init__(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.done = False
        self.head_done = False

    def on_message_begin(self) -> None:
        self.headers = []
        self.body = b""

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.head_done = True

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.done = True


class Client:
    """A raw client connection to lbx."""

    def __init__(self, address: str, timeout: float = TIMEOUT) -> None:
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        if not data:
            return False
        self.buffer += data
        return True

    def read_response(self, method: bytes = b"GET") -> Response:
        """One final response (1xx before it are collected); ``complete`` False if cut short."""
        informational = []
        while True:
            while b"\r\n\r\n" not in self.buffer:
                if not self._fill():
                    raise ConnectionError(f"closed before a response head: {self.buffer!r}")
            head, _, rest = self.buffer.partition(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            status = int(lines[0].split(b" ")[1])
            headers = [
                (n.strip(), v.strip()) for n, _, v in (line.partition(b":") for line in lines[1:])
            ]
            if 100 <= status < 200:
                informational.append(status)
                self.buffer = rest
                continue
            break
        names = {n.lower(): v for n, v in headers}
        if method == b"HEAD" or status in (204, 304):
            self.buffer = rest
            return Response(status, headers, b"", informational)
        if b"content-length" in names:
            length = int(names[b"content-length"])
            self.buffer = rest
            complete = True
            while len(self.buffer) < length:
                try:
                    if not self._fill():
                        complete = False
                        break
                except ConnectionResetError:
                    complete = False
                    break
            body, self.buffer = self.buffer[:length], self.buffer[length:]
            return Response(status, headers, body, informational, complete)
        reader = _ResponseReader()
        parser = httptools.HttpResponseParser(reader)
        self.buffer = head + b"\r\n\r\n" + rest
        data, self.buffer = self.buffer, b""
        complete = True
        while True:
            try:
                parser.feed_data(data)
            except httptools.HttpParserError:
                complete = False
                break
            if reader.done:
                break
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                data = b""
            if not data:
                complete = False
                break
        return Response(status, headers, reader.body, informational, complete and reader.done)

    def closed(self, timeout: float = 3.0) -> bool:
        """Whether lbx closes the connection within ``timeout`` (unread bytes are skipped)."""
        self.sock.settimeout(timeout)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if not self.sock.recv(65536):
                    return True
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
        finally:
            self.sock.settimeout(TIMEOUT)
        return False

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def exchange(address: str, data: bytes, method: bytes = b"GET") -> tuple[Response, bool]:
    """Send ``data`` on a new connection: the first response and whether lbx then closed."""
    with Client(address) as client:
        client.send(data)
        response = client.read_response(method)
        return response, client.closed(1.0)


def lbx_in_front(
    tmp_path_factory: pytest.TempPathFactory, *lbx_args: str, **service: object
) -> Iterator[tuple[Upstream, LbxProcess]]:
    """A module's ``shared`` fixture: a capture upstream and one lbx in front of it
    (``service`` keys go to its config, ``lbx_args`` to its command line)."""
    server = Upstream()
    conf = write_conf(tmp_path_factory.mktemp("conf"), [server.address], **service)
    with LbxProcess("-c", conf, *lbx_args) as process:
        yield server, process
    server.close()


def write_conf(tmp_path: Path, upstreams: list[str], **service: object) -> str:
    """A config file with one service on 127.0.0.1:0 and extra service keys."""
    import yaml

    server = {k[len("server_") :]: v for k, v in service.items() if k.startswith("server_")}
    keys = {k: v for k, v in service.items() if not k.startswith("server_")}
    data = {
        "version": 1,
        **server,
        "plugins": ["roundrobin"],
        "services": [{"name": "t", "listen": ["127.0.0.1:0"], "upstreams": upstreams, **keys}],
    }
    path = tmp_path / "lbx.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)
