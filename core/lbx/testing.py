"""Helpers for testing lbx and its plugins with real processes and real sockets.

- ``LbxProcess``: runs ``lbx serve`` in a child process and waits until it is ready.
- ``http_get``: one GET, its status, headers and body (``Reply``).
- ``make_session``: a ``Session`` for calling one hook in a unit test, without a process.
- ``BackendThread``: runs ``DemoBackend`` servers on an event loop in a background thread.
- ``DemoBackend``: a small, fast HTTP/1.1 backend, also for demos and benchmarks
  (``python -m lbx.testing --listen 127.0.0.1:8001 --name a`` runs one from the shell).

``DemoBackend`` routes:

- ``/``, anything else: ``Hello from backend <name>`` (``X-Backend: <name>``)
- ``/echo``: JSON with what the backend received (method, target, headers, body size and sha256)
- ``/bytes/<n>``: ``n`` bytes, with Content-Length (``?chunked=1``: chunked; ``?close=1``: no
  length, connection closed at the end)
- ``/sleep/<seconds>``: answers after a delay
- ``/status/<code>``: an empty response with that status
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import http.client
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast
from urllib.parse import parse_qs, urlsplit

import httptools

from lbx import config as config_module
from lbx import signals
from lbx.build import build_server, load_plugins
from lbx.config import ServiceConfig
from lbx.connections import Connections
from lbx.exchange import Exchange, RequestBody
from lbx.h1 import H1Downstream
from lbx.http import Headers, RequestHeader
from lbx.inprocess import InProcessProxy
from lbx.loadclient import ChurnReport, ClientLoad, churn, churn_steps
from lbx.plugins import get_plugin_manager, load_plugin_arg
from lbx.proxy import ProxyService, RequestHooks, build_connector
from lbx.server import Server
from lbx.session import Session

__all__ = [
    "BackendThread",
    "ChurnReport",
    "ClientLoad",
    "DemoBackend",
    "InProcessProxy",
    "LbxProcess",
    "Reply",
    "churn",
    "churn_steps",
    "http_connection",
    "http_get",
    "load_plugin",
    "make_session",
    "pattern_bytes",
    "prepared_server",
    "sent_to_client",
]

CHUNK = 64 * 1024
_PATTERN = bytes(range(256)) * (CHUNK // 256)


def pattern_bytes(size: int) -> bytes:
    """The bytes ``/bytes/<size>`` serves, for checking integrity."""
    return (_PATTERN * (size // len(_PATTERN) + 1))[:size]


class _BackendProtocol(asyncio.Protocol):
    def __init__(self, backend: DemoBackend) -> None:
        self.backend = backend
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body_size = 0
        self.body_hash = hashlib.sha256()
        self.queue: list[tuple[bytes, bytes, list[tuple[bytes, bytes]], int, str, bool]] = []
        self.busy = False
        self.writable = asyncio.Event()
        self.writable.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        if self.backend.stopped:  # accepted just before the server closed: stop() missed it
            self.transport.abort()
            return
        self.backend.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.backend.connections.discard(self)
        self.writable.set()

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            # This backend speaks no other protocol: it answered the request as plain HTTP, and
            # what follows is the next request.
            self.parser = httptools.HttpRequestParser(self)
            offset = exc.args[0] if exc.args and isinstance(exc.args[0], int) else len(data)
            if offset < len(data):
                self.data_received(data[offset:])
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            self.transport.close()

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []
        self.body_size = 0
        self.body_hash = hashlib.sha256()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body_size += len(body)
        self.body_hash.update(body)

    def on_message_complete(self) -> None:
        item = (
            self.parser.get_method(),
            self.url,
            self.headers,
            self.body_size,
            self.body_hash.hexdigest(),
            bool(self.parser.should_keep_alive()),
        )
        self.backend.requests += 1
        fast = item[0] == b"GET" and self.url in (b"/", b"/hello") and item[5]
        if fast and not self.busy and not self.queue:
            assert self.transport is not None
            self.transport.write(self.backend.hello)  # the fast path used by benchmarks
            return
        self.queue.append(item)
        if not self.busy:
            self.busy = True
            asyncio.get_running_loop().create_task(self._answer_all())

    async def _answer_all(self) -> None:
        while self.queue and self.transport is not None and not self.transport.is_closing():
            await self._answer(*self.queue.pop(0))
        self.busy = False

    async def _answer(
        self,
        method: bytes,
        url: bytes,
        headers: list[tuple[bytes, bytes]],
        body_size: int,
        body_sha256: str,
        keep_alive: bool,
    ) -> None:
        transport = self.transport
        assert transport is not None
        target = url.decode("latin-1")
        parts = urlsplit(target)
        query = parse_qs(parts.query)
        path = parts.path
        name = self.backend.name
        extra = b"" if keep_alive else b"Connection: close\r\n"
        head_only = method == b"HEAD"
        if path == "/echo":
            body = json.dumps(
                {
                    "backend": name,
                    "method": method.decode("latin-1"),
                    "target": target,
                    "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in headers],
                    "body_size": body_size,
                    "body_sha256": body_sha256,
                }
            ).encode()
            self._send(200, body, b"Content-Type: application/json\r\n" + extra, head_only)
        elif path.startswith("/bytes/"):
            size = int(path.split("/")[2])
            chunked = query.get("chunked") == ["1"]
            close = query.get("close") == ["1"]
            if chunked:
                framing = b"Transfer-Encoding: chunked\r\n"
            elif close:
                framing = b"Connection: close\r\n"
                keep_alive = False
            else:
                framing = b"Content-Length: %d\r\n" % size
            transport.write(
                b"HTTP/1.1 200 OK\r\nX-Backend: %s\r\n%s%s\r\n"
                % (name.encode(), framing, b"" if close else extra)
            )
            sent = 0
            while sent < size and not head_only:
                piece = _PATTERN[: min(CHUNK, size - sent)]
                transport.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                sent += len(piece)
                await self.writable.wait()
                if transport.is_closing():
                    return
            if chunked and not head_only:
                transport.write(b"0\r\n\r\n")
        elif path.startswith("/sleep/"):
            self.backend.sleeping += 1
            try:
                await asyncio.sleep(float(path.split("/")[2]))
            finally:
                self.backend.sleeping -= 1
            self._send(200, b"slept\n", extra, head_only)
        elif path.startswith("/status/"):
            self._send(int(path.split("/")[2]), b"", extra, head_only)
        else:
            self._send(200, b"Hello from backend %s\n" % name.encode(), extra, head_only)
        if not keep_alive:
            transport.close()

    def _send(self, status: int, body: bytes, extra: bytes, head_only: bool) -> None:
        assert self.transport is not None
        head = b"HTTP/1.1 %d X\r\nX-Backend: %s\r\nContent-Length: %d\r\n%s\r\n" % (
            status,
            self.backend.name.encode(),
            len(body),
            extra,
        )
        self.transport.write(head if head_only or status in (204, 304) else head + body)


class DemoBackend:
    """One backend server on the running event loop."""

    def __init__(
        self,
        name: str,
        host: str = "127.0.0.1",
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.name = name
        self.ssl_context = ssl_context
        self.host = host
        self.port = port
        self.requests = 0
        self.sleeping = 0
        """Requests to /sleep/<s> being held right now."""
        self.connections: set[_BackendProtocol] = set()
        self.hello = (
            b"HTTP/1.1 200 OK\r\nX-Backend: %s\r\nContent-Type: text/plain\r\n"
            b"Content-Length: %d\r\n\r\nHello from backend %s\n"
            % (name.encode(), len(f"Hello from backend {name}\n"), name.encode())
        )
        self._server: asyncio.AbstractServer | None = None
        self.stopped = False

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.stopped = False
        self._server = await loop.create_server(
            lambda: _BackendProtocol(self),
            self.host,
            self.port,
            reuse_address=True,
            ssl=self.ssl_context,
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self.stopped = True
        if self._server is not None:
            self._server.close()
            for conn in list(self.connections):
                if conn.transport is not None:
                    conn.transport.abort()
            await self._server.wait_closed()
            self._server = None


class BackendThread:
    """``DemoBackend`` servers on an event loop of their own, in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.backends: list[DemoBackend] = []

    def start(
        self, name: str, port: int = 0, ssl_context: ssl.SSLContext | None = None
    ) -> DemoBackend:
        """Start a backend (port 0: any free port; read ``backend.port``)."""
        backend = DemoBackend(name, "127.0.0.1", port, ssl_context)
        asyncio.run_coroutine_threadsafe(backend.start(), self.loop).result(10)
        self.backends.append(backend)
        return backend

    def stop(self, backend: DemoBackend) -> None:
        """Stop one backend; its port then refuses connections."""
        asyncio.run_coroutine_threadsafe(backend.stop(), self.loop).result(10)

    def close(self) -> None:
        for backend in self.backends:
            self.stop(backend)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@dataclass
