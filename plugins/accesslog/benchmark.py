"""CPU per line of the accesslog plugin alone: its ``logging`` hook on a finished request.

The lines are formatted, buffered and written in batches to a temporary file inside a running
event loop (as in lbx, where the flush timer lives), for a request like wrk's (Host only, plus
the forwarding fields lbx adds) and a browser's (ten fields, Referer and User-Agent among them):

    .venv/bin/python plugins/accesslog/benchmark.py

The whole proxy's view is ``bench/run.py --scenario h`` (see docs/accesslog.md).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lbx_accesslog
from lbx import Headers, RequestHeader

FORWARDED = [(b"X-Forwarded-For", b"127.0.0.1"), (b"X-Forwarded-Proto", b"http")]
REQUESTS = {
    "wrk": ("/", [(b"Host", b"127.0.0.1:6188"), *FORWARDED]),
    "browser": (
        "/products/list?page=2&sort=price",
        [
            (b"Host", b"example.com"),
            (b"User-Agent", b"Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Firefox/128.0"),
            (b"Accept", b"text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
            (b"Accept-Language", b"en-US,en;q=0.5"),
            (b"Accept-Encoding", b"gzip, deflate, br"),
            (b"Referer", b"https://example.com/start?x=1"),
            (b"Cookie", b"session=abcdef0123456789; theme=dark"),
            (b"Upgrade-Insecure-Requests", b"1"),
            *FORWARDED,
        ],
    ),
}
FORMATS = {
    "combined": ("combined", None),
    "combined + 4 fields": ("combined", ["upstream", "upstream_time", "total_time", "retries"]),
    "json": ("json", None),
}


def finished_request(uri: str, fields: list[tuple[bytes, bytes]]) -> Any:
    """The attributes of ``Session`` that the formats read, as after a proxied request."""
    now = time.monotonic()
    return SimpleNamespace(
        req_header=RequestHeader("GET", uri, Headers(fields)),
        client_ip="127.0.0.1",
        service=SimpleNamespace(name="bench"),
        peer=SimpleNamespace(addr="127.0.0.1:8001"),
        response_status=200,
        body_bytes_sent=21,
        body_bytes_read=0,
        start_time=now - 0.0006,
        head_time=now - 0.0002,
        tries=1,
    )


async def cost(log: lbx_accesslog.AccessLog, session: Any, lines: int) -> float:
    """CPU µs per call of the hook, the best of five runs of ``lines`` calls."""
    hook = log.logging
    best = float("inf")
    for _ in range(5):
        started = time.process_time()
        for _ in range(lines):
            hook(session, None)
        log.flush()
        best = min(best, (time.process_time() - started) / lines * 1e6)
    return best


def main(lines: int = 100_000) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for name, (fmt, fields) in FORMATS.items():
            costs = []
            for uri, headers in REQUESTS.values():
                log = lbx_accesslog.AccessLog(str(Path(tmp) / "access.log"), fmt, fields, 256, 0.5)
                log.open()
                costs.append(asyncio.run(cost(log, finished_request(uri, headers), lines)))
                log.close()
            per_request = ", ".join(f"{r} {c:.2f}" for r, c in zip(REQUESTS, costs, strict=True))
            print(f"{name:20} µs/line: {per_request}")


if __name__ == "__main__":
    main()
