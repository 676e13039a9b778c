"""Memory per idle client connection of a real ``lbx serve`` (issue 18: 3 KiB or less).

One lbx (``serve --plugin roundrobin``, one process) in front of the demo backend
(``python -m lbx.testing``). After 200 requests on short connections (so that what every
request needs is allocated already), N clients connect one after the other; each sends one
request and reads the answer (``--never``: sends nothing), then stays open. The RSS growth of lbx,
read once the last connection has been idle past ``PARK_SECONDS`` and one more sweep, divided by
N, is the memory an idle keep-alive connection costs, Python's allocator included.

    .venv/bin/python bench/idle_memory.py                  # 4,000 connections, one request each
    .venv/bin/python bench/idle_memory.py --never          # connections that never send
    .venv/bin/python bench/idle_memory.py --clients 2000 --repeat 3
"""

from __future__ import annotations

import argparse
import re
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

from lbx.h1 import PARK_SECONDS

PYTHON = sys.executable
REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
SETTLE_SECONDS = PARK_SECONDS + 1.5
"""Past the park, and one more sweep of the deadlines (one a second)."""


def start(argv: list[str], pattern: str) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``argv`` and wait for the line that says where it listens."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    seen = b""
    while True:
        line = proc.stdout.readline()
        if not line:
            sys.exit(f"{argv[2]} exited: {seen.decode(errors='replace')}")
        seen += line
        found = re.search(pattern, line.decode(errors="replace"))
        if found is not None:
            return proc, found.group(1)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def connect(address: tuple[str, int], send: bool) -> socket.socket:
    """A client connection, after one whole answer when ``send``."""
    sock = socket.create_connection(address)
    if send:
        sock.sendall(REQUEST)
        data = b""
        while True:
            data += sock.recv(65536)
            end = data.find(b"\r\n\r\n")
            length = re.search(rb"(?i)content-length: *(\d+)", data)
            if end >= 0 and length is not None and len(data) >= end + 4 + int(length.group(1)):
                return sock
    return sock


def measure(clients: int, send: bool) -> float:
    """KiB of RSS per idle connection, for one fresh lbx."""
    backend, upstream = start(
        [PYTHON, "-m", "lbx.testing", "--listen", "127.0.0.1:0"], r"backend \w+ listening on (\S+)"
    )
    serve = ["serve", "--plugin", "roundrobin", "--listen", "127.0.0.1:0", "--upstream", upstream]
    lbx, listen = start([PYTHON, "-m", "lbx", *serve], r"listening on (\S+)")
    host, port = listen.rsplit(":", 1)
    address = (host, int(port))
    conns: list[socket.socket] = []
    try:
        for _ in range(200):
            connect(address, True).close()
        time.sleep(SETTLE_SECONDS)
        before = rss_kib(lbx.pid)
        conns = [connect(address, send) for _ in range(clients)]
        time.sleep(SETTLE_SECONDS)
        return (rss_kib(lbx.pid) - before) / clients
    finally:
        for sock in conns:
            sock.close()
        for proc in (lbx, backend):
            proc.terminate()
            proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--clients", type=int, default=4000)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--never", action="store_true", help="connections that never send a byte")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < args.clients + 100:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, args.clients + 100), hard))
    what = "never used" if args.never else "idle after one request"
    for _ in range(args.repeat):
        print(f"{measure(args.clients, not args.never):.2f} KiB per connection, {what}")


if __name__ == "__main__":
    main()
