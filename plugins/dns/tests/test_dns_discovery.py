"""lbx-dns against a real DNS server (dnsmasq, started here on 127.0.0.1 with records the tests
change): A records and SRV records drive a service's backend set under load with no failed
request, and the records' TTL decides when lbx asks again."""

from __future__ import annotations

import asyncio
import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import anyio
import dns.resolver
import pytest

from lbx.testing import (
    BackendThread,
    ClientLoad,
    DemoBackend,
    LbxProcess,
    churn,
    churn_steps,
    http_get,
)
from lbx_dns import DnsDiscovery

TIMEOUT = 30.0
NAMES = [f"b{i}" for i in range(1, 7)]
DNSMASQ = shutil.which("dnsmasq") or (
    "/usr/sbin/dnsmasq" if os.path.exists("/usr/sbin/dnsmasq") else None
)
pytestmark = pytest.mark.skipif(
    DNSMASQ is None, reason="dnsmasq is not installed (Debian package dnsmasq-base)"
)


def free_udp_port() -> int:
    """A port free for both UDP and TCP (dnsmasq listens on both): from a TCP bind to port 0,
    which never hands out a port that a closed connection still holds (TIME_WAIT)."""
    while True:
        with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            tcp.bind(("127.0.0.1", 0))
            port = int(tcp.getsockname()[1])
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


