"""HTTP/2 to upstreams: a real lbx in front of real HTTP/2 backends (``tests/h2_backend.py``,
h2c prior knowledge and TLS with ALPN), from HTTP/1.1 and HTTP/2 clients (curl, httpx, h2load).

One lbx process with one service per case serves the module: streams multiplexed on one
upstream connection, the RFC 9113 header rules on the way, trailers, resets both ways, the
fallback to HTTP/1.1 when the backend refuses HTTP/2 (preface or ALPN), PING keep-alive, 100 MiB
each way in flat memory, a client that stops reading (the backend's window closes).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trustme
import yaml
from h2.errors import ErrorCodes
from tests.h2_backend import H2Backend, run_in, start_h2_backend, stop_h2_backend
from tests.h2_helpers import H2Client
from tests.test_http2 import (
    SIZE,
    TIMEOUT,
    curl,
    expected_sha256,
    h2load_all_answered,
    tool,
    wait_until,
)

from lbx.testing import _PATTERN, BackendThread, DemoBackend, LbxProcess, http_get

RSS_BUDGET_KIB = 30 * 1024
SERVER_NAME = "backend.test"
PROXY_NAME = "lbx.test"


@dataclass
class Setup:
    process: LbxProcess
    thread: BackendThread
    h2: H2Backend
    h2_tls: H2Backend
    h1: DemoBackend
    h1_tls: DemoBackend
    addresses: dict[str, str]
    ca: trustme.CA
    warm_hwm_kib: int

    def check_memory(self, label: str) -> None:
        hwm = self.process.rss_kib("VmHWM")
        message = f"lbx VmHWM after warm-up {self.warm_hwm_kib} KiB, after {label} {hwm} KiB"
        print(message)
        assert hwm - self.warm_hwm_kib < RSS_BUDGET_KIB, message

    def counted(self, backend: H2Backend, name: str) -> int:
        return int(run_in(self.thread, lambda: getattr(backend, name)))


SERVICES = {
    # name: (upstream_http_version, backend attribute, upstream TLS, extra keys)
    "h2c": ("2", "h2", False, {"h2_ping_interval": 0.2}),
    "alpn": ("auto", "h2_tls", True, {}),
    "h2_refused": ("2", "h1", False, {}),
    "alpn_h1": ("auto", "h1_tls", True, {}),
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    directory = tmp_path_factory.mktemp("h2up")
    ca = trustme.CA()
    ca_file = directory / "ca.pem"
    ca_file.write_bytes(ca.cert_pem.bytes())
    proxy_cert = ca.issue_cert(PROXY_NAME)
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(b"".join(blob.bytes() for blob in proxy_cert.cert_chain_pems))
    proxy_cert.private_key_pem.write_to_path(str(key_file))
    thread = BackendThread()
    try:
        contexts = []
        for _ in range(2):
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ca.issue_cert(SERVER_NAME).configure_cert(context)
            contexts.append(context)
        backends = {
            "h2": start_h2_backend(thread, "h2"),
            "h2_tls": start_h2_backend(thread, "h2tls", contexts[0]),
            "h1": thread.start("h1"),
            "h1_tls": thread.start("h1tls", ssl_context=contexts[1]),
        }
        services = []
        for index, (name, (version, backend, tls, extra)) in enumerate(SERVICES.items()):
            service = {
                "name": name,
                "listen": [f"127.0.0.{index + 1}:0"],  # port 0 once per address
                "h2c": True,
                "upstream_http_version": version,
                "upstreams": [backends[backend].address],
                **extra,
            }
            if tls:
                service.update({"tls": True, "sni": SERVER_NAME})
            if name == "h2c":  # clients over TLS too (ALPN h2), on an address of its own
                service["tls_listen"] = ["127.0.0.9:0"]
                service["certificates"] = [{"cert": str(cert_file), "key": str(key_file)}]
            services.append(service)
        conf = directory / "lbx.yaml"
        conf.write_text(
            yaml.safe_dump(
                {"plugins": ["roundrobin"], "ca_file": str(ca_file), "services": services}
            )
        )
        with LbxProcess("-c", str(conf)) as process:
            listening = process.addresses
            addresses = {
                name: next(a for a in listening if a.startswith(f"127.0.0.{index + 1}:"))
                for index, name in enumerate(SERVICES)
            }
            addresses["h2c_tls"] = next(a for a in listening if a.startswith("127.0.0.9:"))
            with H2Client(addresses["h2c"]) as client:
                assert client.get("/bytes/65536").body == _PATTERN
                assert client.get("/echo", method="POST", body=b"warm-up").status == 200
            warm = process.rss_kib("VmHWM")
            yield Setup(
                process,
                thread,
                backends["h2"],  # type: ignore[arg-type]
                backends["h2_tls"],  # type: ignore[arg-type]
                backends["h1"],  # type: ignore[arg-type]
                backends["h1_tls"],  # type: ignore[arg-type]
                addresses,
                ca,
                warm,
            )
            assert process.proc is not None and process.proc.poll() is None, process.output
    finally:
        for backend in (backends["h2"], backends["h2_tls"]):
            stop_h2_backend(thread, backend)  # type: ignore[arg-type]
        thread.close()


def echo(reply_body: bytes) -> tuple[dict[str, str], dict[str, object]]:
    seen = json.loads(reply_body)
    return {k: v for k, v in seen["headers"]}, seen


# -- both directions, header rules -------------------------------------------------------------


def test_http11_client_to_h2_backend(setup: Setup) -> None:
    """An HTTP/1.1 request becomes an HTTP/2 one (RFC 9113 8.2-8.3): ``:authority`` from Host
    and no Host, lower-case names, no connection-specific field, ``te: trailers`` only."""
    reply = http_get(
        setup.addresses["h2c"],
        "/echo?x=1",
        headers={
            "Host": "example.test",
            "X-Mixed-Case": "yes",
            "Connection": "keep-alive, x-hop",
            "X-Hop": "dropped",
            "Keep-Alive": "timeout=5",
            "TE": "trailers, deflate",
        },
    )
    assert reply.status == 200, reply
    fields, seen = echo(reply.body)
    assert seen["target"] == "/echo?x=1"
    assert fields[":authority"] == "example.test" and fields[":scheme"] == "http"
    assert "host" not in fields and fields["x-mixed-case"] == "yes"
    for name in ("connection", "x-hop", "keep-alive", "transfer-encoding", "upgrade"):
        assert name not in fields
    assert fields["te"] == "trailers"
    assert all(name == name.lower() for name in fields)


def test_h2_client_to_h2_backend_and_streams_share_a_connection(setup: Setup) -> None:
    """h2 -> h2: 20 requests at once from one client ride one upstream connection together."""
    before = setup.counted(setup.h2, "connections_total")
    with H2Client(setup.addresses["h2c"]) as client:
        streams = [client.request("/sleep/0.5") for _ in range(20)]
        wait_until(lambda: setup.counted(setup.h2, "sleeping") == 20)
        replies = [client.response(stream) for stream in streams]
    assert [(r.status, r.body) for r in replies] == [(200, b"slept\n")] * 20
    assert setup.counted(setup.h2, "connections_total") == before  # the pooled connection
    assert setup.counted(setup.h2, "max_active") >= 20


def test_post_bodies_both_framings(setup: Setup) -> None:
    """Content-Length and chunked request bodies both arrive as DATA (no chunked framing)."""
    address = setup.addresses["h2c"]
    with httpx.Client(timeout=TIMEOUT) as client:
        sized = client.post(f"http://{address}/echo", content=b"a" * 100_000)
        streamed = client.post(f"http://{address}/echo", content=iter([b"b" * 5000] * 20))
    for reply in (sized, streamed):
        fields, seen = echo(reply.content)
        assert seen["body_size"] == 100_000
        assert "transfer-encoding" not in fields
    assert echo(sized.content)[0]["content-length"] == "100000"


def test_head_and_204_have_no_body(setup: Setup) -> None:
    """HEAD keeps the backend's content-length and has no body; a 204 has neither, to
    HTTP/1.1 and HTTP/2 clients alike (the connection goes on)."""
    address = setup.addresses["h2c"]
    with httpx.Client(timeout=TIMEOUT) as client:
        head = client.head(f"http://{address}/")
        empty = client.get(f"http://{address}/status/204")
        after = client.get(f"http://{address}/")
    assert (head.status_code, head.headers["content-length"], head.content) == (200, "22", b"")
    assert (empty.status_code, "content-length" in empty.headers, empty.content) == (
        204,
        False,
        b"",
    )
    assert after.text == "Hello from backend h2\n"
    with H2Client(address) as h2client:
        reply = h2client.get("/status/204")
        assert (reply.status, reply.get("content-length"), reply.body) == (204, None, b"")
        assert h2client.get("/", method="HEAD").body == b""


def test_trailers_reach_h2_clients(setup: Setup) -> None:
    """The backend's trailers are HTTP/2 trailers to an HTTP/2 client; an HTTP/1.1 client gets
    the body."""
    with H2Client(setup.addresses["h2c"]) as client:
        reply = client.get("/trailers")
    assert (reply.status, reply.body, reply.trailers) == (
        200,
        b"with trailers\n",
        [(b"x-trailer", b"yes")],
    )
    assert http_get(setup.addresses["h2c"], "/trailers").body == b"with trailers\n"


def test_upstream_reset_resets_the_client_stream(setup: Setup) -> None:
    """RST_STREAM from the backend after the head: the client's stream is reset, the
    connection (and the next request on it) goes on."""
    with H2Client(setup.addresses["h2c"]) as client:
        reply = client.get("/reset")
        assert reply.reset == ErrorCodes.INTERNAL_ERROR
        assert client.get("/").status == 200


def test_client_reset_resets_the_upstream_stream(setup: Setup) -> None:
    """RST_STREAM CANCEL from the client: lbx resets the backend's stream."""
    before = setup.counted(setup.h2, "resets")
    with H2Client(setup.addresses["h2c"]) as client:
        stream = client.request("/sleep/30")
        wait_until(lambda: setup.counted(setup.h2, "sleeping") >= 1)
        client.conn.reset_stream(stream, ErrorCodes.CANCEL)
        client.flush()
        wait_until(lambda: setup.counted(setup.h2, "resets") > before)
        assert client.get("/").status == 200


