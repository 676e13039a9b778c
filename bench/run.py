"""Benchmark lbx against nginx (and HAProxy) as one-core HTTP/1.1 reverse proxies on loopback.

Layout (2 cores): every proxy pinned to CPU 0; the backends and wrk pinned to CPU 1.
Rounds are interleaved (lbx, nginx, haproxy, lbx, ...) so that noise on the shared machine hits
every system alike. See bench/README.md for what is measured and how to read the table.

    .venv/bin/python bench/run.py --rounds 5 --duration 10
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VENV_BIN = Path(sys.executable).parent
PROXY_CPU = "0"
CLIENT_CPU = "1"  # the backends and wrk
HZ = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
HOST = "127.0.0.1"

# ---------------------------------------------------------------- configs

NGINX_PROXY = """\
daemon off;
master_process on;
worker_processes 1;
pid {tmp}/nginx-proxy.pid;
error_log {tmp}/nginx-proxy.err warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/ngx-body;
    proxy_temp_path {tmp}/ngx-proxy;
    fastcgi_temp_path {tmp}/ngx-fcgi;
    uwsgi_temp_path {tmp}/ngx-uwsgi;
    scgi_temp_path {tmp}/ngx-scgi;
    keepalive_requests 1000000;
    upstream backends {{
        server {b1};
        server {b2};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen {listen};
        location / {{
            proxy_pass http://backends;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""

NGINX_BACKEND = """\
daemon off;
master_process on;
worker_processes 1;
pid {tmp}/nginx-backend.pid;
error_log {tmp}/nginx-backend.err warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/ngxb-body;
    proxy_temp_path {tmp}/ngxb-proxy;
    fastcgi_temp_path {tmp}/ngxb-fcgi;
    uwsgi_temp_path {tmp}/ngxb-uwsgi;
    scgi_temp_path {tmp}/ngxb-scgi;
    keepalive_requests 1000000;
    default_type text/plain;
    server {{ listen {b1}; location / {{ return 200 "Hello from backend a\\n"; }} }}
    server {{ listen {b2}; location / {{ return 200 "Hello from backend b\\n"; }} }}
}}
"""

PYTHON_BACKEND = """\
import asyncio, sys, uvloop
from lbx.testing import DemoBackend

async def serve(host, ports):
    for name, port in zip("ab", ports):
        await DemoBackend(name, host, int(port)).start()
    await asyncio.Event().wait()

uvloop.run(serve(sys.argv[1], sys.argv[2:]))
"""

HAPROXY = """\
global
    nbthread 1
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    http-reuse always
frontend fe
    bind {listen}
    default_backend be
backend be
    balance roundrobin
    server a {b1}
    server b {b2}
"""

# ---------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_listening(
    port: int, proc: subprocess.Popen[bytes], name: str, timeout: float = 15
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode} before listening on {port}")
        try:
            socket.create_connection((HOST, port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{name} did not listen on {port} within {timeout}s")


@contextmanager
def running(
    name: str, cpu: str, argv: list[str], ports: list[int], env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``argv`` pinned to ``cpu``; stop it (by its own pid only) on exit."""
    log = open(Path(tempfile.gettempdir()) / f"lbx-bench-{name}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        ["taskset", "-c", cpu, *argv],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )
    try:
        for port in ports:
            wait_listening(port, proc, name)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # nginx: fast shutdown, also ends its workers
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants."""
    out = [pid]
    for p in out:
        try:
            kids = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        out.extend(int(k) for k in kids)
    return out


def cpu_ticks(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total


def rss_mib(pid: int) -> float:
    """RSS of the process that serves traffic: the (largest) child if there is one, else ``pid``."""
    tree = process_tree(pid)
    candidates = tree[1:] or tree
    best = 0
    for p in candidates:
        with suppress(OSError):
            best = max(best, int(Path(f"/proc/{p}/statm").read_text().split()[1]))
    return best * PAGE / 2**20


def core_busy(cpu: str) -> int:
    """Busy jiffies of one CPU from /proc/stat, softirq included."""
    for line in Path("/proc/stat").read_text().splitlines():
        name, *vals = line.split()
        if name == f"cpu{cpu}":
            user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, vals[:8])
            return user + nice + system + irq + softirq + steal
    raise LookupError(f"cpu{cpu} not in /proc/stat")


def all_ticks() -> dict[int, int]:
    """utime+stime of every user-space process (kernel threads are children of pid 2)."""
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[1] not in ("0", "2"):  # ppid
                out[int(entry.name)] = int(fields[11]) + int(fields[12])
    return out


# ---------------------------------------------------------------- wrk


@dataclass
class Run:
    system: str
    round: int
    rps: float
    requests: int
    errors: int
    p50_ms: float
    p99_ms: float
    cpu_us_per_req: float
    rss_mib: float
    core_us_per_req: float  # all busy time of the proxy's CPU, softirq included
    client_core_busy: float  # backends + wrk CPU / wall time, 1.0 = CPU 1 saturated by us
    other_cpu: float  # CPU (in cores) used by processes that are not ours
    attempts: int = 1
    top: str = ""


def to_ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def parse_wrk(out: str) -> tuple[float, int, int, float, float]:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    reqs = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    p50 = to_ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = to_ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return rps, reqs, errors + (int(m.group(1)) if m else 0), p50, p99


def wrk(port: int, duration: int, connections: int, cpu: str = CLIENT_CPU) -> tuple[str, float]:
    """Run wrk pinned to ``cpu``; return its output and its own CPU seconds."""
    with tempfile.TemporaryFile() as out:
        argv = ["taskset", "-c", cpu, "wrk", "-t1", f"-c{connections}"]
        argv += [f"-d{duration}s", "--latency", f"http://{HOST}:{port}/"]
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        try:
            _, status, usage = os.wait4(proc.pid, 0)  # the rusage of wrk itself
        finally:
            if proc.returncode is None and proc.poll() is None:
                proc.kill()
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode()
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}):\n{text}")
    return text, usage.ru_utime + usage.ru_stime


def top_snapshot(delay: float, into: list[str], ours: set[int]) -> None:
    time.sleep(delay)
    ours.update(process_tree(os.getpid()))  # proxies, backends, wrk
    out = subprocess.run(
        ["top", "-b", "-n", "2", "-d", "1", "-w", "160"], capture_output=True, text=True
    ).stdout
    frame = out.split("top - ")[-1]  # the 2nd frame has %CPU over the last second
    into.append("\n".join(("top - " + frame).splitlines()[:22]))


def measure(
    system: str, rnd: int, proxy: int, port: int, backend: int, args: argparse.Namespace
) -> Run:
    pids, bpids = process_tree(proxy), process_tree(backend)
    everyone0, core0, t0 = all_ticks(), core_busy(PROXY_CPU), time.monotonic()
    p0, b0 = cpu_ticks(pids), cpu_ticks(bpids)
    snap: list[str] = []
    ours: set[int] = set()
    snapper = threading.Thread(
        target=top_snapshot, args=(args.duration / 2, snap, ours), daemon=True
    )
    snapper.start()
    out, wrk_cpu = wrk(port, args.duration, args.connections)
    p1, b1, wall, core1 = (
        cpu_ticks(pids),
        cpu_ticks(bpids),
        time.monotonic() - t0,
        core_busy(PROXY_CPU),
    )
    everyone1 = all_ticks()
    rss = rss_mib(proxy)
    snapper.join()
    rps, reqs, errors, p50, p99 = parse_wrk(out)
    proxy_s, backend_s = (p1 - p0) / HZ, (b1 - b0) / HZ
    other = sum(t - everyone0.get(p, 0) for p, t in everyone1.items() if p not in ours) / HZ
    return Run(
        system=system,
        round=rnd,
        rps=rps,
        requests=reqs,
        errors=errors,
        p50_ms=p50,
        p99_ms=p99,
        cpu_us_per_req=proxy_s * 1e6 / max(reqs, 1),
        core_us_per_req=(core1 - core0) / HZ * 1e6 / max(reqs, 1),
        rss_mib=round(rss, 1),
        client_core_busy=round((backend_s + wrk_cpu) / wall, 3),
        other_cpu=round(other / wall, 3),
        top=snap[0] if snap else "",
    )


def noise(run: Run) -> float:
    """How many cores' worth of CPU other processes used during the run."""
    return run.other_cpu


# ---------------------------------------------------------------- systems


def ensure_tools(need_haproxy: bool) -> None:
    wanted = {"nginx": "nginx", "wrk": "wrk", "taskset": "util-linux"}
    if need_haproxy:
        wanted["haproxy"] = "haproxy"
    missing = [pkg for tool, pkg in wanted.items() if not shutil.which(tool)]
    if not missing:
        return
    print(f"installing {' '.join(missing)} with apt-get ...", file=sys.stderr)
    try:
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        needed = [p for p in missing if p != "haproxy"]
        if any(not shutil.which(t) for t in ("nginx", "wrk", "taskset")):
            sys.exit(f"could not install {' '.join(needed)} ({exc}); install them and rerun")
        print(f"haproxy not installed ({exc}); skipping it", file=sys.stderr)


def write(tmp: Path, name: str, text: str) -> Path:
    path = tmp / name
    path.write_text(text)
    return path


def start_backend(kind: str, b1: int, b2: int, tmp: Path, stack: ExitStack) -> int:
    if kind == "nginx":
        conf = write(tmp, "backend.conf", NGINX_BACKEND.format(tmp=tmp, b1=b1, b2=b2))
        argv = ["nginx", "-e", str(tmp / "nginx-backend.err"), "-c", str(conf)]
    else:
        # `python -m lbx.testing` does this too, but its main() needs Python 3.12 (loop_factory)
        argv = [sys.executable, "-c", PYTHON_BACKEND, HOST, str(b1), str(b2)]
    return stack.enter_context(running(f"backend-{kind}", CLIENT_CPU, argv, [b1, b2])).pid


def start_proxy(system: str, port: int, b1: int, b2: int, tmp: Path, stack: ExitStack) -> int:
    listen, up1, up2 = f"{HOST}:{port}", f"{HOST}:{b1}", f"{HOST}:{b2}"
    env = None
    if system == "lbx":
        argv = [str(VENV_BIN / "lbx"), "serve", "--plugin", "roundrobin", "--listen", listen]
        argv += ["--upstream", up1, "--upstream", up2]
        env = {"LBX_LOG": "warn"}
    elif system == "nginx":
        conf = write(tmp, "proxy.conf", NGINX_PROXY.format(tmp=tmp, listen=listen, b1=up1, b2=up2))
        argv = ["nginx", "-e", str(tmp / "nginx-proxy.err"), "-c", str(conf)]
    else:
        conf = write(tmp, "haproxy.cfg", HAPROXY.format(listen=listen, b1=up1, b2=up2))
        argv = ["haproxy", "-db", "-f", str(conf)]
    return stack.enter_context(running(system, PROXY_CPU, argv, [port], env)).pid


# ---------------------------------------------------------------- report


def spread(values: list[float], fmt: str) -> str:
    med = statistics.median(values)
    if len(values) == 1:
        return format(med, fmt)
    return f"{med:{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"


def summarise(runs: list[Run], systems: list[str]) -> tuple[dict[str, dict[str, float]], str]:
    base = {r.round: r for r in runs if r.system == "nginx"}
    summary: dict[str, dict[str, float]] = {}
    lines = [
        "| system | req/s | CPU µs/req | core µs/req | p50 ms | p99 ms | RSS MiB "
        "| req/s ÷ nginx | CPU/req ÷ nginx | client core busy |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for system in systems:
        rs = [r for r in runs if r.system == system]
        paired = [(r, base[r.round]) for r in rs if r.round in base]
        rps_ratio = statistics.median(r.rps / b.rps for r, b in paired)
        cpu_ratio = statistics.median(r.cpu_us_per_req / b.cpu_us_per_req for r, b in paired)
        summary[system] = {
            "rps": statistics.median(r.rps for r in rs),
            "cpu_us_per_req": statistics.median(r.cpu_us_per_req for r in rs),
            "core_us_per_req": statistics.median(r.core_us_per_req for r in rs),
            "p50_ms": statistics.median(r.p50_ms for r in rs),
            "p99_ms": statistics.median(r.p99_ms for r in rs),
            "rss_mib": statistics.median(r.rss_mib for r in rs),
            "rps_vs_nginx": rps_ratio,
            "cpu_vs_nginx": cpu_ratio,
            "errors": sum(r.errors for r in rs),
        }
        lines.append(
            f"| {system} | {spread([r.rps for r in rs], ',.0f')} "
            f"| {spread([r.cpu_us_per_req for r in rs], '.1f')} "
            f"| {spread([r.core_us_per_req for r in rs], '.1f')} "
            f"| {spread([r.p50_ms for r in rs], '.2f')} "
            f"| {spread([r.p99_ms for r in rs], '.2f')} "
            f"| {spread([r.rss_mib for r in rs], '.1f')} "
            f"| {rps_ratio:.2f} | {cpu_ratio:.2f} "
            f"| {spread([r.client_core_busy for r in rs], '.2f')} |"
        )
    return summary, "\n".join(lines)


def compare_backends(args: argparse.Namespace) -> None:
    """wrk (on CPU 0) straight at each backend kind (on CPU 1): which one costs less per request."""
    for kind in ("python", "nginx"):
        with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="lbx-bench-") as tmpdir:
            b1, b2 = free_port(), free_port()
            pid = start_backend(kind, b1, b2, Path(tmpdir), stack)
            wrk(b1, args.warmup, args.connections, PROXY_CPU)
            pids = process_tree(pid)
            c0 = cpu_ticks(pids)
            out, _ = wrk(b1, args.duration, args.connections, PROXY_CPU)
            rps, reqs, _, _, p99 = parse_wrk(out)
            us = (cpu_ticks(pids) - c0) / HZ * 1e6 / max(reqs, 1)
            print(f"backend {kind:6} {rps:>9,.0f} req/s  {us:5.1f} µs/req  p99 {p99:.2f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=int, default=10, help="seconds per measured run")
    ap.add_argument("--warmup", type=int, default=2, help="seconds of load before each run")
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--backend", choices=["python", "nginx"], default="nginx")
    ap.add_argument("--systems", default="lbx,nginx,haproxy", help="comma-separated")
    ap.add_argument(
        "--max-noise",
        type=float,
        default=0.15,
        help="repeat a run if others used more than this share of a core during it",
    )
    ap.add_argument("--retries", type=int, default=2, help="repeats allowed per noisy run")
    ap.add_argument("--compare-backends", action="store_true", help="measure the backends only")
    args = ap.parse_args()
    if args.compare_backends:
        ensure_tools(False)
        return compare_backends(args)
    systems = [s for s in args.systems.split(",") if s]
    if "nginx" not in systems:
        sys.exit("nginx is the baseline; keep it in --systems")
    ensure_tools("haproxy" in systems)
    if "haproxy" in systems and not shutil.which("haproxy"):
        systems.remove("haproxy")
    if (os.cpu_count() or 1) < 2:
        sys.exit("needs 2 CPUs (proxy on CPU 0, backends and wrk on CPU 1)")

    load_before = os.getloadavg()
    runs: list[Run] = []
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="lbx-bench-") as tmpdir:
        tmp = Path(tmpdir)
        b1, b2 = free_port(), free_port()
        backend = start_backend(args.backend, b1, b2, tmp, stack)
        proxies = {}
        for system in systems:
            port = free_port()
            proxies[system] = (port, start_proxy(system, port, b1, b2, tmp, stack))
        for rnd in range(1, args.rounds + 1):
            for system in systems:
                port, pid = proxies[system]
                tries: list[Run] = []
                while len(tries) <= args.retries:  # repeat runs disturbed by others
                    if args.warmup > 0:
                        wrk(port, args.warmup, args.connections)
                    tries.append(measure(system, rnd, pid, port, backend, args))
                    if noise(tries[-1]) <= args.max_noise:
                        break
                run = min(tries, key=noise)
                run.attempts = len(tries)
                runs.append(run)
                print(
                    f"round {rnd} {system:8} {run.rps:>9,.0f} req/s  "
                    f"{run.cpu_us_per_req:5.1f} µs/req (core {run.core_us_per_req:5.1f})"
                    f"  p50 {run.p50_ms:.2f}  p99 {run.p99_ms:.2f}"
                    f"  errors {run.errors}  client core {run.client_core_busy:.2f}"
                    f"  other cpu {run.other_cpu:.2f}  attempts {run.attempts}",
                    file=sys.stderr,
                )
    load_after = os.getloadavg()

    summary, table = summarise(runs, systems)
    noisiest = max(runs, key=noise)
    result = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": {"node": platform.node(), "cpus": os.cpu_count(), "kernel": platform.release()},
        "args": vars(args),
        "load_before": load_before,
        "load_after": load_after,
        "summary": summary,
        "runs": [asdict(r) for r in runs],
    }
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    out = out_dir / f"{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=2))

    print(f"\n{args.rounds} rounds x {args.duration} s, wrk -t1 -c{args.connections}, ", end="")
    print(f"backend: {args.backend}; median (min-max); ratios paired by round\n")
    print(table)
    print(f"\nload average before {load_before}, after {load_after}")
    worst = noise(noisiest)
    print(f"CPU used by other processes: max {worst:.2f} cores during a kept run")
    print(f"top during the noisiest run ({noisiest.system}, round {noisiest.round}):")
    print(noisiest.top)
    print(f"\nresults: {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
