"""The Python cost of one proxied request, without sockets: a steady number on a noisy machine.

Scenario (a)'s plugins (round robin, the health-check plugin, contrib/host_header.py; with
``--noop`` also bench/noop_hooks.py) run in one process on uvloop, but the client and the two
upstream connections are in-memory transports: each request is fed to lbx's client protocol, the
request head lbx writes upstream is answered with nginx's response bytes, and the response lbx
writes back is checked. What is left is the per-request work of lbx itself (parsing, phases,
hooks, selection, pooling, framing): the syscalls and the network stack are not in the number.
The protocols' callbacks are called from the loop, as uvloop calls them, and the harness waits
for each write of lbx on a future: its own two wake-ups per request are in the number, the same
whatever lbx does between them (tasks or callbacks), so two designs compare fairly.

    .venv/bin/python bench/request_path.py [--requests 200000] [--noop] [--profile]

Prints µs per request (best of ``--repeat`` runs); ``--profile`` adds a cProfile table.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import sys
import time
from pathlib import Path
from typing import Any

import uvloop

from lbx.collector import tune_gc
from lbx.h1 import H1Downstream
from lbx.server import Server
from lbx.testing import prepared_server
from lbx.upstream import UpstreamConnection

HERE = Path(__file__).resolve().parent
REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"  # what wrk sends
RESPONSE = (  # what the nginx backend of bench/run.py answers
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Mon, 30 Nov 2026 22:00:00 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 12\r\nConnection: keep-alive\r\n\r\n"
    b"hello world\n"
)


class MemoryTransport:
    """Enough of an asyncio transport for lbx's protocols; ``write`` records what was sent."""

    def __init__(self, on_write: Any) -> None:
        self.on_write = on_write
        self.closed = False

    def write(self, data: bytes) -> None:
        self.on_write(data)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8080)}.get(name)

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    abort = close

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None: ...


def build_server(noop: bool, bare: bool = False) -> Server:
    plugins = ["roundrobin", "healthcheck", str(HERE.parent / "contrib" / "host_header.py")]
    if bare:
        plugins = ["roundrobin"]
    if noop:
        plugins.append(str(HERE / "noop_hooks.py"))
    server = prepared_server(plugins, ("127.0.0.1:1", "127.0.0.1:2"))
    tune_gc()  # as Server.run does
    return server


async def run(requests: int, noop: bool, bare: bool = False) -> float:
    """Proxy ``requests`` requests over one client connection; returns µs per request."""
    service = build_server(noop, bare).services[0]
    assert service.load_balancer is not None
    loop = asyncio.get_running_loop()
    # What lbx writes resolves the future the loop below waits for: the harness costs the same
    # two wake-ups per request whatever lbx does in between.
    written: asyncio.Future[tuple[Any, bytes]] = loop.create_future()

    def record(side: Any, data: bytes) -> None:
        if not written.done():
            written.set_result((side, data))

    pool = service.connector.pool
    for backend in service.load_balancer.backends.items:
        upstream = UpstreamConnection(service.peer_for(backend), pool)
        upstream.connection_made(
            MemoryTransport(lambda data, conn=upstream: record(conn, data))  # type: ignore[misc]
        )
        pool.put(upstream)
    client: H1Downstream | None = None
    started = time.process_time()  # CPU time: other processes on the machine do not count
    for index in range(requests):
        if index % 500 == 0:  # a new client connection now and then, as wrk's (keepalive_requests)
            if client is not None:
                client.connection_lost(None)
            client = H1Downstream(service)
            client.connection_made(MemoryTransport(lambda data: record(None, data)))  # type: ignore[arg-type]
        # Protocol callbacks come from the loop, as uvloop's do, not from this task.
        loop.call_soon(client.data_received, REQUEST)
        upstream, _ = await written
        written = loop.create_future()
        loop.call_soon(upstream.data_received, RESPONSE)
        _, answer = await written
        written = loop.create_future()
        if not answer.startswith(b"HTTP/1.1 200 OK\r\n"):
            sys.exit("lbx did not answer 200")
    return (time.process_time() - started) / requests * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--noop", action="store_true", help="add bench/noop_hooks.py (scenario b)")
    ap.add_argument("--profile", action="store_true", help="print a cProfile table")
    ap.add_argument("--bare", action="store_true", help="round robin only: no hook module")
    args = ap.parse_args()
    uvloop.install()
    times = [asyncio.run(run(args.requests, args.noop, args.bare)) for _ in range(args.repeat)]
    print(
        f"{min(times):.2f} µs/request (best of {args.repeat}; all: "
        f"{', '.join(f'{t:.2f}' for t in times)})"
    )
    if args.profile:
        profiler = cProfile.Profile()
        profiler.runcall(asyncio.run, run(args.requests // 4, args.noop, args.bare))
        pstats.Stats(profiler).sort_stats("tottime").print_stats(30)


if __name__ == "__main__":
    main()
