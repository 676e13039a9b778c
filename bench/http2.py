"""HTTP/2 clients through lbx, nginx and HAProxy to the same HTTP/1.1 backends, with h2load.

The layout of run.py's scenario (p): each proxy alone on CPU 0 in its leanest configuration for
the job (round robin over two nginx backends, upstream keep-alive, the client's Host and
X-Forwarded-For/Proto passed on), h2load and the backends on CPU 1. The clients speak HTTP/2
over plaintext by prior knowledge (lbx ``h2c: true``, nginx ``listen ... http2``, HAProxy
``proto h2``): ``h2load -c 10 -m 10``, 10 connections with 10 streams each at once. Rounds are
interleaved; ratios are paired by round against nginx.

    .venv/bin/python bench/http2.py                  # 5 rounds x 10 s
    .venv/bin/python bench/http2.py --rounds 1 --duration 3
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # bench/run.py: the processes, pinning and CPU accounting of the benchmark

NGINX_H2 = run.NGINX_PLAIN.replace("listen {listen};", "listen {listen} http2;")
HAPROXY_H2 = run.HAPROXY_PLAIN.replace("bind {listen}", "bind {listen} proto h2")
LBX_H2 = """\
plugins: [roundrobin]
services:
  - name: bench
    listen: ["{listen}"]
    h2c: true
    upstreams: ["{b1}", "{b2}"]
"""
SYSTEMS = ("lbx", "nginx", "haproxy")


@dataclass
class H2Run:
    system: str
    round: int
    rps: float
    requests: int
    failed: int
    mean_ms: float
    cpu_us_per_req: float


def start(system: str, port: int, b1: int, b2: int, tmp: Path, stack: ExitStack) -> int:
    listen, up1, up2 = f"{run.HOST}:{port}", f"{run.HOST}:{b1}", f"{run.HOST}:{b2}"
    env: dict[str, str] = {}
    if system == "lbx":
        conf = run.write(tmp, "lbx-h2.yaml", LBX_H2.format(listen=listen, b1=up1, b2=up2))
        argv = [str(run.VENV_BIN / "lbx"), "serve", "-c", str(conf)]
        env = {"LBX_LOG": "warn"}
    elif system == "nginx":
        text = NGINX_H2.format(tmp=tmp, listen=listen, b1=up1, b2=up2)
        conf = run.write(tmp, "nginx-h2.conf", text)
        argv = ["nginx", "-e", str(tmp / "nginx-h2.err"), "-c", str(conf)]
    else:
        conf = run.write(tmp, "haproxy-h2.cfg", HAPROXY_H2.format(listen=listen, b1=up1, b2=up2))
        argv = ["haproxy", "-db", "-f", str(conf)]
    proc = stack.enter_context(run.running(f"h2-{system}", run.PROXY_CPU, argv, [port], env))
    return proc.pid


def h2load(port: int, seconds: int, clients: int, streams: int) -> str:
    argv = ["taskset", "-c", run.CLIENT_CPU, "h2load", "-c", str(clients), "-m", str(streams)]
    argv += ["-D", str(seconds), f"http://{run.HOST}:{port}/"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    if done.returncode != 0:
        raise RuntimeError(f"h2load failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return done.stdout


def grab(pattern: str, text: str) -> re.Match[str]:
    match = re.search(pattern, text)
    if match is None:
        raise RuntimeError(f"no {pattern!r} in h2load's output:\n{text}")
    return match


def to_ms(value: str, unit: str) -> float:
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def measure(system: str, rnd: int, pid: int, port: int, args: argparse.Namespace) -> H2Run:
    pids = run.process_tree(pid)
    before = run.cpu_ticks(pids)
    out = h2load(port, args.duration, args.clients, args.streams)
    ticks = run.cpu_ticks(pids) - before
    requests = int(grab(r"requests: \d+ total, \d+ started, (\d+) done", out)[1])
    failed = sum(int(n) for n in grab(r"succeeded, (\d+) failed, (\d+) errored", out).groups())
    mean = grab(r"time for request:\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)", out)
    return H2Run(
        system=system,
        round=rnd,
        rps=float(grab(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)[1]),
        requests=requests,
        failed=failed,
        mean_ms=to_ms(mean[1], mean[2]),
        cpu_us_per_req=ticks / run.HZ * 1e6 / max(requests, 1),
    )


def paired(runs: list[H2Run], system: str, metric: str) -> float:
    """Median over rounds of ``system``'s metric divided by nginx's in the same round."""
    by_round = {(r.system, r.round): getattr(r, metric) for r in runs}
    rounds = sorted({r.round for r in runs})
    return statistics.median(by_round[(system, n)] / by_round[("nginx", n)] for n in rounds)


def report(runs: list[H2Run], systems: list[str], args: argparse.Namespace) -> str:
    lines = [
        f"{max(r.round for r in runs)} rounds x {args.duration} s, h2load -c {args.clients} "
        f"-m {args.streams}, h2c prior knowledge; median over rounds, ratios paired by round",
        "",
        "| system | req/s | CPU µs/req | mean ms | failed | req/s ÷ nginx | CPU/req ÷ nginx |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for system in systems:
        mine = [r for r in runs if r.system == system]
        lines.append(
            f"| {system} | {statistics.median(r.rps for r in mine):,.0f} "
            f"| {statistics.median(r.cpu_us_per_req for r in mine):.1f} "
            f"| {statistics.median(r.mean_ms for r in mine):.2f} "
            f"| {sum(r.failed for r in mine)} "
            f"| {paired(runs, system, 'rps'):.2f} | {paired(runs, system, 'cpu_us_per_req'):.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=10, help="seconds per measured run")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of load before each run")
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--streams", type=int, default=10, help="concurrent streams per client")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stops what it started
    missing = [tool for tool in ("h2load", "nginx", "taskset") if not shutil.which(tool)]
    if missing:
        sys.exit(f"needs {', '.join(missing)} (Debian: nghttp2-client, nginx, util-linux)")
    systems = [s for s in SYSTEMS if s != "haproxy" or shutil.which("haproxy")]
    run.raise_fd_limit()
    runs: list[H2Run] = []
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="lbx-h2-") as name:
        tmp = Path(name)
        b1, b2 = run.free_port(), run.free_port()
        run.start_backend("nginx", b1, b2, tmp, stack, run.CLIENT_CPU)
        ports = {system: run.free_port() for system in systems}
        pids = {system: start(system, ports[system], b1, b2, tmp, stack) for system in systems}
        time.sleep(0.5)
        for rnd in range(1, args.rounds + 1):
            for system in systems:
                if args.warmup:
                    h2load(ports[system], args.warmup, args.clients, args.streams)
                result = measure(system, rnd, pids[system], ports[system], args)
                runs.append(result)
                print(
                    f"round {rnd} {system:8} {result.rps:>9,.0f} req/s "
                    f"{result.cpu_us_per_req:6.1f} µs/req  mean {result.mean_ms:.2f} ms"
                    f"  failed {result.failed}",
                    file=sys.stderr,
                )
    print(report(runs, systems, args))


if __name__ == "__main__":
    main()