def test_refused_stream_is_sent_again_whatever_the_method(setup: Setup) -> None:
    """REFUSED_STREAM (the backend did not process it): lbx sends even a POST again (one whose
    body bytes did not leave lbx yet: they are streamed, not kept)."""
    with httpx.Client(timeout=TIMEOUT) as client:
        reply = client.post(f"http://{setup.addresses['h2c']}/refuse-once/post")
    assert (reply.status_code, reply.content) == (200, b"processed\n")


def test_a_backend_breaking_hpack_is_502_and_lbx_goes_on(setup: Setup) -> None:
    """A header block that does not decode is a connection error: 502 for the request on it,
    a new connection for the next one."""
    before = setup.counted(setup.h2, "connections_total")
    assert http_get(setup.addresses["h2c"], "/garbage").status == 502
    reply = http_get(setup.addresses["h2c"], "/")
    assert (reply.status, reply.body) == (200, b"Hello from backend h2\n")
    assert setup.counted(setup.h2, "connections_total") == before + 1


@pytest.mark.parametrize("path", ["/odd-name", "/odd-value"])
def test_a_response_field_http11_cannot_carry_is_502(setup: Setup, path: str) -> None:
    """A backend's field name that is not a token (``content-length;x``), or a control byte in
    a value, never reaches an HTTP/1.1 client, where a lenient parser might take it for
    framing: 502, as for an HTTP/1.1 backend sending it; the next request works."""
    assert http_get(setup.addresses["h2c"], path).status == 502
    reply = http_get(setup.addresses["h2c"], "/")
    assert (reply.status, reply.body) == (200, b"Hello from backend h2\n")