class Reply:
    """One response as a test sees it."""

    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def backend(self) -> str:
        """The name of the ``DemoBackend`` that answered (its ``X-Backend`` header)."""
        return str(self.headers.get("X-Backend", ""))


def http_connection(address: str, timeout: float = 10) -> http.client.HTTPConnection:
    """A client connection to ``host:port`` (keep-alive: reuse it for several requests)."""
    host, port = address.rsplit(":", 1)
    return http.client.HTTPConnection(host.strip("[]"), int(port), timeout=timeout)


def http_get(
    address: str,
    path: str = "/",
    headers: dict[str, str] | None = None,
    *,
    conn: http.client.HTTPConnection | None = None,
    timeout: float = 10,
) -> Reply:
    """One GET to ``address``: on ``conn`` when given (keep-alive), else a new connection."""
    client = conn or http_connection(address, timeout)
    try:
        client.request("GET", path, headers=headers or {})
        response = client.getresponse()
        return Reply(response.status, response.headers, response.read())
    finally:
        if conn is None:
            client.close()


def prepared_server(plugins: list[str], upstreams: tuple[str, ...]) -> Server:
    """A ``Server`` built as ``lbx serve --plugin ... --upstream ...`` builds it, prepared but
    not running (no listener bound): its services' protocols can be driven in this process."""
    document = config_module.parse_document("version: 1\n")
    pm, problems = load_plugins(document, plugins)
    # test: plugins skip what a running server needs (files, listeners, shared memory)
    return build_server(
        pm, document, problems, listen=("127.0.0.1:0",), upstreams=upstreams, test=True
    )


