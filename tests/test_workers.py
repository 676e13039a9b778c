"""threads: N: worker processes sharing the listeners, supervised, with one view of health."""

from __future__ import annotations

import os
import re
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from lbx.testing import ClientLoad, http_get

PLUGINS = Path(__file__).parent / "plugins"


def write_conf(tmp_path: Path, *upstreams: str, threads: int = 2, plugins: str = "") -> Path:
    path = tmp_path / "conf.yaml"
    extra = f", {plugins}" if plugins else ""
    path.write_text(
        f"threads: {threads}\nplugins: [roundrobin{extra}]\nservices:\n"
        "  - listen: ['127.0.0.1:0']\n"
        f"    upstreams: [{', '.join(repr(u) for u in upstreams)}]\n"
    )
    return path


def get(address: str, path: str = "/") -> tuple[int, str]:
    reply = http_get(address, path)
    return reply.status, reply.backend


def worker_pids(lines: list[str], start: int = 0) -> set[str]:
    """The pids of the processes that logged a proxied request (at LBX_LOG=debug)."""
    pids = set()
    for line in lines[start:]:
        match = re.search(r"lbx\.proxy\[(\d+)\]: upstream peer is", line)
        if match:
            pids.add(match.group(1))
    return pids


def test_two_workers_serve_and_a_dead_one_is_replaced(lbx, backends, tmp_path):
    """Both workers serve; kill one: traffic continues and a new worker appears."""
    a = backends.start("a")
    proc = lbx("-c", str(write_conf(tmp_path, a.address)), env={"LBX_LOG": "debug"})
    started = re.search(r"(\d+) workers: (\d+), (\d+)\)", proc.wait_for("lbx ready").string)
    assert started is not None
    first, second = started.group(2), started.group(3)
    for _ in range(200):  # a new connection each: the kernel spreads them over both workers
        assert get(proc.address)[0] == 200
    assert worker_pids(proc.lines) == {first, second}
    mark = len(proc.lines)
    os.kill(int(first), signal.SIGKILL)
    replaced = proc.wait_for(r"worker 0 started \(pid (\d+)\)", start=mark).group(1)
    assert proc.wait_for(rf"worker 0 \(pid {first}\) exited unexpectedly \(killed by SIGKILL\)")
    mark = len(proc.lines)
    for _ in range(200):
        assert get(proc.address)[0] == 200
    assert worker_pids(proc.lines, mark) == {replaced, second}
    assert proc.stop() == 0


