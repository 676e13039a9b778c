"""lbx-etcd against a real etcd (started here on 127.0.0.1), changed with etcd's own client
(etcdctl): 20 changes of the prefix under load fail no request, and three lbx watching the same
prefix converge on the same set (the times are measured and printed)."""

from __future__ import annotations

import http.server
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import anyio
import pytest

from lbx.testing import BackendThread, ClientLoad, LbxProcess, churn, churn_steps
from lbx_etcd import EtcdDiscovery, EtcdError, parse_value, prefix_end

TIMEOUT = 30.0
NAMES = [f"b{i}" for i in range(1, 7)]
PREFIX = "/lbx/web/"
ETCD, ETCDCTL = shutil.which("etcd"), shutil.which("etcdctl")
pytestmark = [
    pytest.mark.skipif(ETCD is None, reason="etcd is not installed (Debian package etcd-server)"),
    pytest.mark.skipif(
        ETCDCTL is None, reason="etcdctl is not installed (Debian package etcd-client)"
    ),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Etcd:
    """A single-member etcd with its data in a temporary directory."""

    def __init__(self, directory: Path) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        peer = f"http://127.0.0.1:{free_port()}"
        assert ETCD is not None
        self.proc = subprocess.Popen(
            [ETCD, "--name", "lbx-test", "--data-dir", str(directory / "etcd"),
             "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
             "--initial-cluster", f"lbx-test={peer}"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1) as answer:
                    if b'"true"' in answer.read():
                        return
            except OSError:
                pass
            assert self.proc.poll() is None, "etcd exited"
            assert time.monotonic() < deadline, "etcd is not healthy"
            time.sleep(0.05)  # polling its health endpoint: etcd offers nothing to wait on

    def ctl(self, *args: str, stdin: str | None = None) -> str:
        assert ETCDCTL is not None
        done = subprocess.run(
            [ETCDCTL, f"--endpoints={self.url}", *args],
            input=stdin, capture_output=True, text=True, timeout=TIMEOUT,
            env={**os.environ, "ETCDCTL_API": "3"},
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout

    def transaction(self, puts: dict[str, str], deletes: list[str]) -> None:
        """Puts and deletes in one revision (``etcdctl txn``): one watch event for all."""
        operations = [f"put {key} {value}" for key, value in puts.items()]
        operations += [f"del {key}" for key in deletes]
        self.ctl("txn", stdin="\n" + "\n".join(operations) + "\n\n\n")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(TIMEOUT)


@pytest.fixture
def etcd(tmp_path: Path):
    server = Etcd(tmp_path)
    yield server
    server.stop()


def start_lbx(lbx, tmp_path: Path, etcd: Etcd, name: str = "lbx") -> LbxProcess:
    conf = tmp_path / f"{name}.yaml"
    conf.write_text(
        "plugins: [roundrobin, etcd]\nservices:\n  - listen: 127.0.0.1:0\n"
        f"    discovery: {{source: etcd, endpoints: ['{etcd.url}'], prefix: '{PREFIX}'}}\n"
    )
    return lbx("-c", str(conf))


def step_change(etcd: Etcd, addresses: dict[str, str], current: dict[str, int]):
    def change(step: dict[str, int]) -> None:
        puts = {
            PREFIX + name: f'{{"address":"{addresses[name]}","weight":{weight}}}'
            for name, weight in step.items()
            if current.get(name) != weight
        }
        etcd.transaction(puts, [PREFIX + name for name in current if name not in step])
        current.clear()
        current.update(step)

    return change


def test_twenty_changes_through_etcdctl_under_load(lbx, backends: BackendThread, tmp_path, etcd):
    """Add, remove, reweight, replace with etcdctl, 20 times, under load: no failed request, no
    request to a removed backend once lbx applied the change; watched, not polled."""
    addresses = {name: backends.start(name).address for name in NAMES}
    steps = churn_steps(NAMES, 20)
    current: dict[str, int] = {}
    change = step_change(etcd, addresses, current)
    change(steps[0])
    proc = start_lbx(lbx, tmp_path, etcd)
    logged = [len(proc.lines)]

    def applied() -> None:
        match = proc.wait_for(r"backends changed \(etcd\)", TIMEOUT, start=logged[0])
        logged[0] = proc.lines.index(match.string, logged[0]) + 1

    with ClientLoad(proc.address, clients=8, seconds=120) as load:
        report = churn(load, steps, change, applied)
    print(f"etcd watch: {report.summary(load)}")
    assert report.changes == 20 and load.errors == [] and load.ok > 0
    assert report.stale == []


def test_three_lbx_converge_on_a_change(lbx, backends, tmp_path, etcd):
    """Three lbx on the same prefix have the same set within one update period of a change
    made with etcdctl (their watch pushes it: measured, printed)."""
    addresses = {name: backends.start(name).address for name in NAMES[:4]}
    current: dict[str, int] = {}
    change = step_change(etcd, addresses, current)
    change({"b1": 1, "b2": 1})
    instances = [start_lbx(lbx, tmp_path, etcd, f"lbx{i}") for i in range(3)]
    worst: list[float] = []
    for step in ({"b1": 1, "b2": 1, "b3": 2}, {"b3": 2, "b4": 1}, {"b4": 1}):
        marks = [len(proc.lines) for proc in instances]
        started = time.monotonic()
        change(step)
        seen = []
        for proc, mark in zip(instances, marks, strict=True):
            line = proc.wait_for(
                r"backends changed \(etcd\): .* \((\d+) backends?\)", TIMEOUT, start=mark
            )
            assert int(line.group(1)) == len(step)
            seen.append(time.monotonic() - started)
        worst.append(max(seen))
    print(
        "etcd: 3 lbx converged after each change within "
        + ", ".join(f"{seconds * 1000:.0f} ms" for seconds in worst)
        + f" (update_frequency {60}s; the watch pushes every change)"
    )
    for proc in instances:
        assert sum("watch failed" in line for line in proc.lines) == 0


def test_a_bad_value_keeps_the_last_set(etcd):
    """One key that does not parse is reported with its name; the set stays as it was."""
    etcd.ctl("put", PREFIX + "good", "127.0.0.1:1")

    async def discover(source: EtcdDiscovery) -> list[str]:
        try:
            return [b.addr for b in (await source.discover()).backends]
        finally:
            await source.close()

    assert anyio.run(discover, EtcdDiscovery([etcd.url], PREFIX, 5)) == ["127.0.0.1:1"]
    etcd.ctl("put", PREFIX + "bad", '{"address": "127.0.0.1:2", "wieght": 2}')
    with pytest.raises(
        EtcdError, match=r"/lbx/web/bad: unknown key 'wieght'; did you mean 'weight'\?"
    ):
        anyio.run(discover, EtcdDiscovery([etcd.url], PREFIX, 5))
    unreachable = EtcdDiscovery([f"http://127.0.0.1:{free_port()}"], PREFIX, 1)
    with pytest.raises(EtcdError, match=r"127\.0\.0\.1"):
        anyio.run(discover, unreachable)


@pytest.mark.parametrize(
    "answer",
    [b"[]", b'{"kvs": [{"value": "MTI3LjAuMC4xOjE="}]}', b'{"kvs": [{"key": "not base64!"}]}'],
)
def test_an_answer_that_is_not_etcds_is_a_discovery_error(answer):
    """An endpoint that answers 200 with JSON lbx cannot read (a proxy, another service on the
    port) fails the update with ``EtcdError`` saying so, which lbx shows as it is."""

    class Answer(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: object) -> None: ...

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    source = EtcdDiscovery([f"http://127.0.0.1:{server.server_address[1]}"], PREFIX, 5)

    async def discover() -> None:
        try:
            await source.discover()
        finally:
            await source.close()

    try:
        with pytest.raises(EtcdError, match="a range answer lbx cannot read"):
            anyio.run(discover)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_values_and_prefix_ends():
    """Values are ip:port or JSON; the prefix's range ends where etcdctl's --prefix does."""
    assert parse_value("10.0.0.1:80") == ("10.0.0.1:80", 1, True)
    assert parse_value('{"address": "10.0.0.1:80", "weight": 3, "enabled": false}') == (
        "10.0.0.1:80", 3, False,
    )  # fmt: skip
    assert prefix_end(b"/lbx/web/") == b"/lbx/web0"
    assert prefix_end(b"a\xff") == b"b"
