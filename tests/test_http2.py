"""HTTP/2 downstream with real clients: curl, httpx, h2load and a raw client, through a real lbx
(h2c by prior knowledge and TLS with ALPN) to real HTTP/1.1 backends.

One lbx process serves the module (its peak RSS after a warm-up is the memory baseline): 100 MiB
each way with flat memory, a client that stops reading (flow control back-pressure up to the
backend), many streams at once on one connection, graceful shutdown with GOAWAY.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import select
import shutil
import signal
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trustme
import yaml
from hyperframe.frame import DataFrame, GoAwayFrame, RstStreamFrame
from tests.h2_helpers import H2Client, read_frames

from lbx.testing import _PATTERN, BackendThread, DemoBackend, LbxProcess

MiB = 1024 * 1024
SIZE = 100 * MiB
RSS_BUDGET_KIB = 30 * 1024
TIMEOUT = 120.0


def tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (Debian package {package})")
    return path


@functools.cache
def expected_sha256(size: int) -> str:
    digest = hashlib.sha256()
    whole, rest = divmod(size, len(_PATTERN))
    for _ in range(whole):
        digest.update(_PATTERN)
    digest.update(_PATTERN[:rest])
    return digest.hexdigest()


def wait_until(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@dataclass
class Proxy:
    process: LbxProcess
    backend: DemoBackend
    plain: str
    tls: str
    ca: trustme.CA
    warm_hwm_kib: int

    def check_memory(self, label: str) -> None:
        hwm = self.process.rss_kib("VmHWM")
        growth = hwm - self.warm_hwm_kib
        message = f"lbx VmHWM after warm-up {self.warm_hwm_kib} KiB, after {label} {hwm} KiB"
        print(message)
        assert growth < RSS_BUDGET_KIB, message

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    directory = tmp_path_factory.mktemp("h2")
    ca = trustme.CA()
    cert = ca.issue_cert("h2.test")
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(key_file))
    (directory / "ca.pem").write_bytes(ca.cert_pem.bytes())
    thread = BackendThread()
    try:
        backend = thread.start("a")
        conf = directory / "lbx.yaml"
        service = {
            "name": "h2",
            "listen": ["127.0.0.1:0"],
            "tls_listen": ["127.0.0.1:0"],
            "certificates": [{"cert": str(cert_file), "key": str(key_file)}],
            "h2c": True,
            "upstreams": [backend.address],
        }
        conf.write_text(yaml.safe_dump({"plugins": ["roundrobin"], "services": [service]}))
        with LbxProcess("-c", str(conf)) as process:
            plain, tls = process.addresses
            with H2Client(plain) as client:
                assert client.get("/bytes/65536").body == _PATTERN
                assert client.get("/echo", method="POST", body=b"warm-up").status == 200
            warm = process.rss_kib("VmHWM")
            yield Proxy(process, backend, plain, tls, ca, warm)
            assert process.proc is not None and process.proc.poll() is None, process.output
    finally:
        thread.close()


def curl(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    command = [tool("curl", "curl"), "-sS", "--max-time", str(int(TIMEOUT)), *args]
    return subprocess.run(command, input=stdin, capture_output=True, timeout=TIMEOUT, check=True)


# -- real clients ---------------------------------------------------------------------------------


def test_curl_http2_prior_knowledge(proxy: Proxy) -> None:
    """``curl --http2-prior-knowledge`` on the plaintext listener: HTTP/2, the backend's answer."""
    out = curl("--http2-prior-knowledge", "-w", "\n%{http_version}", f"http://{proxy.plain}/")
    assert out.stdout == b"Hello from backend a\n\n2"


def test_plain_http11_on_an_h2c_listener(proxy: Proxy) -> None:
    """The preface decides: an HTTP/1.1 client on the same listener gets HTTP/1.1."""
    out = curl("--http1.1", "-w", "\n%{http_version}", f"http://{proxy.plain}/")
    assert out.stdout == b"Hello from backend a\n\n1.1"


def test_upgrade_h2c_stays_refused(proxy: Proxy) -> None:
    """``curl --http2`` on plaintext offers ``Upgrade: h2c``: answered as HTTP/1.1."""
    out = curl("--http2", "-w", "\n%{http_version}", f"http://{proxy.plain}/")
    assert out.stdout.endswith(b"\n1.1")


