"""Reload (issue 17): SIGHUP re-reads the config file and applies it without closing a
connection, in one process and with worker processes: 20 reloads under load fail no request,
each class of setting takes effect, and a broken file is refused while traffic goes on."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from tests.test_notify import NotifySocket

from lbx.testing import BackendThread, ClientLoad, LbxProcess, http_get
from lbx_status.commands import Endpoint

TIMEOUT = 30.0


def lbx_command(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lbx", *args], capture_output=True, text=True, timeout=TIMEOUT
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Site:
    """The config file a test rewrites, and what to check after each reload."""

    def __init__(self, tmp_path: Path, backends: BackendThread, threads: int) -> None:
        self.dir = tmp_path
        self.threads = threads
        self.a, self.b, self.c = (backends.start(n).address for n in ("a", "b", "c"))
        self.port = free_port()
        self.extra_port = free_port()
        self.dead = f"127.0.0.1:{free_port()}"  # nothing listens there
        self.sock = tmp_path / "status.sock"
        self.path = tmp_path / "lbx.yaml"

    def write(self, kind: int) -> None:
        """One of five configurations, each differing in one class of setting from the base."""
        upstreams = [self.a, self.b]
        service = ""
        listen = [f"127.0.0.1:{self.port}"]
        log_format = "combined"
        if kind == 1:  # backends and weights
            upstreams = [self.c]
            service += "    selection_options: {}\n"
        elif kind == 2:  # health-check settings
            upstreams = [self.a, self.b, self.dead]
            service += "    health_check: {type: tcp, frequency: 0.5}\n"
        elif kind == 3:  # limits and timeouts
            service += "    max_header_size: 200\n    read_timeout: 5\n"
        elif kind == 4:  # a listener added; the access log's format (a plugin's options)
            listen.append(f"127.0.0.1:{self.extra_port}")
            log_format = "json"
        weights = "".join(
            f"      - {{address: {address}, weight: {3 if kind == 1 else 1}}}\n"
            for address in upstreams
        )
        self.path.write_text(
            f"threads: {self.threads}\n"
            "plugins: [roundrobin, status, accesslog, healthcheck]\n"
            f"status: {{listen: 'unix:{self.sock}'}}\n"
            f"accesslog: {{path: {self.dir / 'access.log'}, format: {log_format}, "
            "flush_interval: 0}\n"
            f"services:\n  - name: web\n    listen: [{', '.join(listen)}]\n{service}"
            f"    upstreams:\n{weights}"
        )

    def status(self) -> dict[str, object]:
        """What ``lbx status --json`` prints (its client, in this process)."""
        return Endpoint(f"unix:{self.sock}").status()

    def check(self, kind: int) -> None:
        """The settings of configuration ``kind`` are the ones in force."""
        address = f"127.0.0.1:{self.port}"
        service = self.status()["services"][0]  # type: ignore[index]
        backends = {b["addr"]: b for b in service["backends"]}
        served = {http_get(address).backend for _ in range(6)}
        big = http_get(address, headers={"X-Big": "x" * 300}).status
        if kind == 1:
            assert served == {"c"} and {a: b["weight"] for a, b in backends.items()} == {self.c: 3}
        else:
            assert served and served <= {"a", "b"}, served  # the load moves round robin too
        if kind == 2:
            assert not backends[self.dead]["ready"] and "tcp check" in backends[self.dead]["reason"]
        assert big == (431 if kind == 3 else 200)
        try:
            reply = http_get(f"127.0.0.1:{self.extra_port}")
            extra = reply.status
        except OSError:
            extra = None
        assert extra == (200 if kind == 4 else None)
        last = (self.dir / "access.log").read_text().splitlines()[-1]
        assert last.startswith("{") == (kind == 4), last


def port_of(address: str) -> int:
    return int(address.rpartition(":")[2])


def reload_and_wait(proc: LbxProcess, site: Site) -> None:
    mark = len(proc.lines)
    proc.send_signal(signal.SIGHUP)
    done = proc.wait_for(r"configuration reloaded|reload refused", TIMEOUT, start=mark)
    assert "reload refused" not in done.string, done.string
    if site.threads > 1:  # the previous workers are gone: every connection is the new one's
        gone = r"worker \d \(pid \d+\) of the previous configuration exited"
        for _ in range(site.threads):
            mark = proc.lines.index(proc.wait_for(gone, TIMEOUT, start=mark).string, mark) + 1


@pytest.mark.parametrize("threads", [1, 2])
def test_twenty_reloads_under_load_fail_no_request(lbx, backends, tmp_path, threads):
    """20 SIGHUPs, each with a changed file, under load: no failed request, and backends,
    weights, health-check settings, limits, listeners and plugin options take effect."""
    site = Site(tmp_path, backends, threads)
    site.write(0)
    proc = lbx("-c", str(site.path))
    kinds = [1, 0, 2, 0, 3, 0, 4, 0] * 3
    with ClientLoad(proc.address, clients=4, seconds=300) as load:
        for kind in kinds[:20]:
            site.write(kind)
            mark = len(proc.lines)
            reload_and_wait(proc, site)
            site.check(kind)
            if kind == 1:  # what the reload changed in the backends, said once
                gone = ", ".join(f"-{a}" for a in sorted((site.a, site.b), key=port_of))
                said = f"backends changed (reload): +{site.c}, {gone} (1 backend)"
                assert sum(said in line for line in proc.lines[mark:]) == 1, proc.lines[mark:]
            checks_on = "service web: tcp health checks every 0.5s: 2 of 3 backends healthy"
            said_checks = sum(checks_on in line for line in proc.lines[mark:])
            assert said_checks == (kind == 2), proc.lines[mark:]  # a reload that turns them on
    print(f"threads: {threads}: 20 reloads, {load.ok} requests ok, {len(load.errors)} failed")
    assert load.errors == [] and load.ok > 0, "\n".join([*load.errors, proc.output[-6000:]])
    assert proc.output.count("configuration reloaded") == 20


def test_a_broken_file_is_refused_and_traffic_goes_on(lbx, backends, tmp_path):
    """A file that does not validate: one line with file:line in the log, the running
    configuration stays, no request fails; a good file is applied again after it."""
    site = Site(tmp_path, backends, 1)
    site.write(0)
    notify = NotifySocket(str(tmp_path / "notify.sock"))
    proc = lbx("-c", str(site.path), env={"NOTIFY_SOCKET": notify.address})
    assert notify.receive()[1] == ["READY=1"]
    with ClientLoad(proc.address, clients=4, seconds=60) as load:
        site.path.write_text(
            site.path.read_text().replace("max_header_size", "x") + "    read_timeout: soon\n"
        )
        mark = len(proc.lines)
        proc.send_signal(signal.SIGHUP)
        refused = proc.wait_for(
            r"reload refused, the running configuration stays: (.*)", TIMEOUT, start=mark
        )
        assert refused.group(1).startswith(f"{site.path}:") and "read_timeout" in refused.group(1)
        assert notify.receive()[1][0] == "RELOADING=1" and notify.receive()[1] == ["READY=1"]
        site.check(0)
        site.write(1)
        reload_and_wait(proc, site)
        site.check(1)
    notify.close()
    assert load.errors == [] and load.ok > 0, "\n".join([*load.errors, proc.output[-6000:]])


@pytest.mark.parametrize("threads", [1, 2])
def test_a_refused_reload_leaves_the_unix_socket_file_in_place(lbx, backends, tmp_path, threads):
    """A reload that cannot bind a new address changes nothing, including the Unix socket file
    of an address that stays: the running configuration still serves there (the refused one
    used to remove it on the way out)."""
    a = backends.start("a")
    unix = tmp_path / "lbx.sock"
    conf = tmp_path / "lbx.yaml"

    def write(*listen: str) -> None:
        conf.write_text(
            f"threads: {threads}\nplugins: [roundrobin]\nservices:\n"
            f"  - listen: {[f'unix:{unix}', *listen]}\n    upstreams: ['{a.address}']\n"
        )

    write("127.0.0.1:0")
    proc = lbx("-c", str(conf))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        write("127.0.0.1:0", f"127.0.0.1:{busy.getsockname()[1]}")
        mark = len(proc.lines)
        proc.send_signal(signal.SIGHUP)
        proc.wait_for(r"reload (refused|failed), the running configuration stays", TIMEOUT, mark)
    assert unix.exists()
    with socket.socket(socket.AF_UNIX) as client:
        client.settimeout(TIMEOUT)
        client.connect(str(unix))
        client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert client.recv(65536).startswith(b"HTTP/1.1 200 ")


def test_lbx_reload_signals_the_pid_in_pid_file(lbx, backends, tmp_path):
    """``lbx reload -c conf.yaml`` sends SIGHUP to the pid its pid_file names."""
    site = Site(tmp_path, backends, 1)
    site.write(0)
    pid_file = tmp_path / "lbx.pid"
    site.path.write_text(f"pid_file: {pid_file}\n" + site.path.read_text())
    proc = lbx("-c", str(site.path))
    pid_file.write_text(f"{proc.pid}\n")  # what -d writes
    mark = len(proc.lines)
    result = lbx_command("reload", "-c", str(site.path))
    assert result.returncode == 0 and f"pid {proc.pid}" in result.stdout, result.stderr
    proc.wait_for("configuration reloaded", TIMEOUT, start=mark)
    # A file the running lbx would refuse: not sent, the error says where (as serve -t does).
    good = site.path.read_text()
    site.path.write_text(good.replace("services:", "read_timout: 5\nservices:", 1))
    mark = len(proc.lines)
    typo = lbx_command("reload", "-c", str(site.path))
    line = good.split("services:")[0].count("\n") + 1
    assert typo.returncode == 2, typo
    assert typo.stderr.startswith(f"lbx: error: {site.path}:{line}: read_timout: unknown key")
    assert typo.stderr.endswith("; not reloaded\n") and typo.stderr.count("\n") == 1
    site.path.write_text(good)
    assert lbx_command("reload", "-c", str(site.path)).returncode == 0
    proc.wait_for("configuration reloaded", TIMEOUT, start=mark)
    assert not [text for text in proc.lines[mark:] if "refused" in text]
    assert sum("configuration reloaded" in text for text in proc.lines[mark:]) == 1
    os.unlink(pid_file)
    missing = lbx_command("reload", "--pid-file", str(pid_file))
    assert missing.returncode == 1 and "cannot signal" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    for junk in ("junk", "0", "²", "99999999999999999999999"):  # 0: this command's own group
        pid_file.write_text(f"{junk}\n")
        refused = lbx_command("reload", "--pid-file", str(pid_file))
        assert (refused.returncode, refused.stderr) == (
            1,
            f"lbx: error: cannot signal the lbx of {pid_file}: it holds {junk!r}, not a pid\n",
        )
    directory = lbx_command("serve", "-c", str(tmp_path))
    assert (directory.returncode, directory.stderr) == (
        2,
        f"lbx: error: {tmp_path}: cannot read config: Is a directory\n",
    )


def test_a_reload_changes_what_a_known_clients_next_connection_forwards(lbx, tmp_path):
    """What lbx keeps per client IP (its trust, its forwarding fields) starts over with the new
    configuration: a client already seen gets the reloaded forwarding settings on its next
    connection."""
    from tests.http_helpers import Upstream, exchange

    upstream = Upstream()
    conf = tmp_path / "lbx.yaml"
    port = free_port()

    def write(forwarding: str) -> None:
        conf.write_text(
            f"plugins: [roundrobin]\nservices:\n  - name: web\n    listen: ['127.0.0.1:{port}']\n"
            f"    upstreams: ['{upstream.address}']\n    x_forwarded_for: {forwarding}\n"
        )

    try:
        write("append")
        proc = lbx("-c", str(conf))
        assert exchange(proc.address, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")[0].status == 200
        write("off")
        mark = len(proc.lines)
        proc.send_signal(signal.SIGHUP)
        done = proc.wait_for(r"configuration reloaded|reload refused", TIMEOUT, start=mark)
        assert "reload refused" not in done.string, done.string
        assert exchange(proc.address, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")[0].status == 200
        first, second = upstream.wait_requests(2)
        assert (first.get("X-Forwarded-For"), second.get("X-Forwarded-For")) == (b"127.0.0.1", None)
    finally:
        upstream.close()