class Dnsmasq:
    """dnsmasq on 127.0.0.1:<port>, authoritative for ``.test``: A records from a hosts file
    (re-read on SIGHUP), SRV records from its command line (changed by a restart)."""

    def __init__(self, directory: Path, ttl: int = 0, domains: tuple[str, ...] = ("test",)) -> None:
        self.domains = domains
        self.port = free_udp_port()
        self.hosts = directory / "hosts"
        self.hosts.write_text("")
        self.ttl = ttl
        self.srv: list[str] = []
        self.records: list[str] = []
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def nameserver(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start it and wait until it answers; a port still held by the previous one (a TCP
        connection it served in TIME_WAIT) is tried again until it is free."""
        deadline = time.monotonic() + TIMEOUT
        while not self._start():
            assert time.monotonic() < deadline, "dnsmasq cannot bind its port"
            time.sleep(0.05)  # the kernel frees the port by itself: nothing to wait on

    def _start(self) -> bool:
        assert DNSMASQ is not None
        self.proc = subprocess.Popen(
            [DNSMASQ, "--no-daemon", f"--port={self.port}", "--listen-address=127.0.0.1",
             "--bind-interfaces", "--no-resolv", "--no-hosts", f"--addn-hosts={self.hosts}",
             f"--local-ttl={self.ttl}", *(f"--local=/{d}/" for d in self.domains),
             "--conf-file=/dev/null",
             "--pid-file=", f"--user={getpass.getuser()}", "--cache-size=0",
             *(f"--srv-host={item}" for item in self.srv),
             *(f"--host-record={item}" for item in self.records)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers, resolver.port, resolver.lifetime = ["127.0.0.1"], self.port, 0.2
        deadline = time.monotonic() + TIMEOUT
        while True:  # answering: it asks nothing upstream, so NXDOMAIN for an unknown name
            try:
                resolver.resolve(f"probe.{self.domains[0]}", "A")
            except dns.resolver.NXDOMAIN:
                return True
            except dns.exception.DNSException:
                if self.proc.poll() is not None:
                    error = self.proc.stderr.read() if self.proc.stderr else b""
                    self.proc.stderr.close() if self.proc.stderr else None
                    self.proc = None
                    assert b"Address already in use" in error, error
                    return False
                assert time.monotonic() < deadline, "dnsmasq does not answer"

    def set_addresses(self, name: str, addresses: list[str]) -> None:
        temporary = self.hosts.with_suffix(".tmp")
        temporary.write_text("".join(f"{address} {name}\n" for address in addresses))
        os.replace(temporary, self.hosts)
        if self.proc is not None:
            self.proc.send_signal(signal.SIGHUP)  # re-reads the hosts file

    def set_srv(self, records: list[str]) -> None:
        """New SRV records (``name,target,port,priority,weight``): dnsmasq starts again."""
        self.stop()
        self.srv = records
        self.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(TIMEOUT)
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()
        self.proc = None


@pytest.fixture
def dnsmasq(tmp_path: Path):
    server = Dnsmasq(tmp_path)
    yield server
    server.stop()


def start_lbx(lbx, tmp_path: Path, discovery: str) -> LbxProcess:
    conf = tmp_path / "lbx.yaml"
    conf.write_text(
        "plugins: [roundrobin, dns]\nservices:\n  - listen: 127.0.0.1:0\n"
        f"    discovery: {{source: dns, {discovery}}}\n"
    )
    return lbx("-c", str(conf))


def applied_by(proc: LbxProcess):
    logged = [len(proc.lines)]

    def applied() -> None:
        match = proc.wait_for(r"backends changed \(dns\)", TIMEOUT, start=logged[0])
        logged[0] = proc.lines.index(match.string, logged[0]) + 1

    return applied


def test_a_records_drive_the_backend_set_under_load(
    lbx, backends: BackendThread, tmp_path, dnsmasq
):
    """20 changes of a name's A records (add, remove, replace): no failed request, no request to
    a removed address once lbx applied the change, new addresses get traffic."""
    probe = socket.socket()
    probe.bind(("127.0.0.11", 0))
    port = probe.getsockname()[1]
    probe.close()
    addresses = {name: f"127.0.0.{10 + index}" for index, name in enumerate(NAMES, start=1)}
    for name, host in addresses.items():
        backend = DemoBackend(name, host, port)
        asyncio.run_coroutine_threadsafe(backend.start(), backends.loop).result(TIMEOUT)
        backends.backends.append(backend)
    steps = churn_steps(NAMES, 20, kinds=("add", "remove", "replace"))
    dnsmasq.set_addresses("web.test", [addresses[n] for n in steps[0]])
    dnsmasq.start()
    proc = start_lbx(
        lbx, tmp_path,
        f"name: web.test, port: {port}, nameservers: ['{dnsmasq.nameserver}'], min_ttl: 0.2, "
        "update_frequency: 0.2, timeout: 0.5",
    )  # fmt: skip
    with ClientLoad(proc.address, clients=8, seconds=120) as load:
        report = churn(
            load,
            steps,
            lambda step: dnsmasq.set_addresses("web.test", [addresses[n] for n in step]),
            applied_by(proc),
        )
    print(f"dns A records (TTL 0, min_ttl 0.2s): {report.summary(load)}")
    assert report.changes == 20 and load.errors == [] and load.ok > 0
    assert report.stale == []


def test_srv_records_drive_the_backend_set_under_load(lbx, backends, tmp_path, dnsmasq):
    """20 changes of SRV records (add, remove, weight, replace), the DNS server restarted for
    each: no failed request; only the lowest priority is used, with the records' weights."""
    ports = {name: backends.start(name).port for name in NAMES}
    dnsmasq.records = [f"{name}.test,127.0.0.1" for name in NAMES]

    def records(step: dict[str, int]) -> list[str]:
        found = [f"_http._tcp.web.test,{n}.test,{ports[n]},10,{w}" for n, w in step.items()]
        spare = next(n for n in NAMES if n not in step)  # a backup: never used
        return [*found, f"_http._tcp.web.test,{spare}.test,{ports[spare]},20,1"]

    steps = churn_steps(NAMES, 20)
    dnsmasq.srv = records(steps[0])
    dnsmasq.start()
    proc = start_lbx(
        lbx, tmp_path,
        f"name: _http._tcp.web.test, record: srv, nameservers: ['{dnsmasq.nameserver}'], "
        "min_ttl: 0.2, update_frequency: 0.2, timeout: 0.5",
    )  # fmt: skip
    with ClientLoad(proc.address, clients=8, seconds=120) as load:
        report = churn(load, steps, lambda step: dnsmasq.set_srv(records(step)), applied_by(proc))
    print(f"dns SRV records (TTL 0, min_ttl 0.2s, server restarted): {report.summary(load)}")
    assert report.changes == 20 and load.errors == [] and load.ok > 0
    assert report.stale == []
    served = {http_get(proc.address).backend for _ in range(12)}
    assert served == set(steps[-1])  # the priority 20 record is a backup: never used


def test_the_ttl_decides_when_to_ask_again(tmp_path):
    """The refresh is the record's TTL, raised to min_ttl and lowered to max_ttl."""
    server = Dnsmasq(tmp_path, ttl=7)
    server.set_addresses("web.test", ["127.0.0.5"])
    server.start()
    try:
        for min_ttl, max_ttl, expected in ((0, 300, 7), (10, 300, 10), (0, 3, 3)):
            source = DnsDiscovery("web.test", "any", 80, [server.nameserver], min_ttl, max_ttl, 2.0)
            found = anyio.run(source.discover)
            assert [b.addr for b in found.backends] == ["127.0.0.5:80"]
            assert found.refresh == expected
        missing = DnsDiscovery("nothing.test", "a", 80, [server.nameserver], 0, 300, 2.0)
        with pytest.raises(LookupError, match=r"no address for nothing\.test"):
            anyio.run(missing.discover)
    finally:
        server.stop()
