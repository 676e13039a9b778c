"""Every per-request hook phase, end to end, over HTTP/1.1 and over HTTP/2 (issue 19).

``tests/plugins/every_phase.py`` has one impl of each per-request hook, written as for HTTP/1.1;
each test runs it in a real lbx in front of real backends, asks as an HTTP/1.1 client, then
(``over_both``) as an HTTP/2 one, and checks the same answers and the same phases, in order, in
the line its ``logging`` impl writes. Only the version the hooks see differs.
"""

from __future__ import annotations

import hashlib
import json
import socket
from pathlib import Path

import pytest
from tests.http_helpers import Upstream
from tests.over_both import ask, get

from lbx.testing import BackendThread

pytestmark = pytest.mark.over_both

HOOKS = str(Path(__file__).parent / "plugins" / "every_phase.py")

PROXIED = [
    "early_request_filter",
    "request_filter",
    "proxy_upstream_filter",
    "upstream_peer",
    "connected_to_upstream",
    "upstream_request_filter",
]
ANSWERED = ["upstream_response_filter", "response_filter", "response_body_filter", "logging"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(lbx, upstream: str):
    return lbx(
        "--plugin",
        "roundrobin",
        "--plugin",
        HOOKS,
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        upstream,
    )


def logged(proc, method: str, uri: str, version: str) -> tuple[str, str, int, list[str], str]:
    """What ``logging`` wrote for that request: status, body bytes, phases and error."""
    match = proc.wait_for(
        rf"logged {method} {uri} HTTP/{version} (\S+) (\d+) phases=(\S+) error=(\S+)"
    )
    status, sent, phases, error = match.groups()
    return status, int(sent), phases.split(","), error


def test_a_proxied_request_goes_through_every_phase(lbx, backends: BackendThread):
    """A POST: the heads and the body are filtered on the way up and back, in phase order."""
    a = backends.start("a")
    proc = start(lbx, a.address)
    answer = ask(proc.address, "POST", "/echo", b"hello", {"Content-Type": "text/plain"})
    assert answer.status == 200
    echo = json.loads(answer.body)
    assert echo["body_size"] == 5
    assert echo["body_sha256"] == hashlib.sha256(b"HELLO").hexdigest()  # request_body_filter
    sent = {name.lower(): value for name, value in echo["headers"]}
    assert sent["x-connection"] == "new"
    assert sent["x-client-version"] == answer.http_version
    assert answer.headers["X-Upstream-Status"] == "200"
    assert answer.headers["X-Upstream"] == a.address
    status, body_bytes, phases, error = logged(proc, "POST", "/echo", answer.http_version)
    assert (status, body_bytes, error) == ("200", len(answer.body), "None")
    assert phases == [*PROXIED, "request_body_filter", *ANSWERED]


def test_request_filter_answers_itself(lbx, backends: BackendThread):
    proc = start(lbx, backends.start("a").address)
    answer = get(proc.address, "/lbx-health")
    assert (answer.status, answer.body) == (200, b"ok\n")
    assert answer.headers["Content-Type"] == "text/plain"
    status, _, phases, error = logged(proc, "GET", "/lbx-health", answer.http_version)
    assert (status, error) == ("200", "None")
    assert phases == ["early_request_filter", "request_filter", "logging"]


def test_early_request_filter_and_proxy_upstream_filter_refuse(lbx, backends: BackendThread):
    """A ProxyError raised early is answered through fail_to_proxy; a request not proxied is
    answered by proxy_upstream_filter's own response."""
    proc = start(lbx, backends.start("a").address)
    early = get(proc.address, "/%65arly")
    assert early.status == 403
    status, _, phases, _ = logged(proc, "GET", "/%65arly", early.http_version)
    assert status == "403"
    assert phases == ["early_request_filter", "fail_to_proxy", "logging"]
    refused = ask(proc.address, "DELETE", "/thing")
    assert (refused.status, refused.body) == (405, b"read-only\n")
    assert refused.headers["Allow"] == "GET, HEAD, POST"
    status, _, phases, _ = logged(proc, "DELETE", "/thing", refused.http_version)
    assert status == "405"
    assert phases == ["early_request_filter", "request_filter", "proxy_upstream_filter", "logging"]


def test_fail_to_connect_then_fail_to_proxy_answers(lbx):
    """A refused connection: fail_to_connect; upstream_peer is asked again for the retry (no
    other backend: the last error stands); fail_to_proxy writes its own 503."""
    dead = f"127.0.0.1:{free_port()}"
    proc = start(lbx, dead)
    answer = get(proc.address, "/")
    assert (answer.status, answer.body) == (503, b"try again later\n")
    assert answer.headers["Retry-After"] == "5"
    proc.wait_for(rf"fail_to_connect: {dead} ConnectRefused")
    status, _, phases, error = logged(proc, "GET", "/", answer.http_version)
    assert (status, error) == ("503", "ConnectRefused")
    assert phases == [
        "early_request_filter",
        "request_filter",
        "proxy_upstream_filter",
        "upstream_peer",
        "fail_to_connect",
        "upstream_peer",
        "fail_to_proxy",
        "logging",
    ]


def test_error_while_proxy_then_fail_to_proxy_answers(lbx):
    """An upstream that closes without answering: error_while_proxy, then fail_to_proxy."""
    upstream = Upstream(lambda conn, request: conn.close())
    try:
        proc = start(lbx, upstream.address)
        answer = get(proc.address, "/closed")
        assert (answer.status, answer.body) == (503, b"try again later\n")
        proc.wait_for(rf"error_while_proxy: {upstream.address} reused=False")
        status, _, phases, _ = logged(proc, "GET", "/closed", answer.http_version)
        assert status == "503"
        assert phases == [*PROXIED, "error_while_proxy", "fail_to_proxy", "logging"]
    finally:
        upstream.close()
