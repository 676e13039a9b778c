"""Streaming end to end: 100 MiB through a real lbx to a real backend, in bounded memory.

The issue's "Done means": a 100 MiB download and a 100 MiB upload (chunked and Content-Length)
pass through intact while lbx's RSS grows by less than 30 MiB. One lbx process serves all the big
transfers of this module, so that its peak RSS (``VmHWM``) after all of them can be compared with
the peak after a small warm-up.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import http.client
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, field

import pytest

from lbx.testing import _PATTERN, BackendThread, LbxProcess

MiB = 1024 * 1024
SIZE = 100 * MiB
READ_PIECE = 1 * MiB
SEND_PIECE = 256 * 1024
RSS_BUDGET_KIB = 30 * 1024
TIMEOUT = 60.0

assert SIZE % len(_PATTERN) == 0 and SEND_PIECE % len(_PATTERN) == 0
_SEND_BLOCK = _PATTERN * (SEND_PIECE // len(_PATTERN))


@functools.cache
def expected_sha256(size: int) -> str:
    """The sha256 of ``pattern_bytes(size)``, computed piece by piece (never 100 MiB at once)."""
    digest = hashlib.sha256()
    whole, rest = divmod(size, len(_PATTERN))
    for _ in range(whole):
        digest.update(_PATTERN)
    digest.update(_PATTERN[:rest])
    return digest.hexdigest()


def host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def connect(address: str) -> http.client.HTTPConnection:
    host, port = host_port(address)
    return http.client.HTTPConnection(host, port, timeout=TIMEOUT)


def raw_socket(address: str) -> socket.socket:
    return socket.create_connection(host_port(address), timeout=TIMEOUT)


def read_response(sock: socket.socket, method: str = "GET") -> http.client.HTTPResponse:
    """Parse one response from a raw socket (head now, body on ``read``)."""
    response = http.client.HTTPResponse(sock, method=method)
    response.begin()
    return response


def read_all(response: http.client.HTTPResponse) -> tuple[int, str]:
    """Read the body in 1 MiB pieces; its size and sha256."""
    digest = hashlib.sha256()
    size = 0
    while True:
        piece = response.read(READ_PIECE)
        if not piece:
            break
        size += len(piece)
        digest.update(piece)
    return size, digest.hexdigest()


def pattern_pieces(size: int) -> Iterator[bytes]:
    """``pattern_bytes(size)`` as 256 KiB pieces, from one reused block."""
    sent = 0
    while sent < size:
        piece = _SEND_BLOCK[: min(SEND_PIECE, size - sent)]
        sent += len(piece)
        yield piece


def chunked(pieces: Iterator[bytes]) -> Iterator[bytes]:
    """Frame each piece as one chunk, then the last chunk."""
    for piece in pieces:
        yield b"%x\r\n" % len(piece)
        yield piece
        yield b"\r\n"
    yield b"0\r\n\r\n"


@dataclass
class Proxy:
    """The module's lbx process in front of one backend, and its memory figures."""

    process: LbxProcess
    backend_address: str
    warm_hwm_kib: int
    transfers_done: set[str] = field(default_factory=set)

    @property
    def address(self) -> str:
        return self.process.address

    def check_memory(self, label: str) -> int:
        """Assert and print the peak RSS growth since the warm-up; returns the peak (KiB)."""
        hwm = self.process.rss_kib("VmHWM")
        growth = hwm - self.warm_hwm_kib
        message = (
            f"lbx VmHWM after warm-up {self.warm_hwm_kib} KiB, after {label} {hwm} KiB: "
            f"growth {growth} KiB (budget {RSS_BUDGET_KIB} KiB)"
        )
        print(message)
        assert growth < RSS_BUDGET_KIB, message
        return hwm


@pytest.fixture(scope="module")
def proxy() -> Iterator[Proxy]:
    """One backend and one lbx for the module; the warm-up peak RSS is measured once."""
    thread = BackendThread()
    try:
        backend = thread.start("big")
        with LbxProcess(
            "--plugin", "roundrobin", "--listen", "127.0.0.1:0", "--upstream", backend.address
        ) as process:
            conn = connect(process.address)
            try:
                conn.request("GET", "/bytes/65536")
                response = conn.getresponse()
                assert response.status == 200
                assert response.read() == _PATTERN
                conn.request("POST", "/echo", body=b"warm-up")
                response = conn.getresponse()
                assert response.status == 200
                assert json.loads(response.read())["body_size"] == len(b"warm-up")
            finally:
                conn.close()
            warm = process.rss_kib("VmHWM")
            print(f"lbx VmHWM after warm-up: {warm} KiB, VmRSS {process.rss_kib()} KiB")
            yield Proxy(process, backend.address, warm)
            assert process.proc is not None and process.proc.poll() is None, process.output
    finally:
        thread.close()