def test_curl_http2_over_tls_by_alpn(proxy: Proxy, tmp_path: Path) -> None:
    """``curl --http2`` over TLS negotiates h2 by ALPN; ``--http1.1`` still gets HTTP/1.1."""
    ca = tmp_path / "ca.pem"
    ca.write_bytes(proxy.ca.cert_pem.bytes())
    port = proxy.tls.rsplit(":", 1)[1]
    common = ["--cacert", str(ca), "--resolve", f"h2.test:{port}:127.0.0.1"]
    url = f"https://h2.test:{port}/"
    out = curl("--http2", *common, "-w", "\n%{http_version}", url)
    assert out.stdout == b"Hello from backend a\n\n2"
    out = curl("--http1.1", *common, "-w", "\n%{http_version}", url)
    assert out.stdout == b"Hello from backend a\n\n1.1"


def test_httpx_http2_prior_knowledge_and_tls(proxy: Proxy) -> None:
    """httpx with h2: prior knowledge on plaintext, ALPN over TLS; keep-alive streams."""
    with httpx.Client(http1=False, http2=True, timeout=TIMEOUT) as client:
        for _ in range(3):
            response = client.get(f"http://{proxy.plain}/echo", headers={"x-test": "1"})
            assert response.http_version == "HTTP/2"
            seen = dict((k.lower(), v) for k, v in response.json()["headers"])
            assert seen["host"] == proxy.plain and seen["x-test"] == "1"
        posted = client.post(f"http://{proxy.plain}/echo", content=b"x" * 100_000)
        assert posted.json()["body_size"] == 100_000
    port = proxy.tls.rsplit(":", 1)[1]
    transport = httpx.HTTPTransport(http2=True, verify=proxy.client_context())
    with httpx.Client(transport=transport, timeout=TIMEOUT) as client:
        response = client.get(f"https://127.0.0.1:{port}/", extensions={"sni_hostname": "h2.test"})
    assert response.http_version == "HTTP/2"
    assert response.text == "Hello from backend a\n"


