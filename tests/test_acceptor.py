"""``lbx.acceptor``: a burst of clients gets in within a few turns of a busy event loop, on real
sockets and uvloop (whose own servers take one connection per turn)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import uvloop

from lbx import acceptor
from lbx.acceptor import MAX_ACCEPT, Acceptor

CLIENTS = 200


class Counted(asyncio.Protocol):
    def __init__(self, made: list[asyncio.BaseTransport], all_in: asyncio.Event) -> None:
        self.made_list = made
        self.all_in = all_in

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.made_list.append(transport)
        if len(self.made_list) == CLIENTS:
            self.all_in.set()


def listening_socket() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(4096)
    sock.setblocking(False)
    return sock


def connect_all(port: int) -> list[socket.socket]:
    """``CLIENTS`` connections at once; on loopback the kernel completes each handshake in
    ``connect``, so all of them wait in the listen queue before the loop turns again."""
    clients = []
    for _ in range(CLIENTS):
        client = socket.socket()
        client.setblocking(False)
        with contextlib.suppress(BlockingIOError):  # in progress: the loop takes it later
            client.connect(("127.0.0.1", port))
        clients.append(client)
    return clients


def run(main: Callable[[], Awaitable[Any]]) -> Any:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main())


async def turns_until_all_in(start: Callable[[socket.socket, Callable[[], Counted]], Any]) -> int:
    """Turns of a loop kept busy (a callback every turn) until ``CLIENTS`` queued connections
    have their protocols."""
    loop = asyncio.get_running_loop()
    made: list[asyncio.BaseTransport] = []
    all_in = asyncio.Event()
    turns = 0

    def busy() -> None:
        nonlocal turns
        turns += 1
        if not all_in.is_set():
            loop.call_soon(busy)

    with listening_socket() as sock:
        stop = await start(sock, lambda: Counted(made, all_in))
        clients = connect_all(sock.getsockname()[1])
        try:
            loop.call_soon(busy)
            await asyncio.wait_for(all_in.wait(), 60)
        finally:
            for transport in made:
                transport.close()
            for client in clients:
                client.close()
            stop()
    return turns


def test_a_burst_of_clients_gets_in_within_a_few_turns_of_a_busy_loop() -> None:
    async def with_acceptor(sock: socket.socket, factory: Callable[[], Counted]) -> Any:
        accepting = Acceptor(sock, factory)
        accepting.start(asyncio.get_running_loop())
        return accepting.close

    async def with_uvloop_server(sock: socket.socket, factory: Callable[[], Counted]) -> Any:
        server = await asyncio.get_running_loop().create_server(factory, sock=sock)
        return server.close

    turns = run(lambda: turns_until_all_in(with_acceptor))
    # MAX_ACCEPT per readiness: a turn or a few take them, a few more make their transports
    # and protocols.
    assert turns <= CLIENTS // MAX_ACCEPT + 6, turns
    # What lbx did before (and why): uvloop's own server takes one connection per turn.
    assert run(lambda: turns_until_all_in(with_uvloop_server)) >= CLIENTS // 2


class RunsOutOfDescriptors(socket.socket):
    """A listening socket whose first accept fails as a process out of descriptors does."""

    failed = False

    def accept(self) -> tuple[socket.socket, Any]:
        if not self.failed:
            self.failed = True
            raise OSError(errno.EMFILE, "Too many open files")
        return super().accept()


def test_out_of_descriptors_pauses_accepting_then_resumes(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(acceptor, "PAUSE_SECONDS", 0.05)

    async def main() -> None:
        made: list[asyncio.BaseTransport] = []
        arrived = asyncio.Event()

        class One(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                made.append(transport)
                arrived.set()

        sock = RunsOutOfDescriptors()
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        sock.setblocking(False)
        accepting = Acceptor(sock, One)
        accepting.start(asyncio.get_running_loop())
        with sock, socket.create_connection(sock.getsockname()):
            await asyncio.wait_for(arrived.wait(), 30)
            made[0].close()
            accepting.close()
        assert sock.failed

    with caplog.at_level(logging.ERROR, logger="lbx.server"):
        run(main)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "cannot accept connections on" in errors[0]
    assert "Too many open files; retrying in 0.05s" in errors[0]


BATCH = 64
"""A smaller batch than MAX_ACCEPT, so that the stop's queue holds several."""


@pytest.mark.parametrize("taken_before", [0, BATCH, CLIENTS])
def test_a_stop_takes_the_queued_connections_and_waits_for_the_accepted_ones(
    taken_before: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``accept_queued`` (graceful stop) takes every queued connection, more than one batch,
    and waits for the ones the reader accepted just before (their transports not made yet)."""
    monkeypatch.setattr(acceptor, "MAX_ACCEPT", BATCH)

    async def main() -> int:
        made: list[asyncio.BaseTransport] = []
        all_in = asyncio.Event()
        with listening_socket() as sock:
            accepting = Acceptor(sock, lambda: Counted(made, all_in))
            loop = asyncio.get_running_loop()
            accepting.start(loop)
            loop.remove_reader(sock.fileno())  # the loop gets no turn to accept them itself
            clients = connect_all(sock.getsockname()[1])
            try:
                taken = 0
                while taken < taken_before:  # as the reader does when the socket is readable
                    taken += len(accepting.accept(min(BATCH, taken_before - taken)))
                await accepting.accept_queued(30)
                await asyncio.sleep(0)  # connection_made runs on the loop's next turn
                counted = len(made)
            finally:
                accepting.close()
                for transport in made:
                    transport.close()
                for client in clients:
                    client.close()
        return counted

    assert run(main) == CLIENTS