# -- the transfers ------------------------------------------------------------------------------


def download(proxy: Proxy, query: str) -> None:
    """GET /bytes/100MiB through lbx; check framing and content; then reuse the connection."""
    conn = connect(proxy.address)
    try:
        conn.request("GET", f"/bytes/{SIZE}{query}")
        response = conn.getresponse()
        assert response.status == 200
        assert response.version == 11
        assert response.getheader("X-Backend") == "big"
        if query == "":
            assert response.getheader("Content-Length") == str(SIZE)
            assert response.getheader("Transfer-Encoding") is None
        else:
            # Chunked from upstream, or close-delimited: re-framed chunked for an HTTP/1.1 client.
            assert response.getheader("Transfer-Encoding") == "chunked"
            assert response.getheader("Content-Length") is None
        assert response.getheader("Connection") != "close"
        size, digest = read_all(response)
        assert size == SIZE
        assert digest == expected_sha256(SIZE)
        # The body was framed correctly: the same client connection serves the next request.
        conn.request("GET", "/bytes/1000")
        again = conn.getresponse()
        assert again.status == 200
        assert again.read() == _PATTERN[:1000]
    finally:
        conn.close()


def download_http10(proxy: Proxy, query: str) -> None:
    """GET /bytes/100MiB as an HTTP/1.0 client: a body without length is close-delimited."""
    with raw_socket(proxy.address) as sock:
        sock.sendall(f"GET /bytes/{SIZE}{query} HTTP/1.0\r\nHost: old.test\r\n\r\n".encode())
        response = read_response(sock)
        assert response.status == 200
        assert response.getheader("Content-Length") is None
        assert response.getheader("Transfer-Encoding") is None
        assert response.getheader("Connection") == "close"
        size, digest = read_all(response)
        assert size == SIZE
        assert digest == expected_sha256(SIZE)
        assert sock.recv(1) == b"", "lbx must close the connection to end the body"


def upload(proxy: Proxy, framing: str) -> None:
    """POST 100 MiB to /echo through lbx from a generator over a raw socket; check what arrived."""
    if framing == "content-length":
        head_framing = b"Content-Length: %d\r\n" % SIZE
        body: Iterator[bytes] = pattern_pieces(SIZE)
    else:
        head_framing = b"Transfer-Encoding: chunked\r\n"
        body = chunked(pattern_pieces(SIZE))
    with raw_socket(proxy.address) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: upload.test\r\n" + head_framing + b"\r\n")
        for piece in body:
            sock.sendall(piece)
        response = read_response(sock, "POST")
        assert response.status == 200
        echo = json.loads(response.read())
    assert echo["method"] == "POST"
    assert echo["body_size"] == SIZE
    assert echo["body_sha256"] == expected_sha256(SIZE)
    upstream_framing = {name.lower(): value for name, value in echo["headers"]}
    if framing == "content-length":
        assert upstream_framing["content-length"] == str(SIZE)
        assert "transfer-encoding" not in upstream_framing
    else:
        assert upstream_framing["transfer-encoding"] == "chunked"
        assert "content-length" not in upstream_framing


TRANSFERS: dict[str, Callable[[Proxy], None]] = {
    "download-content-length": lambda proxy: download(proxy, ""),
    "download-chunked": lambda proxy: download(proxy, "?chunked=1"),
    "download-close-delimited": lambda proxy: download(proxy, "?close=1"),
    "download-chunked-http10": lambda proxy: download_http10(proxy, "?chunked=1"),
    "upload-content-length": lambda proxy: upload(proxy, "content-length"),
    "upload-chunked": lambda proxy: upload(proxy, "chunked"),
}


def run_transfer(proxy: Proxy, name: str) -> float:
    started = time.monotonic()
    TRANSFERS[name](proxy)
    elapsed = time.monotonic() - started
    proxy.transfers_done.add(name)
    print(f"{name}: 100 MiB in {elapsed:.2f} s")
    return elapsed


@pytest.mark.parametrize("name", [name for name in TRANSFERS if name.startswith("download")])
def test_download_100mib_intact(proxy: Proxy, name: str) -> None:
    """A 100 MiB download (Content-Length, chunked, close-delimited, HTTP/1.0) arrives intact."""
    run_transfer(proxy, name)
    proxy.check_memory(name)


