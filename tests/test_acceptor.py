"""``lbx.acceptor``: a burst of clients gets in within a few turns of a busy event loop, on real
sockets and uvloop (whose own servers take one connection per turn)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trustme
import uvloop

from lbx import acceptor
from lbx.acceptor import MAX_ACCEPT, Acceptor

CLIENTS = 100
"""Fewer than the smallest listen queue of the kernels lbx runs on (128 before Linux 5.4)."""


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
    """uvloop's own servers take one connection per turn (over a million turns of this loop
    for 100 clients); the acceptor takes them in one, a few more make their protocols."""

    async def with_acceptor(sock: socket.socket, factory: Callable[[], Counted]) -> Any:
        accepting = Acceptor(sock, factory, "test")
        accepting.start(asyncio.get_running_loop())
        return accepting.close

    turns = run(lambda: turns_until_all_in(with_acceptor))
    assert turns <= CLIENTS // MAX_ACCEPT + 6, turns


class RunsOutOfDescriptors(socket.socket):
    """A listening socket whose first accept fails as a process out of descriptors does."""

    failed_at = 0.0
    accepted_at = 0.0

    def accept(self) -> tuple[socket.socket, Any]:
        if not self.failed_at:
            self.failed_at = time.monotonic()
            raise OSError(errno.EMFILE, "Too many open files")
        taken = super().accept()
        self.accepted_at = time.monotonic()
        return taken


def test_out_of_descriptors_pauses_accepting_then_resumes(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(acceptor, "PAUSE_SECONDS", 0.2)

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
        accepting = Acceptor(sock, One, "test")
        accepting.start(asyncio.get_running_loop())
        with sock, socket.create_connection(sock.getsockname()):
            await asyncio.wait_for(arrived.wait(), 30)
            made[0].close()
            accepting.close()
        # Not taken again on the next turn (the queue still held the client) but after the
        # pause (half of it: the loop's timers round to milliseconds).
        assert sock.accepted_at - sock.failed_at >= acceptor.PAUSE_SECONDS / 2

    with caplog.at_level(logging.ERROR, logger="lbx.server"):
        run(main)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "cannot accept connections on test:" in errors[0]
    assert "Too many open files; retrying in 0.2s" in errors[0]


BATCH = 64
"""A smaller batch than MAX_ACCEPT, so that the stop's queue holds several."""


@pytest.mark.parametrize("taken_before", [0, BATCH, CLIENTS])
def test_a_stop_takes_the_queued_connections_and_waits_for_the_accepted_ones(
    taken_before: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``take_queued`` (graceful stop) takes every queued connection, more than one batch,
    and returns the ones still being made transports, those the reader accepted just before
    too."""
    monkeypatch.setattr(acceptor, "MAX_ACCEPT", BATCH)

    async def main() -> int:
        made: list[asyncio.BaseTransport] = []
        all_in = asyncio.Event()
        with listening_socket() as sock:
            accepting = Acceptor(sock, lambda: Counted(made, all_in), "test")
            loop = asyncio.get_running_loop()
            accepting.start(loop)
            clients = connect_all(sock.getsockname()[1])
            try:
                taken = 0
                while taken < taken_before:  # as the reader does when the socket is readable
                    taken += len(accepting.accept(min(BATCH, taken_before - taken)))
                settling = accepting.take_queued()  # no turn of the loop since the connects
                if settling:
                    await asyncio.wait(settling)
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


def test_a_listening_socket_closed_before_its_acceptor_is_closed_once_it_stops() -> None:
    """The loop watches the socket object: closing it while watched leaves the descriptor open
    (no watch on a closed or reused descriptor) until the acceptor stops."""

    async def main() -> None:
        sock = listening_socket()
        accepting = Acceptor(sock, asyncio.Protocol, "test")
        accepting.start(asyncio.get_running_loop())
        sock.close()
        assert sock.fileno() >= 0
        accepting.close()
        assert sock.fileno() == -1

    run(main)


def test_a_stop_does_not_wait_for_a_tls_handshake() -> None:
    """A client that opened a TLS connection and sent nothing does not hold up a graceful
    stop: the handshake is left to finish (or time out) on its own."""
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(context)

    async def main() -> list[asyncio.Task[None]]:
        with listening_socket() as sock:
            accepting = Acceptor(sock, asyncio.Protocol, "test", context, 60)
            accepting.start(asyncio.get_running_loop())
            with socket.create_connection(sock.getsockname()):  # silent: no ClientHello
                (handshaking,) = accepting.accept(1)  # as the reader does
                await asyncio.sleep(0)  # the handshake starts, and waits for the client
                assert not handshaking.done()
                settling = accepting.take_queued()
                accepting.close()
        return settling

    assert run(main) == []
