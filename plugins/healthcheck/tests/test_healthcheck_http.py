"""HTTP checks on kept-alive connections: reuse, what is never reused, and what a reuse that
fails means. Each test runs a scripted HTTP/1.1 server on the test's own event loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest

from lbx import Backend, Backends, Headers, ServiceConfig
from lbx_healthcheck import HealthCheckSettings, ServiceChecker, ServiceHealth
from lbx_healthcheck.checker import run_checks
from lbx_healthcheck.checks import DRAIN_LIMIT, HttpCheck


@dataclass
class Reply:
    """What the server sends for one request: ``data``, then closes the connection if
    ``close`` (``Reply(b"", close=True)``: closed without an answer)."""

    data: bytes = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    close: bool = False


Script = Callable[[int, int], Reply | None]
"""(connection number, request number on it) -> the reply, or None: never answer."""


class _Connection(asyncio.Protocol):
    def __init__(self, server: Server) -> None:
        self.server = server
        self.heads: list[bytes] = []
        self.buffer = b""
        self.closed = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.number = len(self.server.connections)
        self.server.connections.append(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            self.heads.append(head)
            reply = self.server.script(self.number, len(self.heads) - 1)
            if reply is None:
                continue
            self.transport.write(reply.data)
            if reply.close:
                self.transport.close()


class Server:
    """A scripted HTTP/1.1 server on 127.0.0.1 (or a Unix socket) in the running loop."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections: list[_Connection] = []
        self.server: asyncio.AbstractServer | None = None

    async def start(self, unix_path: str | None = None) -> Backend:
        loop = asyncio.get_running_loop()
        if unix_path is not None:
            self.server = await loop.create_unix_server(lambda: _Connection(self), unix_path)
            return Backend(None, 0, unix_path=unix_path)
        self.server = await loop.create_server(lambda: _Connection(self), "127.0.0.1", 0)
        return Backend("127.0.0.1", self.server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        for connection in self.connections:
            if connection.transport is not None:
                connection.transport.abort()
        await self.server.wait_closed()

    @property
    def requests(self) -> list[bytes]:
        return [head for connection in self.connections for head in connection.heads]


def always(reply: Reply) -> Script:
    return lambda _connection, _request: reply


def run(script: Script, test: Callable[[Server, Backend], Awaitable[None]]) -> Server:
    """Run ``test(server, backend)`` against a server following ``script``."""
    server = Server(script)

    async def main() -> None:
        backend = await server.start()
        try:
            await test(server, backend)
        finally:
            await server.close()

    anyio.run(main, backend="asyncio")
    return server


SERVICE = ServiceConfig(name="web", listen=[], upstreams=[])


def http_check(**settings: Any) -> HttpCheck:
    return HttpCheck(HealthCheckSettings(type="http", **settings), SERVICE, None)


def test_checks_reuse_one_connection():
    """Three checks, one connection; the request has the path, Host and user agent."""
    check = http_check(path="/healthz")
    checked: list[Backend] = []

    async def test(server: Server, backend: Backend) -> None:
        checked.append(backend)
        assert [await check(backend) for _ in range(3)] == [None, None, None]
        await check.retain(())

    server = run(always(Reply()), test)
    assert len(server.connections) == 1
    assert len(server.requests) == 3
    head = server.requests[0].decode()
    assert head.startswith("GET /healthz HTTP/1.1\r\n")
    assert f"\r\nHost: {checked[0].addr}\r\n" in head
    assert "\r\nUser-Agent: lbx-healthcheck/0.1" in head
    assert "Connection: close" not in head


def test_reuse_connection_false_closes_every_connection():
    """Pingora's ``reuse_connection: false``: a new connection per check, ``Connection: close``."""
    check = http_check(reuse_connection=False)

    async def test(server: Server, backend: Backend) -> None:
        assert [await check(backend) for _ in range(3)] == [None, None, None]
        await asyncio.wait_for(server.connections[-1].closed, 5)

    server = run(always(Reply()), test)
    assert len(server.connections) == 3
    assert all(b"Connection: close" in head for head in server.requests)


def test_connection_closed_while_idle_is_not_a_failure():
    """The backend closes each connection after its answer (a keep-alive timeout shorter than
    the period): the next check sees it closed and opens a new one, healthy."""
    check = http_check()

    async def test(server: Server, backend: Backend) -> None:
        for index in range(3):
            assert await check(backend) is None
            await asyncio.wait_for(server.connections[index].closed, 5)

    server = run(always(Reply(close=True)), test)
    assert len(server.connections) == 3


def test_connection_closed_as_it_is_reused_is_retried_once():
    """The backend closes the kept connection when the next request arrives (the race at the
    end of its keep-alive timeout): the check retries on a new connection, which decides."""
    check = http_check()

    def script(connection: int, request: int) -> Reply:
        return Reply(b"", close=True) if request == 1 else Reply()

    async def test(server: Server, backend: Backend) -> None:
        assert await check(backend) is None
        assert await check(backend) is None  # failed on the kept connection, passed on a new one
        await check.retain(())

    server = run(script, test)
    assert [len(connection.heads) for connection in server.connections] == [2, 1]


def test_a_retry_that_fails_gives_the_verdict():
    """If the new connection fails too, that failure is the reason."""
    check = http_check()

    def script(connection: int, request: int) -> Reply:
        return Reply() if (connection, request) == (0, 0) else Reply(b"", close=True)

    async def test(server: Server, backend: Backend) -> None:
        assert await check(backend) is None
        reason = await check(backend)
        assert reason is not None
        assert reason.startswith(
            "http check GET / failed: RemoteProtocolError: Server disconnected"
        )

    server = run(script, test)
    assert len(server.connections) == 2


def test_timed_out_connection_is_dropped():
    """A check that times out on the kept connection closes it; the next check connects anew."""
    settings = HealthCheckSettings(type="http", timeout=0.2)
    check = HttpCheck(settings, SERVICE, None)

    def script(connection: int, request: int) -> Reply | None:
        return None if (connection, request) == (0, 1) else Reply()  # the 2nd request hangs

    async def test(server: Server, backend: Backend) -> None:
        health = ServiceHealth("web", Backends((backend,)), settings, None)
        checker = ServiceChecker(health, check)
        ready = []
        for _ in range(3):
            await checker.check_one(backend)
            ready.append(health.backends.ready(backend))
            if len(ready) == 2:
                assert health.backends.health[backend].reason == "http check timed out after 0.2s"
        assert ready == [True, False, True]
        await asyncio.wait_for(server.connections[0].closed, 5)
        await check.retain(())

    server = run(script, test)
    assert [len(connection.heads) for connection in server.connections] == [2, 1]


@pytest.mark.parametrize("size", [5, DRAIN_LIMIT + 1])
def test_body_is_drained_up_to_the_limit(size: int):
    """A small body is read and the connection kept; past ``DRAIN_LIMIT`` it is closed."""
    reply = Reply(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + b"x" * size)
    keeps = size <= DRAIN_LIMIT
    check = http_check()

    async def test(server: Server, backend: Backend) -> None:
        assert await check(backend) is None
        assert (check.targets[backend].connection is not None) is keeps
        assert await check(backend) is None
        await check.retain(())

    assert len(run(always(reply), test).connections) == (1 if keeps else 2)


def test_validator_sees_status_and_headers_on_a_kept_connection():
    def validator(status: int, headers: Headers) -> str | None:
        return None if (status, headers.get("X-State")) == (503, "draining") else "unexpected"

    check = http_check(validator=validator, validator_name="t:v")
    reply = Reply(b"HTTP/1.1 503 Busy\r\nX-State: draining\r\nContent-Length: 0\r\n\r\n")

    async def test(server: Server, backend: Backend) -> None:
        assert [await check(backend) for _ in range(2)] == [None, None]
        await check.retain(())

    assert len(run(always(reply), test).connections) == 1


def test_backends_that_leave_have_their_connection_closed():
    """``retain`` (the service's backends changed) closes only the connections of those that
    left; the end of ``run_checks`` closes the rest."""
    first, second = Server(always(Reply())), Server(always(Reply()))

    async def main() -> None:
        a, b = await first.start(), await second.start()
        health = ServiceHealth("web", Backends((a, b)), HealthCheckSettings(type="http"), None)
        check = http_check()
        checker = ServiceChecker(health, check)
        async with anyio.create_task_group() as tasks:
            await tasks.start(run_checks, [checker])
            assert len(first.connections) == len(second.connections) == 1
            health.backends.replace([b])
            await checker.current_backends()
            await asyncio.wait_for(first.connections[0].closed, 5)
            assert not second.connections[0].closed.done()
            tasks.cancel_scope.cancel()
        await asyncio.wait_for(second.connections[0].closed, 5)
        await first.close()
        await second.close()

    anyio.run(main, backend="asyncio")


def test_unix_socket_backend(tmp_path: Path):
    """A ``unix:/path`` backend is checked over its socket, with ``Host: localhost``."""
    server = Server(always(Reply()))
    check = http_check()

    async def main() -> None:
        backend = await server.start(str(tmp_path / "backend.sock"))
        try:
            assert await check(backend) is None
            assert await check(backend) is None
            await check.retain(())
        finally:
            await server.close()

    anyio.run(main, backend="asyncio")
    assert len(server.connections) == 1
    assert b"\r\nHost: localhost\r\n" in server.requests[0]


def test_refused_connection_reason():
    check = http_check()

    async def main() -> str | None:
        listener = await asyncio.get_running_loop().create_server(asyncio.Protocol, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        listener.close()
        await listener.wait_closed()
        started = time.monotonic()
        reason = await check(Backend("127.0.0.1", port))
        assert time.monotonic() - started < 5
        return reason

    assert anyio.run(main, backend="asyncio") == "http check GET / failed: connection refused"