def h2_upstream_conf(tmp_path: Path, backend: H2Backend, **service: object) -> str:
    """A config file: one service on 127.0.0.1:0 speaking HTTP/2 to ``backend``, plus
    ``service`` keys."""
    conf = tmp_path / "lbx.yaml"
    keys = {"listen": ["127.0.0.1:0"], "upstream_http_version": 2, "upstreams": [backend.address]}
    conf.write_text(yaml.safe_dump({"plugins": ["roundrobin"], "services": [{**keys, **service}]}))
    return str(conf)


def test_dead_h2_backend_is_502_and_lbx_goes_on(tmp_path: Path) -> None:
    """A backend that is gone: 502 on the stream; once back, the next request works."""
    thread = BackendThread()
    backend = start_h2_backend(thread, "gone")
    try:
        with LbxProcess("-c", h2_upstream_conf(tmp_path, backend)) as process:
            assert http_get(process.address, "/").status == 200
            stop_h2_backend(thread, backend)
            assert http_get(process.address, "/").status == 502
            # The same port again: lbx connects anew.
            again = start_h2_backend(thread, "back", port=backend.port)
            reply = http_get(process.address, "/")
            assert (reply.status, reply.body) == (200, b"Hello from backend back\n")
            stop_h2_backend(thread, again)
    finally:
        thread.close()


