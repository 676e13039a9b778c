"""An admin endpoint's handler (``lbx.admin``, what lbx-status and lbx-prometheus build on)
answers with a status and a content type that go into the response head as they are: one that
would bend the head (a CR or LF, a status that is not final) is the handler's error, a 500 that
is logged, never written. Real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio

import pytest

from lbx import admin


async def answer_of(status: int, content_type: str) -> bytes:
    async def handler(method: str, path: str, body: bytes) -> tuple[int, str, bytes]:
        return status, content_type, b"payload\n"

    server = await admin.start("127.0.0.1:0", handler, "test endpoint")
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
        data = await reader.read()
        writer.close()
        await writer.wait_closed()
    finally:
        server.close()
        await server.wait_closed()
    return data


@pytest.mark.parametrize(
    ("status", "content_type"),
    [(200, "text/plain\r\nSet-Cookie: a=1"), (200, "text/html\n"), (101, "a"), (1000, "")],
)
def test_an_answer_that_would_bend_the_head_is_a_500(status, content_type, caplog) -> None:
    data = asyncio.run(answer_of(status, content_type))
    assert data.startswith(b"HTTP/1.1 500 ") and b"Set-Cookie" not in data
    assert "admin endpoint failed" in caplog.text


def test_a_sound_answer_is_sent() -> None:
    data = asyncio.run(answer_of(404, "text/plain; charset=utf-8"))
    assert data.startswith(b"HTTP/1.1 404 ") and data.endswith(b"\r\n\r\npayload\n")
    assert b"Content-Type: text/plain; charset=utf-8\r\n" in data
