"""System calls per request of each proxy on the plain shape (scenario p of run.py), by strace.

Each proxy runs as ``run.py`` starts it for scenario p (one worker, two nginx backends); strace
attaches to every process and thread of the proxy, h2load sends a fixed number of keep-alive
HTTP/1.1 requests, and the calls are counted by name and divided by the requests. Counts, not
times: strace slows every call, so its timings say nothing. The counts of the calls made per
connection or per request do not depend on the machine; how many events one ``epoll_wait``
returns does (more clients or a slower proxy: fewer waits per request).

    .venv/bin/python bench/syscalls.py                     # lbx, nginx, haproxy
    .venv/bin/python bench/syscalls.py --requests 50000 --clients 100
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # bench/run.py: the processes as the benchmark starts them

STRACE_SUMMARY = re.compile(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)\s*$")
"""One line of ``strace -c``: % time, seconds, usecs/call, calls, [errors], syscall."""


def strace_counts(output: str) -> dict[str, int]:
    """``strace -c``'s table as {syscall: calls}."""
    counts: dict[str, int] = {}
    for line in output.splitlines():
        match = STRACE_SUMMARY.match(line)
        if match is not None and match[2] != "total":
            counts[match[2]] = int(match[1])
    return counts


def count_system(system: str, requests: int, clients: int, tmp: Path) -> dict[str, int]:
    """Syscalls made by ``system``'s processes while it proxies ``requests`` requests."""
    with ExitStack() as stack:
        b1, b2, port = run.free_port(), run.free_port(), run.free_port()
        run.start_backend("nginx", b1, b2, tmp, stack, run.ANY_CPU)
        pid = run.start_proxy(system, port, b1, b2, tmp, stack, plain=True)
        url = f"http://{run.HOST}:{port}/"
        h2load = ["h2load", "--h1", "-c", str(clients), "-m", "1"]
        # Warm-up: upstream connections open, caches filled, before strace counts.
        subprocess.run([*h2load, "-n", str(clients * 20), url], check=True, capture_output=True)
        pids = run.process_tree(pid)
        argv = ["strace", "-c", "-f", "-o", str(tmp / f"{system}.strace")]
        for traced in pids:
            argv += ["-p", str(traced)]
        tracer = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
        try:
            assert tracer.stderr is not None
            attached = 0
            while attached < len(pids):  # strace says so once per process it attached to
                line = tracer.stderr.readline()
                if not line:
                    raise RuntimeError(f"strace ended before it attached to {system}")
                attached += "attached" in line
            done = subprocess.run(
                [*h2load, "-n", str(requests), url], check=True, capture_output=True, text=True
            )
            if f"{requests} succeeded" not in done.stdout:
                raise RuntimeError(f"{system}: not every request succeeded:\n{done.stdout}")
        finally:
            tracer.send_signal(signal.SIGINT)  # detaches and writes the summary
            tracer.wait(30)
        return strace_counts((tmp / f"{system}.strace").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--systems", default="lbx,nginx,haproxy")
    args = parser.parse_args()
    missing = [tool for tool in ("strace", "h2load", "nginx", "taskset") if not shutil.which(tool)]
    if missing:
        sys.exit(f"needs {', '.join(missing)} (Debian: strace, nghttp2-client, nginx, util-linux)")
    systems = [s for s in args.systems.split(",") if s != "haproxy" or shutil.which("haproxy")]
    results: dict[str, dict[str, int]] = {}
    with tempfile.TemporaryDirectory(prefix="lbx-syscalls-") as name:
        for system in systems:
            results[system] = count_system(system, args.requests, args.clients, Path(name))
    names = sorted(
        {n for counts in results.values() for n in counts},
        key=lambda n: -max(c.get(n, 0) for c in results.values()),
    )
    print(f"system calls per request: {args.requests} keep-alive requests, {args.clients} clients")
    print("| syscall | " + " | ".join(systems) + " |")
    print("|---|" + "---:|" * len(systems))
    for syscall in names:
        cells = [f"{results[s].get(syscall, 0) / args.requests:.2f}" for s in systems]
        if any(cell != "0.00" for cell in cells):
            print(f"| {syscall} | " + " | ".join(cells) + " |")
    totals = [f"{sum(results[s].values()) / args.requests:.2f}" for s in systems]
    print("| **total** | " + " | ".join(totals) + " |")


if __name__ == "__main__":
    main()
