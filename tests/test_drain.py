"""Graceful shutdown, in-process: a connection accepted in the last moment is answered, not reset.

uvloop may have accepted a connection whose ``connection_made`` runs only after the server
started draining (the callback was queued before the listeners closed). Its client is sending a
request; lbx answers it with ``Connection: close``, as it does for the idle connections' requests.
Seen as a rare reset of a new connection in the zero-downtime upgrade test under load.
"""

from __future__ import annotations

import asyncio

import uvloop
from tests import inprocess

from lbx.testing import DemoBackend


async def request_after_drain_began() -> bytes:
    backend = DemoBackend("a")
    await backend.start()
    service, listener, port = await inprocess.serve(backend.address)
    service.connections.begin_shutdown()  # the drain started; this listener is the late one
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = await reader.read()  # to the close
    writer.close()
    await service.connections.wait_closed()
    listener.close()
    await listener.wait_closed()
    await backend.stop()
    return answer


def test_a_connection_made_while_draining_gets_its_answer_then_the_close():
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        answer = runner.run(request_after_drain_began())
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"\r\nConnection: close" in head
    assert body == b"Hello from backend a\n"
