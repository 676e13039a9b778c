"""The idle upstream pool follows the load (issue 18): connections that many clients needed at
once are kept for the next burst instead of being closed and opened again, and closed by the
sweeps once the load no longer needs them; in this process over in-memory transports
(``lbx.inprocess``), and with a real lbx."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml
from tests.http_helpers import Request, Upstream, UpstreamConn, exchange, ok

from lbx.inprocess import InProcessProxy, MemoryUpstreamConnection, UpstreamRequest
from lbx.testing import LbxProcess

BURST = 40


def burst(proxy: InProcessProxy) -> None:
    """``BURST`` clients at once: every request is held by the upstream until all arrived."""
    held: list[MemoryUpstreamConnection] = []

    def hold(conn: MemoryUpstreamConnection, request: UpstreamRequest) -> None:
        held.append(conn)

    answer, proxy.upstream.handler = proxy.upstream.handler, hold
    clients = [proxy.client() for _ in range(BURST)]
    for client in clients:
        client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert len(held) == BURST
    proxy.upstream.handler = answer
    for conn in held:
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    proxy.settle()
    for client in clients:
        assert client.read_response().status == 200
        client.close()


def test_a_burst_finds_the_connections_of_the_last_one():
    proxy = InProcessProxy(server={"upstream_keepalive_pool_size": 4})
    burst(proxy)
    pool = proxy.service.connector.pool
    assert len(pool) == BURST  # kept beyond the configured 4: the load needed them
    burst(proxy)
    assert len(proxy.upstream.conns) == BURST  # the second burst opened none
    assert proxy.errors == []
    proxy.close()


def test_without_a_peak_the_configured_size_bounds_the_pool():
    proxy = InProcessProxy(server={"upstream_keepalive_pool_size": 4})
    pool = proxy.service.connector.pool
    assert pool.bound == 4
    for _ in range(3):  # one client at a time: one connection, reused
        response, _ = proxy.exchange(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert response.status == 200
    assert len(proxy.upstream.conns) == 1 and len(pool) == 1
    proxy.close()


def test_size_zero_keeps_nothing():
    proxy = InProcessProxy(server={"upstream_keepalive_pool_size": 0})
    burst(proxy)
    assert len(proxy.service.connector.pool) == 0
    proxy.close()


def test_once_the_load_drops_the_sweeps_close_what_it_no_longer_needs():
    """A sweep keeps as many idle connections as were in use at once in its period (at least the
    configured size), the most recently used ones."""
    proxy = InProcessProxy(server={"upstream_keepalive_pool_size": 4})
    burst(proxy)
    pool = proxy.service.connector.pool
    proxy.call(pool.sweep)  # the end of the burst's period: all of it was in use
    assert len(pool) == BURST
    response, _ = proxy.exchange(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert response.status == 200
    proxy.call(pool.sweep)  # a period with one request at a time
    assert len(pool) == 4
    assert sum(not conn.closed for conn in proxy.upstream.conns) == 4
    burst(proxy)  # the 4 kept are found again, the rest is opened anew
    assert len(proxy.upstream.conns) == BURST + BURST - 4
    assert proxy.errors == []
    proxy.close()


def test_requests_still_in_use_do_not_hold_idle_connections_open():
    """Long requests in use at every sweep (tunnels, slow responses) are not counted as idle
    connections a returning load would need."""
    proxy = InProcessProxy(server={"upstream_keepalive_pool_size": 4})
    pool = proxy.service.connector.pool
    held: list[MemoryUpstreamConnection] = []
    answer, proxy.upstream.handler = proxy.upstream.handler, lambda conn, _: held.append(conn)
    long_clients = [proxy.client() for _ in range(10)]
    for client in long_clients:
        client.send(b"GET /long HTTP/1.1\r\nHost: x\r\n\r\n")
    proxy.settle()
    proxy.upstream.handler = answer
    burst(proxy)
    assert len(pool) == BURST
    for _ in range(3):
        proxy.call(pool.sweep)
        response, _ = proxy.exchange(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert response.status == 200
    assert len(pool) == 4  # not 4 + the 10 in use
    for conn in held:
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    proxy.settle()
    for client in long_clients:
        assert client.read_response().status == 200
    assert proxy.errors == []
    proxy.close()


def test_a_real_lbx_keeps_the_configured_size_once_a_burst_is_over(tmp_path: Path) -> None:
    """lbx with ``upstream_keepalive_pool_size: 2``: a burst of 10 clients opens 10 upstream
    connections; the sweeps then close all but the 2 most recently used (they are far from
    their ``idle_timeout``), and those 2 serve the next requests."""
    burst_size = 10
    everyone_arrived = threading.Barrier(burst_size, timeout=30)
    in_burst = threading.Event()
    in_burst.set()

    def answer_together(conn: UpstreamConn, request: Request) -> None:
        if in_burst.is_set():
            everyone_arrived.wait()  # the burst: every request holds a connection at once
        ok(conn, request)

    upstream = Upstream(answer_together)
    conf = tmp_path / "lbx.yaml"
    upstreams = {"upstreams": [upstream.address]}
    conf.write_text(
        yaml.safe_dump(
            {
                "version": 1,
                "upstream_keepalive_pool_size": 2,
                "plugins": ["roundrobin"],
                "services": [
                    {"name": "web", "listen": ["127.0.0.1:0"], "idle_timeout": 60, **upstreams},
                    # Its idle_timeout only makes the pool's sweep period short (0.5 s).
                    {"name": "tick", "listen": [f"unix:{tmp_path}/tick.sock"], "idle_timeout": 1}
                    | upstreams,
                ],
            }
        )
    )
    request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"

    def open_conns() -> int:
        return sum(not conn.closed_by_peer.is_set() for conn in upstream.conns)

    try:
        with LbxProcess("-c", str(conf)) as lbx:
            with ThreadPoolExecutor(burst_size) as pool:
                answers = list(pool.map(lambda _: exchange(lbx.address, request), range(10)))
            assert [response.status for response, _ in answers] == [200] * burst_size
            assert len(upstream.conns) == burst_size
            assert upstream.wait(lambda: open_conns() == 2, timeout=30), open_conns()
            in_burst.clear()  # one at a time from now on
            for _ in range(3):
                response, _ = exchange(lbx.address, request)
                assert response.status == 200
            assert len(upstream.conns) == burst_size  # served by the 2 kept
            assert open_conns() == 2
    finally:
        upstream.close()
