"""Retries and failover (issue 6; Pingora's semantics with nginx's defaults; docs/http.md)."""

from __future__ import annotations

import socket

import pytest
from tests.http_helpers import Upstream, write_conf
from tests.over_both import ask

pytestmark = pytest.mark.over_both  # the same retries for HTTP/2 streams


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_connect_failure_goes_to_another_backend(lbx, tmp_path):
    """A refused connection is retried on another backend (never the same one again)."""
    live = Upstream()
    try:
        dead = [f"127.0.0.1:{free_port()}" for _ in range(3)]
        proc = lbx("-c", write_conf(tmp_path, [*dead, live.address]))
        for _ in range(8):
            assert ask(proc.address, "POST", "/", b"x").status == 200
        assert len(live.requests) == 8  # a POST too: nothing had been sent
    finally:
        live.close()


def test_max_retries_bounds_attempts(lbx, tmp_path):
    dead = [f"127.0.0.1:{free_port()}" for _ in range(4)]
    proc = lbx("-c", write_conf(tmp_path, dead, server_max_retries=2))
    assert ask(proc.address, "GET").status == 502
    proc.wait_for(r"Fail to proxy: .*status: 502, tries: 2, retry: false")
    assert sum("retry: true" in line for line in proc.lines) == 1


def test_all_backends_tried_then_502(lbx, tmp_path):
    """With fewer backends than max_retries, each is tried once, then the last error is answered."""
    dead = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    proc = lbx("-c", write_conf(tmp_path, dead))
    assert ask(proc.address, "GET").status == 502
    proc.wait_for(r"status: 502, tries: 3, retry: false")
    assert sum("retry: true" in line for line in proc.lines) == 2


def stale_second_request(conn, request):
    """Answers the first request of a connection; closes on the second (a stale pooled one)."""
    if len(conn.requests) == 1:
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    else:
        conn.close()


def test_idempotent_request_retried_once_on_stale_pooled_connection(lbx, tmp_path):
    upstream = Upstream(stale_second_request)
    try:
        proc = lbx("-c", write_conf(tmp_path, [upstream.address]))
        assert ask(proc.address, "GET").status == 200
        assert ask(proc.address, "DELETE", "/again").status == 200
        sent = [r for r in upstream.requests if r.method == b"DELETE"]
        assert len(sent) == 2 and len(upstream.conns) == 2  # once on the stale one, once fresh
    finally:
        upstream.close()


def test_post_is_never_retried_once_it_may_have_reached_the_backend(lbx, tmp_path):
    upstream = Upstream(stale_second_request)
    try:
        proc = lbx("-c", write_conf(tmp_path, [upstream.address]))
        assert ask(proc.address, "GET").status == 200
        assert ask(proc.address, "POST", "/pay", b"z").status == 502
        assert [r.method for r in upstream.requests].count(b"POST") == 1
    finally:
        upstream.close()


def test_no_retry_after_response_bytes(lbx, tmp_path):
    """A reused connection that sent part of a head and closed: not retried (bytes came back)."""

    def partial_on_second(conn, request):
        if len(conn.requests) == 1:
            conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        else:
            conn.send(b"HTTP/1.1 200 O")
            conn.close()

    upstream = Upstream(partial_on_second)
    try:
        proc = lbx("-c", write_conf(tmp_path, [upstream.address]))
        assert ask(proc.address, "GET").status == 200
        assert ask(proc.address, "GET", "/two").status == 502
        assert [r.target for r in upstream.requests].count(b"/two") == 1
    finally:
        upstream.close()
