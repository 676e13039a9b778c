"""The quick start, end to end: real lbx processes in front of real local backends."""

from __future__ import annotations

import http.client
import itertools
import json
import socket
from pathlib import Path

import pytest
from tests.over_both import get

PLUGINS = Path(__file__).parent / "plugins"


def free_port() -> int:
    """A port nothing listens on (bound, then released; connections to it are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.over_both
def test_round_robin_alternates_exactly(lbx, backends):
    """100 requests over two upstreams split exactly 50/50, strictly alternating."""
    a, b = backends.start("a"), backends.start("b")
    proc = lbx(
        "--plugin",
        "roundrobin",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        a.address,
        "--upstream",
        b.address,
    )
    host, port = proc.address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    seen = []
    for index in range(100):
        # Half on one keep-alive connection, half on a new connection each.
        status, headers, _body = get(proc.address, "/", conn if index % 2 else None)
        assert status == 200
        seen.append(headers["X-Backend"])
    conn.close()
    assert seen.count("a") == 50 and seen.count("b") == 50
    assert all(x != y for x, y in itertools.pairwise(seen)), seen


@pytest.mark.over_both
def test_broken_upstream_fails_one_in_three_with_502(lbx, backends, tmp_path):
    """With ``max_retries: 1`` (Pingora's behaviour: connect failures not retried) and a third
    upstream that refuses connections, exactly one request in three gets 502."""
    a, b = backends.start("a"), backends.start("b")
    dead = f"127.0.0.1:{free_port()}"
    conf = tmp_path / "conf.yaml"
    conf.write_text("version: 1\nmax_retries: 1\n")
    proc = lbx(
        "-c",
        str(conf),
        "--plugin",
        "roundrobin",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        a.address,
        "--upstream",
        b.address,
        "--upstream",
        dead,
    )
    statuses = [get(proc.address)[0] for _ in range(99)]
    assert statuses.count(502) == 33, statuses
    assert statuses.count(200) == 66
    for index, status in enumerate(statuses):
        if status == 502:
            assert statuses[(index + 1) % len(statuses)] == 200  # the next request is fine
    status, _headers, body = get(proc.address)
    assert (status, body) in (
        (200, b"Hello from backend a\n"),
        (200, b"Hello from backend b\n"),
        (502, b""),
    )


@pytest.mark.over_both
def test_default_retries_connect_failures_on_another_backend(lbx, backends):
    """By default (nginx's): a refused connection goes to the next backend, so one dead upstream
    out of three costs no 502 at all."""
    a, b = backends.start("a"), backends.start("b")
    dead = f"127.0.0.1:{free_port()}"
    proc = lbx(
        "--plugin",
        "roundrobin",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        a.address,
        "--upstream",
        b.address,
        "--upstream",
        dead,
    )
    answers = [get(proc.address) for _ in range(99)]
    assert [status for status, _, _ in answers] == [200] * 99
    assert {headers["X-Backend"] for _, headers, _ in answers} == {"a", "b"}
    proc.wait_for(r"Fail to proxy: .*refused.*tries: 1, retry: true")


@pytest.mark.over_both
def test_502_is_pingoras_error_response(lbx):
    """A refused upstream gets 502 with an empty body and Cache-Control: private, no-store."""
    proc = lbx(
        "--plugin",
        "roundrobin",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        f"127.0.0.1:{free_port()}",
    )
    status, headers, body = get(proc.address)
    assert status == 502
    assert body == b""
    assert headers["Content-Length"] == "0"
    assert headers["Cache-Control"] == "private, no-store"
    assert "refused" in proc.wait_for(r"Fail to proxy: .*status: 502").group(0)


@pytest.mark.over_both
def test_host_header_hook_sync_and_async(lbx, backends):
    """A hook module setting Host in upstream_request_filter works as def and as async def."""
    a = backends.start("a")
    for module, expected in (("host_sync.py", "sync.example"), ("host_async.py", "async.example")):
        proc = lbx(
            "--plugin",
            "roundrobin",
            "--plugin",
            str(PLUGINS / module),
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            a.address,
        )
        status, _, body = get(proc.address, "/echo")
        assert status == 200
        seen = dict((k.lower(), v) for k, v in json.loads(body)["headers"])
        assert seen["host"] == expected
        proc.stop()


@pytest.mark.over_both
def test_contrib_host_header_module(lbx, backends):
    """contrib/host_header.py, the quick start's hook, sets the Host the backend sees."""
    a = backends.start("a")
    proc = lbx(
        "--plugin",
        "roundrobin",
        "--plugin",
        "contrib/host_header.py",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        a.address,
    )
    seen = dict((k.lower(), v) for k, v in json.loads(get(proc.address, "/echo")[2])["headers"])
    assert seen["host"] == "one.one.one.one"


@pytest.mark.over_both
def test_upstream_peer_returning_none_defers_to_round_robin(lbx, backends):
    """An upstream_peer impl that returns None for some paths lets round robin decide those."""
    a, b, pinned = backends.start("a"), backends.start("b"), backends.start("pinned")
    proc = lbx(
        "--plugin",
        "roundrobin",
        "--plugin",
        str(PLUGINS / "pin_peer.py"),
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        a.address,
        "--upstream",
        b.address,
        env={"LBX_TEST_PIN": pinned.address},
    )
    pinned_seen = {get(proc.address, f"/pinned/{i}")[1]["X-Backend"] for i in range(6)}
    others = [get(proc.address, "/x")[1]["X-Backend"] for _ in range(6)]
    assert pinned_seen == {"pinned"}
    assert sorted(others) == ["a", "a", "a", "b", "b", "b"]


def test_forwarding_headers(lbx, backends):
    """X-Forwarded-For is appended and hop-by-hop fields never reach the upstream."""
    a = backends.start("a")
    proc = lbx("--plugin", "roundrobin", "--listen", "127.0.0.1:0", "--upstream", a.address)
    host, port = proc.address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request(
        "GET",
        "/echo",
        headers={
            "X-Forwarded-For": "203.0.113.7",
            "Connection": "keep-alive, X-Secret",
            "X-Secret": "hop",
            "Keep-Alive": "timeout=5",
            "Proxy-Authorization": "Basic eA==",
            "TE": "trailers",
            "X-Kept": "yes",
        },
    )
    seen = json.loads(conn.getresponse().read())["headers"]
    conn.close()
    names = [k.lower() for k, _ in seen]
    assert ("X-Forwarded-For", "203.0.113.7, 127.0.0.1") in [tuple(h) for h in seen]
    for hop in ("connection", "x-secret", "keep-alive", "proxy-authorization", "te"):
        assert hop not in names
    assert "x-kept" in names


@pytest.mark.over_both
def test_debug_log_names_the_upstream_peer(lbx, backends):
    """At LBX_LOG=debug each request logs the chosen upstream, as the quick start's output does."""
    a = backends.start("a")
    proc = lbx(
        "--plugin",
        "roundrobin",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        a.address,
        env={"LBX_LOG": "debug"},
    )
    get(proc.address)
    proc.wait_for(rf"upstream peer is: Backend {{ addr: {a.address}, weight: 1 }}")
