"""The attacks HTTP/2 brings, each against a real lbx with a raw frame client: the limit, the
error code lbx answers with, and lbx's memory staying flat (VmRSS of the process).

Every attack runs ``ROUNDS`` times on new connections, so what one costs lbx would add up.
The limits are the service's defaults (docs/http2.md): 128 concurrent streams, 100 frames of
each control kind per second, 100 empty frames per second, header blocks within
``max_header_size``.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable, Iterator

import pytest
from h2.errors import ErrorCodes
from hpack import Encoder
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from tests.h2_helpers import (
    PREFACE,
    H2Client,
    frames_until_close,
    goaway_code,
    host_port,
    parse_frames,
    raw_connection,
    read_frames,
)

from lbx.testing import BackendThread, DemoBackend, InProcessProxy, LbxProcess

ROUNDS = 20
BOTH = ("END_HEADERS", "END_STREAM")
RSS_BUDGET_KIB = 16 * 1024
TIMEOUT = 60.0


@pytest.fixture(scope="module")
def h2c(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LbxProcess, DemoBackend]]:
    import yaml

    thread = BackendThread()
    try:
        backend = thread.start("a")
        conf = tmp_path_factory.mktemp("attacks") / "lbx.yaml"
        service = {"listen": ["127.0.0.1:0"], "h2c": True, "upstreams": [backend.address]}
        conf.write_text(yaml.safe_dump({"plugins": ["roundrobin"], "services": [service]}))
        with LbxProcess("-c", str(conf)) as process:
            with H2Client(process.address) as client:  # warm-up
                for _ in range(20):
                    assert client.get("/").status == 200
            yield process, backend
    finally:
        thread.close()


def wait_until(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def fields(path: str = "/", method: str = "GET") -> list[tuple[bytes, bytes]]:
    return [
        (b":method", method.encode()),
        (b":scheme", b"http"),
        (b":authority", b"x"),
        (b":path", path.encode()),
    ]


def attack(process: LbxProcess, payload: Callable[[], bytes]) -> list[int | None]:
    """Send ``payload()`` on ``ROUNDS`` new connections; the GOAWAY code of each. lbx must
    still serve afterwards, with its memory within the budget."""
    before = process.rss_kib("VmRSS")
    codes = []
    for _ in range(ROUNDS):
        sock = raw_connection(process.address)
        try:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(payload())  # lbx may close while the rest is on its way
            codes.append(goaway_code(frames_until_close(sock)))
        finally:
            sock.close()
    after = process.rss_kib("VmRSS")
    print(f"lbx VmRSS before {before} KiB, after {ROUNDS} attacks {after} KiB")
    assert after - before < RSS_BUDGET_KIB
    with H2Client(process.address) as client:
        assert client.get("/").status == 200
    return codes


def encoded_headers(path: str = "/", method: str = "GET") -> bytes:
    return Encoder().encode(fields(path, method))


def test_rapid_reset(h2c: tuple[LbxProcess, DemoBackend]) -> None:
    """CVE-2023-44487: streams opened and reset at once. Past 100 RST_STREAM frames in a second
    the connection gets GOAWAY ENHANCE_YOUR_CALM; few requests ever reach the backend."""
    process, backend = h2c
    served = backend.requests

    def payload() -> bytes:
        encoder = Encoder()
        out = b""
        for index in range(500):
            stream_id = 1 + 2 * index
            headers = HeadersFrame(stream_id, encoder.encode(fields("/sleep/0.5")))
            headers.flags.add("END_HEADERS")
            headers.flags.add("END_STREAM")
            reset = RstStreamFrame(stream_id)
            reset.error_code = ErrorCodes.CANCEL
            out += headers.serialize() + reset.serialize()
        return out

    codes = attack(process, payload)
    assert codes == [ErrorCodes.ENHANCE_YOUR_CALM] * ROUNDS
    reached = backend.requests - served
    print(f"{reached} of {500 * ROUNDS} requests reached the backend")
    assert reached <= 128 * ROUNDS


def test_continuation_flood(h2c: tuple[LbxProcess, DemoBackend]) -> None:
    """2024's CONTINUATION flood: a header block that never ends. Past ``max_header_size``
    bytes of block, GOAWAY ENHANCE_YOUR_CALM, before anything is decoded."""
    process, _ = h2c

    def payload() -> bytes:
        start = HeadersFrame(1, encoded_headers())
        out = start.serialize()
        for _ in range(200):
            out += ContinuationFrame(1, b"\x00" * 1000).serialize()
        return out

    assert attack(process, payload) == [ErrorCodes.ENHANCE_YOUR_CALM] * ROUNDS


def test_empty_continuation_flood(h2c: tuple[LbxProcess, DemoBackend]) -> None:
    """Empty CONTINUATION frames count as empty frames: ENHANCE_YOUR_CALM past 100 a second."""
    process, _ = h2c

    def payload() -> bytes:
        out = HeadersFrame(1, encoded_headers()).serialize()
        return out + ContinuationFrame(1, b"").serialize() * 300

    assert attack(process, payload) == [ErrorCodes.ENHANCE_YOUR_CALM] * ROUNDS


@pytest.mark.parametrize(
    "frame",
    [
        SettingsFrame(0),
        PingFrame(0, b"12345678"),
        PriorityFrame(1),
        WindowUpdateFrame(1, window_increment=1),
    ],
    ids=["SETTINGS", "PING", "PRIORITY", "WINDOW_UPDATE"],
)
def test_control_frame_floods(h2c: tuple[LbxProcess, DemoBackend], frame: object) -> None:
    """SETTINGS, PING, PRIORITY and WINDOW_UPDATE floods (each answered or processed by a
    server that accepts them): GOAWAY ENHANCE_YOUR_CALM past the per-second limit."""
    process, _ = h2c
    prefix = b""
    if isinstance(frame, WindowUpdateFrame):
        headers = HeadersFrame(1, encoded_headers("/sleep/1", "POST"))
        headers.flags.add("END_HEADERS")
        prefix = headers.serialize()
    count = 2000 if isinstance(frame, WindowUpdateFrame) else 300
    data = frame.serialize()  # type: ignore[attr-defined]
    assert attack(process, lambda: prefix + data * count) == [ErrorCodes.ENHANCE_YOUR_CALM] * ROUNDS


def test_empty_data_flood(h2c: tuple[LbxProcess, DemoBackend]) -> None:
    """Empty DATA frames on an open request stream: ENHANCE_YOUR_CALM past 100 a second."""
    process, _ = h2c

    def payload() -> bytes:
        headers = HeadersFrame(1, encoded_headers("/echo", "POST"))
        headers.flags.add("END_HEADERS")
        return headers.serialize() + DataFrame(1, b"").serialize() * 300

    assert attack(process, payload) == [ErrorCodes.ENHANCE_YOUR_CALM] * ROUNDS


def test_hpack_bomb(h2c: tuple[LbxProcess, DemoBackend]) -> None:
    """A 4 KB field put in the HPACK table, then a block of one-byte references to it: the
    decoded list passes SETTINGS_MAX_HEADER_LIST_SIZE long before the block ends. h2's
    decoder stops there: GOAWAY ENHANCE_YOUR_CALM."""
    process, _ = h2c

    def payload() -> bytes:
        encoder = Encoder()
        first = HeadersFrame(1, encoder.encode([*fields(), (b"x-big", b"a" * 4000)]), flags=BOTH)
        index = 62  # the newest dynamic-table entry
        bomb = encoder.encode(fields()) + bytes([0x80 | index]) * 2000
        second = HeadersFrame(3, bomb, flags=BOTH)
        return first.serialize() + second.serialize()

    assert attack(process, payload) == [ErrorCodes.ENHANCE_YOUR_CALM] * ROUNDS


def test_stream_flow_control_violation() -> None:
    """DATA past the stream's window (65,535 bytes, none of it acknowledged yet): GOAWAY
    FLOW_CONTROL_ERROR, and the connection and its stream are gone. In-process, so that the
    whole burst is one read (over a socket, lbx may acknowledge between two reads)."""
    headers = HeadersFrame(1, encoded_headers("/echo", "POST"), flags=["END_HEADERS"])
    burst = headers.serialize() + DataFrame(1, b"x" * 16384).serialize() * 5
    proxy = InProcessProxy(h2c=True)
    try:
        for _ in range(ROUNDS):
            client = proxy.client()
            client.send(PREFACE + SettingsFrame(0).serialize() + burst)
            frames = parse_frames(client.received)
            assert goaway_code(frames) == ErrorCodes.FLOW_CONTROL_ERROR
            client.close()
        assert not proxy.service.connections.open  # nothing left of the 20 connections
        assert not proxy.errors
    finally:
        proxy.close()


def test_connection_window_overflow(h2c: tuple[LbxProcess, DemoBackend]) -> None:
    """A WINDOW_UPDATE that takes the connection window past 2^31-1: FLOW_CONTROL_ERROR."""
    process, _ = h2c
    update = WindowUpdateFrame(0, window_increment=2**31 - 1).serialize()
    assert attack(process, lambda: update) == [ErrorCodes.FLOW_CONTROL_ERROR] * ROUNDS


def test_oversized_frame(h2c: tuple[LbxProcess, DemoBackend]) -> None:
    """A frame header announcing 16 MiB: FRAME_SIZE_ERROR at once, nothing buffered."""
    process, _ = h2c
    header = ((16 << 20) - 1).to_bytes(3, "big") + b"\x00\x00\x00\x00\x00\x01"
    assert attack(process, lambda: header + b"x" * 1000) == [ErrorCodes.FRAME_SIZE_ERROR] * ROUNDS


def test_too_many_concurrent_streams(h2c: tuple[LbxProcess, DemoBackend]) -> None:
    """The 129th request while 128 run is refused alone (RST_STREAM REFUSED_STREAM, RFC 9113
    5.1.2); the 128 are answered and the connection goes on."""
    process, backend = h2c
    sock = raw_connection(process.address)
    encoder = Encoder()
    try:
        frames = read_frames(sock)
        assert isinstance(next(frames), SettingsFrame)  # lbx's SETTINGS: acknowledged
        out = SettingsFrame(0, flags=["ACK"]).serialize()
        for index in range(128):  # held long enough that all run at once on a busy machine
            out += HeadersFrame(
                1 + 2 * index, encoder.encode(fields("/sleep/5")), flags=BOTH
            ).serialize()
        sock.sendall(out)
        wait_until(lambda: backend.sleeping == 128)
        sock.sendall(HeadersFrame(257, encoder.encode(fields("/")), flags=BOTH).serialize())
        ended: set[int] = set()
        resets: dict[int, int] = {}
        while len(ended) + len(resets) < 129:
            frame = next(frames)
            if isinstance(frame, RstStreamFrame):
                resets[frame.stream_id] = frame.error_code
            elif isinstance(frame, (HeadersFrame, DataFrame)) and "END_STREAM" in frame.flags:
                ended.add(frame.stream_id)
            elif isinstance(frame, GoAwayFrame):
                raise AssertionError(f"GOAWAY {frame.error_code}")
    finally:
        sock.close()
    assert resets == {257: ErrorCodes.REFUSED_STREAM}
    assert ended == {1 + 2 * index for index in range(128)}


def test_zero_window_client_is_bounded(h2c: tuple[LbxProcess, DemoBackend]) -> None:
    """A client that sets its window to 0 and asks for 100 MiB on 32 streams: lbx holds at most
    its per-stream buffer, pauses each backend connection, and its memory stays bounded."""
    process, backend = h2c
    before = process.rss_kib("VmRSS")
    sock = socket.create_connection(host_port(process.address), timeout=TIMEOUT)
    try:
        settings = SettingsFrame(0, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 0})
        out = PREFACE + settings.serialize()
        encoder = Encoder()
        for index in range(32):
            path = f"/bytes/{100 << 20}"
            headers = HeadersFrame(1 + 2 * index, encoder.encode(fields(path)), flags=BOTH)
            out += headers.serialize()
        sock.sendall(out)
        wait_until(lambda: sum(not c.writable.is_set() for c in backend.connections) >= 32)
        during = process.rss_kib("VmRSS")
    finally:
        sock.close()
    print(f"lbx VmRSS before {before} KiB, with 32 stalled 100 MiB responses {during} KiB")
    assert during - before < RSS_BUDGET_KIB
    with H2Client(process.address) as client:
        assert client.get("/").status == 200
