"""The server: listeners, signals, graceful shutdown and bad requests, with real processes."""

from __future__ import annotations

import http.client
import signal
import socket

import pytest


def raw_request(address: str, data: bytes, family: int = socket.AF_INET) -> bytes:
    """Send raw bytes, read until the server closes; returns everything received."""
    sock = connect(address, family)
    with sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def connect(address: str, family: int = socket.AF_INET) -> socket.socket:
    if address.startswith("unix:"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        sock.connect(address[len("unix:") :])
        return sock
    host, port = address.rsplit(":", 1)
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(10)
    try:
        sock.connect((host.strip("[]"), int(port)))
    except OSError:
        sock.close()
        raise
    return sock


def read_response(sock: socket.socket) -> bytes:
    """Read one response with a Content-Length body from ``sock``."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk
        body += chunk
    return head + b"\r\n\r\n" + body


def test_sigterm_lets_in_flight_request_finish(lbx, backends):
    """SIGTERM during a 2-second request: it gets its 200, new connections are refused, exit 0."""
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
    idle = connect(proc.address)
    idle.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert read_response(idle).startswith(b"HTTP/1.1 200")
    mark = len(proc.lines)
    busy = connect(proc.address)
    busy.sendall(b"GET /sleep/2 HTTP/1.1\r\nHost: x\r\n\r\n")
    proc.wait_for("upstream peer is", start=mark)
    proc.send_signal(signal.SIGTERM)
    proc.wait_for("stopped accepting")
    with pytest.raises(ConnectionRefusedError):
        connect(proc.address)
    assert idle.recv(1) == b""  # the idle keep-alive connection was closed
    proc.send_signal(signal.SIGTERM)  # a repeated SIGTERM does not cut the drain short
    proc.wait_for("SIGTERM received while draining")
    response = read_response(busy)
    assert response.startswith(b"HTTP/1.1 200")
    assert b"slept" in response
    assert b"\r\nConnection: close\r\n" in response
    idle.close()
    busy.close()
    assert proc.wait() == 0


def test_sigint_stops_at_once(lbx, backends):
    """SIGINT cuts in-flight requests and exits without waiting for them."""
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
    busy = connect(proc.address)
    busy.sendall(b"GET /sleep/30 HTTP/1.1\r\nHost: x\r\n\r\n")
    proc.wait_for("upstream peer is")
    assert proc.stop(signal.SIGINT, timeout=10) == 0
    assert busy.recv(1) == b""
    busy.close()


def test_ipv6_and_unix_listeners(lbx, backends, tmp_path):
    """One service can listen on IPv4, IPv6 and a Unix socket at once."""
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError as exc:
        pytest.skip(f"cannot bind [::1]: {exc}")
    a = backends.start("a")
    path = tmp_path / "lbx.sock"
    proc = lbx(
        "--plugin",
        "roundrobin",
        "--listen",
        "127.0.0.1:0",
        "--listen",
        "[::1]:0",
        "--listen",
        f"unix:{path}",
        "--upstream",
        a.address,
    )
    v4, v6, unix = proc.addresses
    assert v6.startswith("[::1]:") and unix == f"unix:{path}"
    request = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    for address, family in ((v4, socket.AF_INET), (v6, socket.AF_INET6), (unix, 0)):
        assert raw_request(address, request, family).startswith(b"HTTP/1.1 200"), address
    assert proc.stop() == 0
    assert not path.exists()  # the socket file is removed on exit


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GARBAGE\r\n\r\n", b"400"),
        (b"GET / HTTP/1.1\r\n\r\n", b"400"),  # no Host
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", b"400"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n", b"400"),
        (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", b"400"),
        (b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", b"405"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: host\r\n\r\n", b"400"),
    ],
)
def test_bad_requests_get_4xx_and_process_survives(lbx, backends, request_bytes, status):
    """A malformed request gets the right 4xx, the connection closes, the next client is served."""
    a = backends.start("a")
    proc = lbx("--plugin", "roundrobin", "--listen", "127.0.0.1:0", "--upstream", a.address)
    answer = raw_request(proc.address, request_bytes)
    assert answer.startswith(b"HTTP/1.1 " + status), answer
    assert b"Connection: close" in answer
    ok = raw_request(proc.address, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert ok.startswith(b"HTTP/1.1 200")


def test_pipelined_requests_are_answered_in_order(lbx, backends):
    """Pipelined requests on one connection get their responses in order."""
    a = backends.start("a")
    proc = lbx("--plugin", "roundrobin", "--listen", "127.0.0.1:0", "--upstream", a.address)
    requests = b"".join(
        b"GET /sleep/0.%d HTTP/1.1\r\nHost: x\r\n\r\n" % (3 - i)
        if i < 3
        else b"GET /status/204 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        for i in range(4)
    )
    answer = raw_request(proc.address, requests)
    assert answer.count(b"HTTP/1.1 200") == 3
    assert answer.index(b"HTTP/1.1 204") > answer.rindex(b"HTTP/1.1 200")


def test_head_and_no_body_statuses(lbx, backends):
    """HEAD keeps the upstream's Content-Length but carries no body; 204 has no body either."""
    a = backends.start("a")
    proc = lbx("--plugin", "roundrobin", "--listen", "127.0.0.1:0", "--upstream", a.address)
    host, port = proc.address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    for _ in range(3):  # on one keep-alive connection: framing must stay right
        conn.request("HEAD", "/bytes/1000")
        response = conn.getresponse()
        assert response.status == 200 and response.headers["Content-Length"] == "1000"
        assert response.read() == b""
        conn.request("GET", "/status/204")
        response = conn.getresponse()
        assert response.status == 204 and response.read() == b""
        conn.request("GET", "/bytes/10")
        assert len(conn.getresponse().read()) == 10
    conn.close()