class _ClientTransport(asyncio.Transport):
    """The client connection of a ``make_session`` session: keeps what is written to it."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data


def load_plugin(arg: str) -> object:
    """The plugin ``arg`` names (a ``.py`` file, an installed name, a module), loaded alone as
    ``--plugin arg`` loads it: a wrong hook name, colour or argument raises here."""
    pm = get_plugin_manager(defaults=False)
    load_plugin_arg(pm, arg)
    return pm.get_plugin(list(pm.infos)[-1])  # the last registered: this one


def make_session(
    target: str = "/",
    headers: Mapping[str, str] | None = None,
    *,
    method: str = "GET",
    version: str = "1.1",
    client_addr: str = "127.0.0.1:50000",
    server_addr: str = "127.0.0.1:6188",
) -> Session:
    """A ``Session`` to call a hook with in a unit test: no server, no socket, no event loop.

    It is the request ``method target`` (no body) with ``headers`` (``Host: example.com`` when
    there is no ``Host``) from ``client_addr`` to ``server_addr``, in a service named ``test``
    with no upstreams. Set ``session.peer`` for hooks that read it; what a hook answers with
    ``session.respond()`` or ``respond_error()`` is then in ``sent_to_client(session)``.
    """
    fields = dict(headers or {})
    if not any(name.lower() == "host" for name in fields):
        fields["Host"] = "example.com"
    service = ProxyService(
        ServiceConfig(name="test", listen=[server_addr], upstreams=[]),
        None,
        RequestHooks(get_plugin_manager(defaults=False)),
        build_connector(pool_size=0, idle_timeout=0, ca_file=None, connect_timeout=1),
        Connections(),
        max_retries=1,
    )
    client = H1Downstream(service)
    client.transport = _ClientTransport()
    client.client_addr = client_addr
    client.client_ip = client_addr.rpartition(":")[0].strip("[]")
    client.server_addr = server_addr
    raw = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in fields.items()]
    head = RequestHeader(method, target, Headers(raw), version)
    return Exchange(client, service, head, RequestBody.NONE, [], True).session


def sent_to_client(session: Session) -> bytes:
    """The bytes a ``make_session`` session wrote to its client (a response from a hook)."""
    exchange = session._exchange  # the session's own connection, by design of this helper
    transport = getattr(exchange.conn, "transport", None) if exchange is not None else None
    if not isinstance(transport, _ClientTransport):
        raise TypeError(f"{session!r} was not made by lbx.testing.make_session")
    return bytes(transport.written)


class LbxProcess:
    """``lbx serve ARGS`` in a child process, with its log collected line by line.

    ``start()`` returns once lbx logged ``lbx ready``; ``addresses`` lists what it listens on, in
    the order of the config (port 0 is resolved to the port the kernel chose).
    """

    def __init__(
        self, *args: str, env: dict[str, str] | None = None, cwd: str | None = None
    ) -> None:
        self.args = args
        self.env = {**os.environ, "LBX_LOG": "info", **(env or {})}
        self.cwd = cwd
        self.lines: list[str] = []
        self.proc: subprocess.Popen[str] | None = None
        self._changed = threading.Condition()
        self._reader: threading.Thread | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 20) -> LbxProcess:
        """Start and wait until lbx logs ``lbx ready``."""
        self.start_async()
        self.wait_for(r"lbx ready", timeout)
        return self

    def command(self) -> list[str]:
        """What runs in the child process (a subclass may run something else)."""
        return [sys.executable, "-m", "lbx", "serve", *self.args]

    def start_async(self) -> LbxProcess:
        """Start without waiting (use ``wait_for`` or ``wait``)."""
        self.proc = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=self.env,
            cwd=self.cwd,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, pattern: str, timeout: float = 20, start: int = 0) -> re.Match[str]:
        """Wait until a log line (from index ``start``) matches ``pattern``."""
        regex = re.compile(pattern)
        checked = start
        with self._changed:
            while True:
                for line in self.lines[checked:]:
                    match = regex.search(line)
                    if match:
                        return match
                checked = len(self.lines)
                assert self.proc is not None
                if self.proc.poll() is not None and not (self._reader and self._reader.is_alive()):
                    raise RuntimeError(
                        f"lbx exited with {self.proc.returncode} before logging {pattern!r}:\n"
                        + self.output
                    )
                if not self._changed.wait(timeout):
                    raise TimeoutError(f"no log line matched {pattern!r}:\n{self.output}")

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    @property
    def addresses(self) -> list[str]:
        found = []
        for line in self.lines:
            match = re.search(r"listening on (\S+)$", line)
            if match and match.group(1) not in found:  # each worker logs its listeners
                found.append(match.group(1))
        return found

    @property
    def address(self) -> str:
        """The first listen address, ``host:port``."""
        return self.addresses[0]

    def send_signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 60) -> int:
        """Send ``signum`` and wait for the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.send_signal(signum)
        code = self.proc.wait(timeout)
        if self._reader is not None:
            self._reader.join(5)
        return code

    def wait(self, timeout: float = 60) -> int:
        """Wait for the process to exit by itself; returns its exit code."""
        assert self.proc is not None
        code = self.proc.wait(timeout)
        if self._reader is not None:
            self._reader.join(5)
        return code

    def close(self) -> None:
        """Kill the process if it still runs (only this process, by its pid)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self._reader is not None:
            self._reader.join(5)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()

    def rss_kib(self, field: str = "VmRSS") -> int:
        """A memory figure of the process from /proc (``VmRSS`` or the peak, ``VmHWM``)."""
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        raise LookupError(field)

    def __enter__(self) -> LbxProcess:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


async def _serve(listen: list[str], names: list[str]) -> None:
    backends = []
    for index, address in enumerate(listen):
        host, _, port = address.rpartition(":")
        name = names[index] if index < len(names) else str(index + 1)
        backend = DemoBackend(name, host.strip("[]"), int(port))
        await backend.start()
        backends.append(backend)
        print(f"backend {name} listening on {backend.address}", flush=True)
    await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m lbx.testing", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--listen", action="append", required=True, help="host:port (repeat)")
    parser.add_argument("--name", action="append", default=[], help="backend name (repeat)")
    args = parser.parse_args(argv)
    signals.restore()  # Ctrl-C (SIGINT) stops it, even when started as a background job
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency where lbx runs
        loop_factory = None
    else:
        loop_factory = uvloop.new_event_loop
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(_serve(args.listen, args.name))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