@pytest.mark.parametrize("name", [name for name in TRANSFERS if name.startswith("upload")])
def test_upload_100mib_intact(proxy: Proxy, name: str) -> None:
    """A 100 MiB upload (Content-Length, chunked) reaches the backend intact via lbx."""
    run_transfer(proxy, name)
    proxy.check_memory(name)


def test_peak_rss_after_all_transfers(proxy: Proxy) -> None:
    """After every 100 MiB transfer (any not run yet runs now) lbx's peak RSS grew < 30 MiB."""
    for name in TRANSFERS:
        if name not in proxy.transfers_done:
            run_transfer(proxy, name)
    hwm = proxy.check_memory("all 100 MiB transfers")
    print(
        f"lbx peak RSS: warm-up {proxy.warm_hwm_kib / 1024:.1f} MiB, "
        f"after all transfers {hwm / 1024:.1f} MiB"
    )


# -- a slow client ------------------------------------------------------------------------------


def test_slow_client_is_not_buffered(
    backends: BackendThread, lbx: Callable[..., LbxProcess]
) -> None:
    """A client reading 100 MiB slowly makes lbx wait, not buffer; closing it leaves lbx healthy."""
    backend = backends.start("slow")
    process = lbx(
        "--plugin", "roundrobin", "--listen", "127.0.0.1:0", "--upstream", backend.address
    )
    with closing(connect(process.address)) as conn:
        conn.request("GET", "/bytes/1000")
        assert conn.getresponse().read() == _PATTERN[:1000]
    warm = process.rss_kib("VmHWM")

    sock = raw_socket(process.address)
    try:
        sock.sendall(f"GET /bytes/{SIZE} HTTP/1.1\r\nHost: slow.test\r\n\r\n".encode())
        response = read_response(sock)
        assert response.status == 200
        assert response.getheader("Content-Length") == str(SIZE)
        digest = hashlib.sha256()
        received = 0
        peak_rss = 0
        started = time.monotonic()
        while received < 20 * MiB:
            piece = response.read(64 * 1024)
            assert piece, "lbx ended the body early"
            received += len(piece)
            digest.update(piece)
            if received % MiB == 0:
                peak_rss = max(peak_rss, process.rss_kib("VmRSS"))
                time.sleep(0.1)  # the slow client: ~20 pauses, about 2 s in all
        slow_seconds = time.monotonic() - started
        assert digest.hexdigest() == expected_sha256(received)
        hwm = process.rss_kib("VmHWM")
    finally:
        sock.close()
    message = (
        f"slow client read {received // MiB} MiB in {slow_seconds:.1f} s; lbx VmHWM after "
        f"warm-up {warm} KiB, highest VmRSS meanwhile {peak_rss} KiB, VmHWM {hwm} KiB"
    )
    print(message)
    assert peak_rss - warm < RSS_BUDGET_KIB, message
    assert hwm - warm < RSS_BUDGET_KIB, message

    # The abandoned response cost lbx nothing lasting: the next request is answered in full.
    with closing(connect(process.address)) as conn:
        conn.request("GET", f"/bytes/{MiB}")
        response = conn.getresponse()
        assert response.status == 200
        size, digest_hex = read_all(response)
    assert (size, digest_hex) == (MiB, expected_sha256(MiB))
    assert process.proc is not None and process.proc.poll() is None


# -- a slow upstream ----------------------------------------------------------------------------


class StallingUpstream:
    """An HTTP/1.1 backend on threads: answers POSTs with the body's size and sha256 as JSON.

    For ``/stall`` it reads the request head, then stops reading until ``release`` is set.
    """

    def __init__(self) -> None:
        self.release = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(TIMEOUT)
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.closing = False
        self.threads: list[threading.Thread] = []
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    def _accept(self) -> None:
        while True:
            conn, _ = self.listener.accept()
            if self.closing:
                conn.close()
                return
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(TIMEOUT)
        with conn, conn.makefile("rb") as stream:
            while True:
                request_line = stream.readline()
                if not request_line:
                    return
                length = 0
                while (line := stream.readline()) not in (b"\r\n", b""):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                if request_line.split()[1] == b"/stall":
                    assert self.release.wait(TIMEOUT), "the test never released the upstream"
                digest = hashlib.sha256()
                left = length
                while left:
                    piece = stream.read(min(left, READ_PIECE))
                    if not piece:
                        return  # lbx cut the body short: the test sees no answer and fails
                    digest.update(piece)
                    left -= len(piece)
                body = json.dumps({"body_size": length, "body_sha256": digest.hexdigest()})
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(body), body.encode())
                )

    def close(self) -> None:
        self.release.set()
        self.closing = True
        socket.create_connection(self.listener.getsockname(), timeout=TIMEOUT).close()
        self._accepting.join(TIMEOUT)
        self.listener.close()
        for thread in self.threads:
            thread.join(TIMEOUT)