def test_a_backend_that_takes_no_more_body_is_504_after_write_timeout(tmp_path: Path) -> None:
    """An HTTP/2 backend that never opens its window again for a request body: 504 after
    ``write_timeout`` (the upstream stream's write deadline), as over HTTP/1.1."""
    thread = BackendThread()
    backend = start_h2_backend(thread, "stuck")
    try:
        with LbxProcess("-c", h2_upstream_conf(tmp_path, backend, write_timeout=1)) as process:
            host, port = process.address.rsplit(":", 1)
            with socket.create_connection((host, int(port)), timeout=TIMEOUT) as sock:
                size = 8 * 1024 * 1024
                sock.sendall(
                    b"POST /no-window HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size
                )
                sender = threading.Thread(target=send_quietly, args=(sock, size), daemon=True)
                sender.start()
                answer = b""
                while b"\r\n\r\n" not in answer:
                    data = sock.recv(65536)
                    assert data, answer
                    answer += data
            assert answer.startswith(b"HTTP/1.1 504 "), answer
            # The write deadline's 504, not the response head's (read_timeout, 60 s).
            process.wait_for(r"WriteTimedout context: upstream read nothing for 1\.0s", TIMEOUT)
            assert http_get(process.address, "/").status == 200  # and lbx goes on
    finally:
        stop_h2_backend(thread, backend)
        thread.close()


