"""WebSocket (HTTP/1.1 Upgrade) through lbx: both directions become a byte stream after 101."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed


class EchoServer:
    """A WebSocket echo backend on the BackendThread's loop; counts what it saw."""

    def __init__(self, backends) -> None:
        self.loop = backends.loop
        self.closed_by_client = asyncio.Event()
        self.connections = []

        async def start():
            async def echo(websocket):
                self.connections.append(websocket)
                try:
                    async for message in websocket:
                        if message == "close-from-server":
                            await websocket.close(code=4000, reason="server says bye")
                            return
                        await websocket.send(message)
                except ConnectionClosed:
                    pass

            self.server = await serve(echo, "127.0.0.1", 0)
            return self.server.sockets[0].getsockname()[1]

        self.port = asyncio.run_coroutine_threadsafe(start(), self.loop).result(10)
        self.address = f"127.0.0.1:{self.port}"

    def close(self) -> None:
        async def stop():
            self.server.close()
            await self.server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)


def with_test_plugin(lbx, echo, name):
    """lbx in front of the echo backend with a hook module from tests/plugins."""
    plugin = Path(__file__).parent / "plugins" / name
    return lbx(
        *("--plugin", "roundrobin", "--plugin", str(plugin)),
        *("--listen", "127.0.0.1:0", "--upstream", echo.address),
    )


@pytest.fixture
def echo(backends):
    server = EchoServer(backends)
    yield server
    server.close()


def test_ten_thousand_messages_through_lbx(lbx, echo):
    """A WebSocket client exchanges 10,000 messages with an echo backend through lbx."""
    proc = lbx("--plugin", "roundrobin", "--listen", "127.0.0.1:0", "--upstream", echo.address)

    async def talk() -> int:
        async with connect(f"ws://{proc.address}/chat") as websocket:
            for index in range(10_000):
                await websocket.send(f"message {index}")
                assert await websocket.recv() == f"message {index}"
            return index + 1

    assert asyncio.run(talk()) == 10_000


def test_close_from_either_side_closes_the_other(lbx, echo):
    """A close from the client reaches the backend, and a close from the backend the client."""
    proc = lbx("--plugin", "roundrobin", "--listen", "127.0.0.1:0", "--upstream", echo.address)

    async def server_closes() -> tuple[int | None, str | None]:
        async with connect(f"ws://{proc.address}/") as websocket:
            await websocket.send("close-from-server")
            with pytest.raises(ConnectionClosed):
                await websocket.recv()
            return websocket.close_code, websocket.close_reason

    assert asyncio.run(server_closes()) == (4000, "server says bye")

    async def client_closes() -> None:
        async with connect(f"ws://{proc.address}/") as websocket:
            await websocket.send("hello")
            assert await websocket.recv() == "hello"
            await websocket.close(code=1000)

    asyncio.run(client_closes())


def _raw_exchange(address: str, requests: bytes, responses: int) -> list[bytes]:
    """Send ``requests`` on one connection; read ``responses`` Content-Length responses."""
    import socket

    host, port = address.rsplit(":", 1)
    answers = []
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(requests)
        data = b""
        while len(answers) < responses:
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(65536)
                assert chunk, answers
                data += chunk
            head, _, data = data.partition(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            while len(data) < length:
                data += sock.recv(65536)
            answers.append(head + b"\r\n\r\n" + data[:length])
            data = data[length:]
    return answers


UPGRADE = (
    b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
    b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
)


def test_upstream_declining_the_upgrade_keeps_http(lbx, backends):
    """An upstream that answers 200 instead of 101: the connection simply stays HTTP."""
    import json

    a = backends.start("a")
    proc = lbx("--plugin", "roundrobin", "--listen", "127.0.0.1:0", "--upstream", a.address)
    first, second = _raw_exchange(proc.address, UPGRADE + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 2)
    assert first.startswith(b"HTTP/1.1 200")
    seen = {k.lower(): v for k, v in json.loads(first.split(b"\r\n\r\n", 1)[1])["headers"]}
    assert seen["upgrade"] == "websocket" and seen["connection"] == "upgrade"  # passed on
    assert second.startswith(b"HTTP/1.1 200") and second.endswith(b"Hello from backend a\n")


def test_protocols_not_allowed_are_not_passed_on(lbx, backends, tmp_path):
    """With ``upgrades: []`` the Upgrade request goes upstream as a plain request."""
    import json

    a = backends.start("a")
    conf = tmp_path / "conf.yaml"
    conf.write_text(
        "plugins: [roundrobin]\nservices:\n  - listen: ['127.0.0.1:0']\n"
        f"    upstreams: ['{a.address}']\n    upgrades: []\n"
    )
    proc = lbx("-c", str(conf))
    (answer,) = _raw_exchange(proc.address, UPGRADE, 1)
    seen = {k.lower() for k, _ in json.loads(answer.split(b"\r\n\r\n", 1)[1])["headers"]}
    assert "upgrade" not in seen and "connection" not in seen


def test_hooks_see_the_upgrade(lbx, echo):
    """request_filter sees session.upgrade, the 101 goes through response_filter, and logging
    runs once the tunnel is over."""
    proc = with_test_plugin(lbx, echo, "see_upgrade.py")

    async def talk() -> None:
        async with connect(f"ws://{proc.address}/") as websocket:
            await websocket.send("hello")
            assert await websocket.recv() == "hello"

    asyncio.run(talk())
    proc.wait_for("request_filter sees upgrade to websocket")
    proc.wait_for("response_filter sees 101")
    proc.wait_for("logging sees status 101, error None")


def test_body_filters_see_the_tunnel_bytes(lbx, echo):
    """request_body_filter can change what the client sends through the tunnel (here: upper
    case), and both filters get their end_of_stream when the tunnel closes (as in Pingora)."""
    proc = with_test_plugin(lbx, echo, "tunnel_filters.py")

    async def talk() -> list[str]:
        async with connect(f"ws://{proc.address}/", compression=None) as websocket:
            replies = []
            for word in ("hello", "tunnel"):
                await websocket.send(word)
                replies.append(await websocket.recv())
            return replies

    assert asyncio.run(talk()) == ["HELLO", "TUNNEL"]
    up = int(proc.wait_for(r"request_body_filter end: (\d+) bytes").group(1))
    down = int(proc.wait_for(r"response_body_filter end: (\d+) bytes").group(1))
    assert up > 0 and down > 0
    assert sum("body_filter end" in line for line in proc.lines) == 2  # once per direction
