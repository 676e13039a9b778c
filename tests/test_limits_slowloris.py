"""Slowloris: 500 connections that send a header byte every 2 seconds do not starve normal clients,
and lbx's memory stays bounded; header_timeout cuts each of them (they reconnect at once)."""

from __future__ import annotations

import socket
import threading
import time

from tests.http_helpers import Upstream, exchange, write_conf

from lbx.testing import LbxProcess

ATTACKERS = 500
DURATION = 12.0
DRIP_INTERVAL = 2.0
RSS_BUDGET_KIB = 64 * 1024
CLOSE = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


class Slowloris:
    def __init__(self, address: str) -> None:
        host, port = address.rsplit(":", 1)
        self.target = (host, int(port))
        self.socks: list[socket.socket] = []
        self.reconnects = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def open_one(self) -> socket.socket:
        sock = socket.create_connection(self.target, timeout=5)
        sock.setblocking(False)
        sock.send(b"GET / HTTP/1.1\r\nHost: x\r\n")
        return sock

    def run(self) -> None:
        self.socks = [self.open_one() for _ in range(ATTACKERS)]
        while not self.stop.wait(DRIP_INTERVAL):
            for index, sock in enumerate(self.socks):
                try:
                    if sock.recv(4096) == b"":
                        raise ConnectionError
                except BlockingIOError:
                    pass
                except OSError:
                    sock.close()
                    self.socks[index] = self.open_one()
                    self.reconnects += 1
                    continue
                try:
                    sock.send(b"X")
                except OSError:
                    sock.close()
                    self.socks[index] = self.open_one()
                    self.reconnects += 1

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        for sock in self.socks:
            sock.close()


def test_slowloris_does_not_starve_clients(tmp_path):
    upstream = Upstream()
    conf = write_conf(tmp_path, [upstream.address], header_timeout=5)
    try:
        with LbxProcess("-c", conf) as proc:
            for _ in range(50):  # warm-up
                assert exchange(proc.address, CLOSE)[0].status == 200
            rss_before = proc.rss_kib()
            attack = Slowloris(proc.address)
            attack.thread.start()
            time.sleep(1.0)
            latencies = []
            started = time.monotonic()
            try:
                while time.monotonic() - started < DURATION:
                    begin = time.monotonic()
                    response, _ = exchange(proc.address, CLOSE)
                    latencies.append(time.monotonic() - begin)
                    assert response.status == 200
                    time.sleep(0.02)
                rss_during = proc.rss_kib()
                peak = proc.rss_kib("VmHWM")
            finally:
                attack.close()
            latencies.sort()
            p99 = latencies[int(len(latencies) * 0.99) - 1]
            print(
                f"\nslowloris: {ATTACKERS} connections dripping a byte every {DRIP_INTERVAL}s for "
                f"{DURATION}s; {attack.reconnects} reconnects after header_timeout; "
                f"{len(latencies)} normal requests all 200, p50 "
                f"{latencies[len(latencies) // 2] * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, max "
                f"{latencies[-1] * 1000:.1f} ms; lbx RSS {rss_before} KiB before, {rss_during} KiB "
                f"during, peak {peak} KiB (growth {rss_during - rss_before} KiB)"
            )
            assert p99 < 0.5
            assert rss_during - rss_before < RSS_BUDGET_KIB
            assert attack.reconnects >= ATTACKERS  # every attacker was cut at least once
    finally:
        upstream.close()