@pytest.fixture
def stalling_upstream() -> Iterator[StallingUpstream]:
    """A backend that can stop reading request bodies; its threads end with the test."""
    upstream = StallingUpstream()
    yield upstream
    upstream.close()


def test_upload_to_stalled_upstream_is_not_buffered(
    stalling_upstream: StallingUpstream, lbx: Callable[..., LbxProcess]
) -> None:
    """While the upstream stops reading, lbx stops reading the upload instead of buffering it."""
    process = lbx(
        "--plugin", "roundrobin", "--listen", "127.0.0.1:0", "--upstream", stalling_upstream.address
    )  # fmt: skip
    with closing(connect(process.address)) as conn:
        conn.request("POST", "/warm-up", body=b"warm-up")
        assert json.loads(conn.getresponse().read())["body_size"] == len(b"warm-up")
    warm = process.rss_kib("VmHWM")

    pieces = pattern_pieces(SIZE)
    with raw_socket(process.address) as sock:
        sock.sendall(
            b"POST /stall HTTP/1.1\r\nHost: stall.test\r\nContent-Length: %d\r\n\r\n" % SIZE
        )
        # Send until no byte has been taken for a second: lbx and the kernel buffers are full.
        sock.settimeout(1.0)
        sent = 0
        rest = b""
        for piece in pieces:
            view = memoryview(piece)
            try:
                while view:
                    count = sock.send(view)
                    sent += count
                    view = view[count:]
            except TimeoutError:
                rest = bytes(view)
                break
        stalled_rss = process.rss_kib("VmRSS")
        message = (
            f"upstream stalled: client got {sent / MiB:.1f} MiB in; lbx VmHWM after warm-up "
            f"{warm} KiB, VmRSS now {stalled_rss} KiB"
        )
        print(message)
        assert rest, "lbx took the whole 100 MiB while its upstream read nothing: " + message
        assert sent < 40 * MiB, message
        assert stalled_rss - warm < RSS_BUDGET_KIB, message

        # Once the upstream reads again, the whole body goes through intact.
        stalling_upstream.release.set()
        sock.settimeout(TIMEOUT)
        sock.sendall(rest)
        for piece in pieces:
            sock.sendall(piece)
        response = read_response(sock, "POST")
        assert response.status == 200
        echo = json.loads(response.read())
    assert echo == {"body_size": SIZE, "body_sha256": expected_sha256(SIZE)}
    hwm = process.rss_kib("VmHWM")
    assert hwm - warm < RSS_BUDGET_KIB, f"{message}; VmHWM at the end {hwm} KiB"


def nodelay(transport: asyncio.BaseTransport) -> int:
    sock = transport.get_extra_info("socket")
    return int(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))


async def nagle_settings() -> tuple[int, int]:
    """TCP_NODELAY of an in-process lbx's client connection (taken by lbx's ``Acceptor``, as
    ``lbx serve`` takes them) and of its upstream connection."""
    from lbx.acceptor import Acceptor
    from lbx.testing import DemoBackend, prepared_server

    backend = DemoBackend("a")
    await backend.start()
    service = prepared_server(["roundrobin"], [backend.address]).services[0]
    with socket.create_server(("127.0.0.1", 0)) as listening:
        acceptor = Acceptor(listening, service.protocol_factory, "test")
        acceptor.start(asyncio.get_running_loop())
        reader, writer = await asyncio.open_connection(*listening.getsockname())
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await reader.readuntil(b"\r\n\r\n")
        await reader.readuntil(b"\n")  # the demo body ends with its only newline
        (client,) = service.connections.open
        (upstream,) = service.connector.pool._lru
        settings = (nodelay(client.transport), nodelay(upstream.transport))
        writer.close()
        await writer.wait_closed()
        await service.connections.wait_closed()
        acceptor.close()
    service.connector.pool.close_all()
    await backend.stop()
    return settings


def test_no_byte_waits_for_nagle_on_either_side():
    """A response head must not wait for its body, nor a request head for an ACK: every TCP
    connection lbx accepts or opens has Nagle's algorithm off (uvloop sets it; lbx no longer
    makes a system call of its own for it on each connection)."""
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(nagle_settings()) == (1, 1)