def test_sigterm_drains_every_worker(lbx, backends, tmp_path):
    """SIGTERM with slow requests in flight on several workers: each gets its 200, exit 0."""
    a = backends.start("a")
    proc = lbx("-c", str(write_conf(tmp_path, a.address, threads=3)))
    results: list[int] = []
    threads = [
        threading.Thread(target=lambda: results.append(get(proc.address, "/sleep/1.5")[0]))
        for _ in range(6)
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 10
    while a.sleeping < 6:  # every slow request reached the backend
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    for thread in threads:
        thread.join(30)
    assert results == [200] * 6
    assert proc.wait() == 0


def wait_for_each(proc, pattern: str, count: int, start: int) -> None:
    """Until ``count`` log lines after ``start`` matched ``pattern`` (one per process)."""
    for _ in range(count):
        proc.wait_for(pattern, start=start)
        start = next(i for i in range(start, len(proc.lines)) if re.search(pattern, proc.lines[i]))
        start += 1


def test_after_a_reload_a_graceful_stop_refuses_new_connections(lbx, backends, tmp_path):
    """A reload forks new workers while the supervisor still holds the old listeners: they must
    not keep copies of them. SIGTERM then closes the address at once, as before any reload,
    while a slow request in flight gets its answer (nginx: refused, not queued unanswered)."""
    a = backends.start("a")
    proc = lbx("-c", str(write_conf(tmp_path, a.address, threads=2)))
    mark = len(proc.lines)
    proc.send_signal(signal.SIGHUP)
    proc.wait_for(r"configuration reloaded from", start=mark)
    wait_for_each(proc, r"of the previous configuration exited", 2, mark)  # they drained
    results: list[int] = []
    slow = threading.Thread(target=lambda: results.append(get(proc.address, "/sleep/3")[0]))
    slow.start()
    deadline = time.monotonic() + 10
    while a.sleeping < 1:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    mark = len(proc.lines)
    proc.send_signal(signal.SIGTERM)
    wait_for_each(proc, r"stopped accepting", 2, mark)  # each worker of the new configuration
    host, port = proc.address.rsplit(":", 1)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((host, int(port)), timeout=5).close()
    slow.join(30)
    assert results == [200]
    assert proc.wait() == 0


def test_health_is_shared_by_every_worker(lbx, backends, tmp_path):
    """Health set by the background process (checks run once) steers every worker."""
    a, b = backends.start("a"), backends.start("b")
    conf = write_conf(
        tmp_path, a.address, b.address, plugins=repr(str(PLUGINS / "mark_first_down.py"))
    )
    proc = lbx("-c", str(conf), env={"LBX_LOG": "debug"})
    down = proc.wait_for(r"(\S+) becomes unhealthy, marked down by the test").group(1)
    expected = "b" if down == a.address else "a"
    seen = {get(proc.address)[1] for _ in range(100)}
    assert seen == {expected}
    assert len(worker_pids(proc.lines)) == 2  # both workers answered, both avoided a
    assert proc.stop() == 0


def test_active_health_checks_run_once_for_every_worker(lbx, backends, tmp_path):
    """With threads: 2 one checker (not one per worker) takes a dead backend out of both."""
    a, b = backends.start("a"), backends.start("b")
    conf = tmp_path / "conf.yaml"
    conf.write_text(
        "threads: 2\nplugins: [roundrobin, healthcheck]\nservices:\n"
        "  - listen: ['127.0.0.1:0']\n"
        f"    upstreams: ['{a.address}', '{b.address}']\n"
        "    health_check: {type: tcp, frequency: 0.5, timeout: 0.5}\n"
    )
    proc = lbx("-c", str(conf), env={"LBX_LOG": "debug"})
    assert {get(proc.address)[1] for _ in range(20)} == {"a", "b"}
    backends.stop(a)
    line = proc.wait_for(rf"lbx\.server\[(\d+)\]: service service0: {a.address} becomes unhealthy")
    checker = line.group(1)
    mark = len(proc.lines)
    assert {get(proc.address)[1] for _ in range(100)} == {"b"}
    workers = worker_pids(proc.lines, mark)
    assert len(workers) == 2 and checker not in workers  # checked elsewhere, seen by both
    unhealthy_lines = [line for line in proc.lines if "becomes unhealthy" in line]
    assert len(unhealthy_lines) == 1  # one checker, one verdict, one log line
    assert proc.stop() == 0


def test_sigterm_under_load_completes_in_flight_requests(lbx, backends, tmp_path):
    """SIGTERM under 20 clients: slow requests in flight get 200, nothing in flight is cut,
    and lbx exits 0 within the grace period; only new connections may fail (refused once the
    listeners close, or reset when they raced the close in the kernel's accept queue)."""
    a = backends.start("a")
    proc = lbx("-c", str(write_conf(tmp_path, a.address, threads=2)))
    slow: list[int] = []
    slow_threads = [
        threading.Thread(target=lambda: slow.append(get(proc.address, "/sleep/2")[0]))
        for _ in range(4)
    ]
    with ClientLoad(proc.address, clients=20, seconds=15) as load:
        while load.ok < 200:
            time.sleep(0.01)
        for thread in slow_threads:
            thread.start()
        deadline = time.monotonic() + 10
        while a.sleeping < 4:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        for thread in slow_threads:
            thread.join(30)
        code = proc.wait(timeout=40)
        took = time.monotonic() - signalled
    print(f"SIGTERM under load: {load.ok} ok, exit {code} after {took:.2f}s, slow {slow}")
    assert slow == [200] * 4
    assert code == 0 and took < 30  # grace_period_seconds defaults to 30
    cut = [e for e in load.errors if not e.startswith("new connection: ")]
    assert cut == []  # no request on an established connection failed


def started_pids(lines: list[str], hook: str, start: int = 0) -> list[str]:
    """The pids that announce_start.py logged for ``hook``, in order."""
    found = [re.search(rf"{hook} in pid (\d+)", line) for line in lines[start:]]
    return [match.group(1) for match in found if match]


def test_worker_started_runs_in_every_worker(lbx, backends, tmp_path):
    """worker_started: once in each worker (a replacement too); server_started: the supervisor."""
    a = backends.start("a")
    conf = write_conf(tmp_path, a.address, plugins=repr(str(PLUGINS / "announce_start.py")))
    proc = lbx("-c", str(conf))
    started = re.search(
        r"\(pid (\d+), 2 workers: (\d+), (\d+)\)", proc.wait_for("lbx ready").string
    )
    assert started is not None
    supervisor, first, second = started.groups()
    assert sorted(started_pids(proc.lines, "worker_started")) == sorted([first, second])
    assert started_pids(proc.lines, "server_started") == [supervisor]
    mark = len(proc.lines)
    os.kill(int(first), signal.SIGKILL)
    replaced = proc.wait_for(r"worker 0 started \(pid (\d+)\)", start=mark).group(1)
    assert started_pids(proc.lines, "worker_started", mark) == [replaced]
    assert proc.stop() == 0


def test_worker_started_in_a_single_process(lbx, backends, tmp_path):
    """threads: 1: both hooks in the one process, worker_started first, each once."""
    a = backends.start("a")
    conf = write_conf(
        tmp_path, a.address, threads=1, plugins=repr(str(PLUGINS / "announce_start.py"))
    )
    proc = lbx("-c", str(conf))
    proc.wait_for("lbx ready")
    order = [line for line in proc.lines if "_started in pid" in line]
    assert [line.split(" in pid")[0].rsplit(" ", 1)[-1] for line in order] == [
        "worker_started",
        "server_started",
    ]
    assert started_pids(proc.lines, "worker_started") == [str(proc.pid)]
    assert proc.stop() == 0


def test_every_serving_process_sizes_its_collector_to_its_connections(lbx, backends, tmp_path):
    """The workers a reload forks too (they come from the supervisor's new ``Server``): with a
    fixed threshold, thousands of requests in flight keep the collector scanning them."""
    a = backends.start("a")
    plugin = repr(str(PLUGINS / "report_collector.py"))
    proc = lbx("-c", str(write_conf(tmp_path, a.address, threads=2, plugins=plugin)))
    following = r"pid (\d+): the collector follows the connections: (\w+)"
    wait_for_each(proc, following, 2, 0)
    mark = len(proc.lines)
    proc.send_signal(signal.SIGHUP)
    proc.wait_for(r"configuration reloaded from", start=mark)
    wait_for_each(proc, following, 2, mark)
    reports = [re.search(following, line) for line in proc.lines]
    answers = [(match.group(1), match.group(2)) for match in reports if match is not None]
    assert len({pid for pid, _ in answers}) == 4  # two workers, then two of the reload
    assert {answer for _, answer in answers} == {"True"}
    assert proc.stop() == 0