def send_quietly(sock: socket.socket, size: int) -> None:
    """Send ``size`` bytes until lbx stops taking them (it answered and closed)."""
    piece = b"x" * 65536
    try:
        for _ in range(size // len(piece)):
            sock.sendall(piece)
    except OSError:
        pass


# -- TLS, ALPN and fallbacks ---------------------------------------------------------------------


def test_alpn_h2_over_tls(setup: Setup) -> None:
    """``upstream_http_version: auto`` with a TLS backend that offers h2: HTTP/2 (by ALPN)."""
    reply = http_get(setup.addresses["alpn"], "/echo")
    assert reply.status == 200
    fields, _ = echo(reply.body)
    assert fields[":scheme"] == "https"
    assert setup.counted(setup.h2_tls, "streams_total") >= 1


def test_backend_refusing_the_preface_gets_http11(setup: Setup) -> None:
    """``upstream_http_version: 2`` to an HTTP/1.1-only backend: it answers the preface with a
    400; lbx speaks HTTP/1.1 to it instead, from the first request on."""
    for _ in range(3):
        reply = http_get(setup.addresses["h2_refused"], "/")
        assert (reply.status, reply.body) == (200, b"Hello from backend h1\n")
    with H2Client(setup.addresses["h2_refused"]) as client:
        assert client.get("/").body == b"Hello from backend h1\n"


def test_alpn_choosing_http11_gets_http11(setup: Setup) -> None:
    """ALPN: a TLS backend that picks http/1.1 is spoken to in HTTP/1.1 on that connection."""
    for _ in range(3):
        reply = http_get(setup.addresses["alpn_h1"], "/")
        assert (reply.status, reply.body) == (200, b"Hello from backend h1tls\n")


# -- keep-alive ----------------------------------------------------------------------------------


def test_idle_h2_upstream_connection_is_pinged(setup: Setup) -> None:
    """``h2_ping_interval``: an idle upstream connection gets PINGs (and stays usable)."""
    assert http_get(setup.addresses["h2c"], "/").status == 200
    before = setup.counted(setup.h2, "pings")
    wait_until(lambda: setup.counted(setup.h2, "pings") >= before + 2)
    assert http_get(setup.addresses["h2c"], "/").status == 200


def mute(backend: H2Backend) -> list[asyncio.Transport]:
    """Stop reading every connection of ``backend`` (on its loop); their transports."""
    transports = [c.transport for c in backend.connections if c.transport is not None]
    for transport in transports:
        transport.pause_reading()
    return transports


def test_a_backend_that_stops_answering_pings_is_dropped(setup: Setup) -> None:
    """The backend stops reading (its PING ACKs stop): by the next interval lbx closes the
    connection, the request waiting on it gets a 502 (a POST: not sent again), the next
    request a new connection."""
    with H2Client(setup.addresses["h2c"]) as client:
        stream = client.request("/sleep/60", method="POST")
        wait_until(lambda: setup.counted(setup.h2, "sleeping") >= 1)
        before = setup.counted(setup.h2, "connections_total")
        muted = run_in(setup.thread, lambda: mute(setup.h2))
        assert client.response(stream).status == 502
        assert client.get("/").status == 200
    assert setup.counted(setup.h2, "connections_total") == before + 1
    setup.process.wait_for(r"did not answer a PING: connection closed")
    # The muted connections end (their held request with them) for the tests that follow.
    run_in(setup.thread, lambda: [transport.abort() for transport in muted])


# -- real clients, big bodies, back-pressure -------------------------------------------------------


def test_curl_and_h2load_to_h2_backend(setup: Setup) -> None:
    address = setup.addresses["h2c"]
    out = curl("--http2-prior-knowledge", "-w", "\n%{http_version}", f"http://{address}/")
    assert out.stdout == b"Hello from backend h2\n\n2"
    out = curl("--http1.1", "-w", "\n%{http_version}", f"http://{address}/")
    assert out.stdout == b"Hello from backend h2\n\n1.1"
    h2load_all_answered(address)


def test_curl_http2_over_tls_to_h2_backend(setup: Setup, tmp_path: Path) -> None:
    """``curl --http2`` over TLS (ALPN h2) through lbx to an HTTP/2 backend."""
    ca = tmp_path / "ca.pem"
    ca.write_bytes(setup.ca.cert_pem.bytes())
    port = setup.addresses["h2c_tls"].rsplit(":", 1)[1]
    resolve = f"{PROXY_NAME}:{port}:127.0.0.9"
    url = f"https://{PROXY_NAME}:{port}/"
    out = curl("--http2", "--cacert", str(ca), "--resolve", resolve, "-w", "\n%{http_version}", url)
    assert out.stdout == b"Hello from backend h2\n\n2"
    transport = httpx.HTTPTransport(http2=True, verify=_context(setup.ca))
    with httpx.Client(transport=transport, timeout=TIMEOUT) as client:
        reply = client.get(f"https://127.0.0.9:{port}/", extensions={"sni_hostname": PROXY_NAME})
    assert reply.http_version == "HTTP/2" and reply.text == "Hello from backend h2\n"


def _context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def test_httpx_h2_to_h2_backend(setup: Setup) -> None:
    with httpx.Client(http1=False, http2=True, timeout=TIMEOUT) as client:
        reply = client.get(f"http://{setup.addresses['alpn']}/")
    assert reply.http_version == "HTTP/2" and reply.text == "Hello from backend h2tls\n"


@pytest.mark.parametrize("client", ["h2", "h1"])
def test_download_100mib_from_h2_backend(setup: Setup, client: str) -> None:
    url = f"http://{setup.addresses['h2c']}/bytes/{SIZE}"
    flag = "--http2-prior-knowledge" if client == "h2" else "--http1.1"
    command = [tool("curl", "curl"), "-sS", flag, url]
    digest = hashlib.sha256()
    size = 0
    with subprocess.Popen(command, stdout=subprocess.PIPE) as out:
        assert out.stdout is not None
        while piece := out.stdout.read(1 << 20):
            digest.update(piece)
            size += len(piece)
        assert out.wait(TIMEOUT) == 0
    assert (size, digest.hexdigest()) == (SIZE, expected_sha256(SIZE))
    setup.check_memory(f"a 100 MiB download over {client}")


@pytest.mark.parametrize("client", ["h2", "h1"])
def test_upload_100mib_to_h2_backend(setup: Setup, client: str, tmp_path: Path) -> None:
    body = tmp_path / "body"
    with body.open("wb") as out:
        for _ in range(SIZE // len(_PATTERN)):
            out.write(_PATTERN)
    flag = "--http2-prior-knowledge" if client == "h2" else "--http1.1"
    answer = curl(flag, "--data-binary", f"@{body}", f"http://{setup.addresses['h2c']}/echo")
    _, seen = echo(answer.stdout)
    assert (seen["body_size"], seen["body_sha256"]) == (SIZE, expected_sha256(SIZE))
    setup.check_memory(f"a 100 MiB upload over {client}")


def test_a_client_that_stops_reading_closes_the_backend_window(setup: Setup) -> None:
    """The client reads nothing more: lbx stops acknowledging the backend's DATA, whose stream
    window closes (the backend waits); reading again delivers all of it, intact."""
    warm = setup.process.rss_kib("VmRSS")
    with H2Client(setup.addresses["h2c"], read_size=16384) as client:
        stream = client.request(f"/bytes/{SIZE}")
        while not client.replies[stream].data:
            client.read_events()
        wait_until(lambda: setup.counted(setup.h2, "blocked") >= 1)
        stalled = setup.process.rss_kib("VmRSS")
        print(f"lbx VmRSS before {warm} KiB, with the client stalled {stalled} KiB")
        assert stalled - warm < RSS_BUDGET_KIB
        reply = client.response(stream)
    assert hashlib.sha256(reply.body).hexdigest() == expected_sha256(SIZE)


def test_a_raw_socket_h1_client_that_stops_reading(setup: Setup) -> None:
    """The same over HTTP/1.1: a socket that is not read fills, the backend's window closes."""
    host, port = setup.addresses["h2c"].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=TIMEOUT) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.sendall(f"GET /bytes/{SIZE} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        wait_until(lambda: setup.counted(setup.h2, "blocked") >= 1)
        digest = hashlib.sha256()
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        head, rest = data.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 200")
        size = len(rest)
        digest.update(rest)
        while size < SIZE:
            piece = sock.recv(1 << 20)
            assert piece
            digest.update(piece)
            size += len(piece)
    assert digest.hexdigest() == expected_sha256(SIZE)


# -- streams are requests for the access log, the metrics and the status view ---------------------


def test_streams_are_counted_by_accesslog_metrics_and_status(tmp_path: Path) -> None:
    """Five streams on one HTTP/2 connection, to an HTTP/2 backend: five access log lines
    (``HTTP/2``), five requests in /metrics and in ``lbx status``."""
    from prometheus_client.parser import text_string_to_metric_families

    thread = BackendThread()
    backend = start_h2_backend(thread, "h2")
    try:
        log, sock = tmp_path / "access.log", tmp_path / "status.sock"
        conf = tmp_path / "lbx.yaml"
        service = {
            "name": "web",
            "listen": ["127.0.0.1:0"],
            "h2c": True,
            "upstream_http_version": 2,
            "upstreams": [backend.address],
        }
        conf.write_text(
            yaml.safe_dump(
                {
                    "plugins": ["roundrobin", "accesslog", "prometheus", "status"],
                    "accesslog": {"path": str(log), "batch_lines": 1},
                    "prometheus": {"listen": "127.0.0.1:0"},
                    "status": {"listen": f"unix:{sock}"},
                    "services": [service],
                }
            )
        )
        with LbxProcess("-c", str(conf)) as process:
            metrics = process.wait_for(r"prometheus: metrics on http://(\S+)/metrics")[1]
            with H2Client(process.address) as client:
                for stream in [client.request("/") for _ in range(5)]:
                    assert client.response(stream).status == 200
            wait_until(lambda: log.exists() and log.read_text().count("\n") == 5)
            assert all('"GET / HTTP/2"' in line for line in log.read_text().splitlines())
            text = httpx.get(f"http://{metrics}/metrics", timeout=TIMEOUT).text
            families = {f.name: f.samples for f in text_string_to_metric_families(text)}
            assert sum(s.value for s in families["lbx_requests"]) == 5
            status = subprocess.run(
                [sys.executable, "-m", "lbx", "status", "--socket", str(sock), "--json"],
                capture_output=True,
                text=True,
                timeout=TIMEOUT,
                check=True,
            )
            assert json.loads(status.stdout)["services"][0]["requests"] == 5
    finally:
        stop_h2_backend(thread, backend)
        thread.close()


RESIZE = Path(__file__).resolve().parent / "plugins" / "resize_request_body.py"


@pytest.mark.parametrize("resize", ["grow", "shrink"])
def test_a_filter_that_changes_a_content_length_body_is_500_over_http2_too(
    tmp_path: Path, resize: str
) -> None:
    """As over HTTP/1.1 (tests/test_request_body_length.py): DATA that does not add up to the
    stream's content-length would have the backend refuse the stream (RFC 9113 8.1.1), or wait
    for the rest. lbx answers 500 and resets the stream; the connection serves the next one."""
    thread = BackendThread()
    backend = start_h2_backend(thread, "b")
    try:
        conf = tmp_path / "lbx.yaml"
        service = {"listen": ["127.0.0.1:0"], "upstream_http_version": 2}
        service["upstreams"] = [backend.address]
        plugins = ["roundrobin", str(RESIZE)]
        conf.write_text(yaml.safe_dump({"plugins": plugins, "services": [service]}))
        with LbxProcess("-c", str(conf)) as process, httpx.Client(timeout=TIMEOUT) as client:
            url = f"http://{process.address}/echo"
            reply = client.post(url, content=b"hello", headers={"X-Resize": resize})
            assert reply.status_code == 500
            again = client.post(url, content=b"hello")
            assert again.status_code == 200 and echo(again.content)[1]["body_size"] == 5
            process.wait_for("changed the length of a Content-Length body")
    finally:
        stop_h2_backend(thread, backend)
        thread.close()