def h2load_all_answered(address: str) -> None:
    """h2load, 2,000 requests from 10 clients with 10 streams each: every one answered 200."""
    h2load = tool("h2load", "nghttp2-client")
    out = subprocess.run(
        [h2load, "-n", "2000", "-c", "10", "-m", "10", f"http://{address}/"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=True,
    ).stdout
    assert "2000 succeeded, 0 failed, 0 errored" in out, out
    assert "status codes: 2000 2xx" in out, out


def test_h2load(proxy: Proxy) -> None:
    h2load_all_answered(proxy.plain)


def test_many_streams_at_once_on_one_connection(proxy: Proxy) -> None:
    """30 requests to a backend that holds each: all in flight together, all answered."""
    with H2Client(proxy.plain) as client:
        streams = [client.request("/sleep/3") for _ in range(30)]
        wait_until(lambda: proxy.backend.sleeping == 30)
        replies = [client.response(stream) for stream in streams]
    assert [(r.status, r.body) for r in replies] == [(200, b"slept\n")] * 30


# -- big bodies and back-pressure ---------------------------------------------------------------


def test_download_100mib_with_curl(proxy: Proxy) -> None:
    url = f"http://{proxy.plain}/bytes/{SIZE}"
    command = [tool("curl", "curl"), "-sS", "--http2-prior-knowledge", url]
    digest = hashlib.sha256()
    size = 0
    with subprocess.Popen(command, stdout=subprocess.PIPE) as out:
        assert out.stdout is not None
        while piece := out.stdout.read(1 << 20):
            digest.update(piece)
            size += len(piece)
        assert out.wait(TIMEOUT) == 0
    assert (size, digest.hexdigest()) == (SIZE, expected_sha256(SIZE))
    proxy.check_memory("a 100 MiB download")


def test_upload_100mib_with_curl(proxy: Proxy, tmp_path: Path) -> None:
    body = tmp_path / "body"
    with body.open("wb") as out:
        for _ in range(SIZE // len(_PATTERN)):
            out.write(_PATTERN)
    answer = curl(
        "--http2-prior-knowledge", "--data-binary", f"@{body}", f"http://{proxy.plain}/echo"
    )
    seen = json.loads(answer.stdout)
    assert (seen["body_size"], seen["body_sha256"]) == (SIZE, expected_sha256(SIZE))
    proxy.check_memory("a 100 MiB upload")


def test_a_client_that_stops_reading_pauses_the_backend(proxy: Proxy) -> None:
    """A client that stops reading (no WINDOW_UPDATE, no reads): lbx keeps at most its buffers
    and pauses the backend (its socket fills); reading again delivers all of it, intact."""
    warm = proxy.process.rss_kib("VmRSS")
    with H2Client(proxy.plain, read_size=16384) as client:
        stream = client.request(f"/bytes/{SIZE}")
        while not client.replies[stream].data:
            client.read_events()
        # The client now reads nothing: lbx fills the window, then its buffer, then stops
        # reading the backend, whose writes pause.
        wait_until(lambda: any(not c.writable.is_set() for c in proxy.backend.connections))
        stalled = proxy.process.rss_kib("VmRSS")
        print(f"lbx VmRSS before {warm} KiB, with the client stalled {stalled} KiB")
        assert stalled - warm < RSS_BUDGET_KIB
        reply = client.response(stream)
    assert len(reply.body) == SIZE and hashlib.sha256(reply.body).hexdigest() == expected_sha256(
        SIZE
    )
    proxy.check_memory("a stalled client")


# -- shutdown -----------------------------------------------------------------------------------


def test_graceful_shutdown_sends_goaway_and_finishes_open_streams(
    backends: BackendThread, lbx: Callable[..., LbxProcess], tmp_path: Path
) -> None:
    """SIGTERM: GOAWAY (NO_ERROR) to an HTTP/2 client; its open stream is answered in full,
    then the connection closes."""
    backend = backends.start("a")
    conf = tmp_path / "lbx.yaml"
    service = {"listen": ["127.0.0.1:0"], "h2c": True, "upstreams": [backend.address]}
    conf.write_text(yaml.safe_dump({"plugins": ["roundrobin"], "services": [service]}))
    process = lbx("-c", str(conf))
    nghttp = tool("nghttp", "nghttp2-client")
    command = [nghttp, "-v", f"http://{process.address}/sleep/1"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as client:
        wait_until(lambda: backend.sleeping == 1)
        process.send_signal(signal.SIGTERM)
        out, _ = client.communicate(timeout=TIMEOUT)
    assert client.returncode == 0, out
    assert "slept" in out
    assert re.search(r"recv GOAWAY frame .*\n.*error_code=NO_ERROR", out), out
    assert process.wait(TIMEOUT) == 0


def test_a_stream_opened_while_draining_is_answered_and_named_by_the_last_goaway(
    backends: BackendThread, lbx: Callable[..., LbxProcess], tmp_path: Path
) -> None:
    """SIGTERM: the first GOAWAY names no stream (any may still come, RFC 9113 6.8). A stream
    the client opens in that moment is answered, and the last GOAWAY, a moment later, names it;
    then the connection closes and lbx exits. (A new stream used to cancel the last GOAWAY:
    the connection stayed open until the shutdown grace period aborted it.)"""
    backend = backends.start("a")
    conf = tmp_path / "lbx.yaml"
    service = {"listen": ["127.0.0.1:0"], "h2c": True, "upstreams": [backend.address]}
    conf.write_text(yaml.safe_dump({"plugins": ["roundrobin"], "services": [service]}))
    for _ in range(3):  # a machine that stalls lbx past the 1 s window: the stream came late
        process = lbx("-c", str(conf))
        with H2Client(process.address) as client:
            assert client.get("/").status == 200
            process.send_signal(signal.SIGTERM)
            # The first GOAWAY is on its way: not given to h2, which would then refuse to
            # open another stream.
            assert select.select([client.sock], [], [], TIMEOUT)[0]
            stream = client.request("/")
            frames = list(read_frames(client.sock))  # until lbx closes the connection
        assert process.wait(TIMEOUT) == 0
        if any(isinstance(f, RstStreamFrame) and f.stream_id == stream for f in frames):
            continue  # refused: it arrived after the last GOAWAY
        goaways = [f.last_stream_id for f in frames if isinstance(f, GoAwayFrame)]
        assert goaways == [2**31 - 1, stream], frames
        assert any(
            isinstance(f, DataFrame) and f.stream_id == stream and "END_STREAM" in f.flags
            for f in frames
        ), frames
        return
    pytest.fail("the stream never came within the drain window")


def test_streams_are_counted_as_requests(
    backends: BackendThread, lbx: Callable[..., LbxProcess], tmp_path: Path
) -> None:
    """The access log writes one line per stream, with HTTP/2 as the protocol."""
    backend = backends.start("a")
    log = tmp_path / "access.log"
    conf = tmp_path / "lbx.yaml"
    service = {"listen": ["127.0.0.1:0"], "h2c": True, "upstreams": [backend.address]}
    conf.write_text(
        yaml.safe_dump(
            {
                "plugins": ["roundrobin", "accesslog"],
                "accesslog": {"path": str(log), "batch_lines": 1},
                "services": [service],
            }
        )
    )
    process = lbx("-c", str(conf))
    with H2Client(process.address) as client:
        for stream in [client.request("/") for _ in range(5)]:
            assert client.response(stream).status == 200
    wait_until(lambda: log.exists() and log.read_text().count("\n") == 5)
    assert all('"GET / HTTP/2"' in line for line in log.read_text().splitlines())
