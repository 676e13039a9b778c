"""A raw HTTP/2 client for tests: python-hyper's ``h2`` over a blocking socket, plus hyperframe
for frames ``h2`` would refuse to send (the attacks), and a reader of what lbx sends back."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
)
from h2.settings import SettingCodes
from hyperframe.frame import Frame, GoAwayFrame, RstStreamFrame

TIMEOUT = 30.0
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


@dataclass
class Reply:
    """One stream's answer."""

    status: int = 0
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    data: bytearray = field(default_factory=bytearray)
    trailers: list[tuple[bytes, bytes]] = field(default_factory=list)
    reset: int | None = None
    """The RST_STREAM code, when the stream was reset."""

    @property
    def body(self) -> bytes:
        return bytes(self.data)

    def get(self, name: str) -> bytes | None:
        key = name.encode()
        return next((v for n, v in self.headers if n == key), None)


class H2Client:
    """One HTTP/2 connection (prior knowledge, or TLS with ALPN h2)."""

    def __init__(
        self,
        address: str,
        *,
        tls: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        window: int | None = None,
        read_size: int = 65536,
    ) -> None:
        raw = socket.create_connection(host_port(address), timeout=TIMEOUT)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # WINDOW_UPDATEs go at once
        if tls is not None:
            tls.set_alpn_protocols(["h2"])
            raw = tls.wrap_socket(raw, server_hostname=server_hostname)
            assert raw.selected_alpn_protocol() == "h2"
        self.sock = raw
        self.read_size = read_size
        self.conn = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        if window is not None:
            self.conn.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: window})
        self.conn.initiate_connection()
        self.flush()
        self.replies: dict[int, Reply] = {}
        self.ended: set[int] = set()
        self.goaway: ConnectionTerminated | None = None
        self.closed = False

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def request(
        self,
        path: str = "/",
        *,
        method: str = "GET",
        authority: str = "x",
        headers: list[tuple[str, str]] | None = None,
        body: bytes | None = None,
        end: bool = True,
    ) -> int:
        """Send a request (its body as the windows allow); returns the stream id."""
        stream_id = self.conn.get_next_available_stream_id()
        fields = [
            (":method", method),
            (":scheme", "http"),
            (":authority", authority),
            (":path", path),
            *(headers or []),
        ]
        encoded = [(n.encode(), v.encode()) for n, v in fields]
        self.conn.send_headers(stream_id, encoded, end_stream=end and body is None)
        self.replies[stream_id] = Reply()
        self.flush()
        if body is not None:
            self.send_body(stream_id, body, end=end)
        return stream_id

    def send_body(self, stream_id: int, body: bytes, *, end: bool = True) -> None:
        view = memoryview(body)
        while view:
            window = min(
                self.conn.local_flow_control_window(stream_id), self.conn.max_outbound_frame_size
            )
            if window <= 0:
                self.read_events()
                continue
            last = end and window >= len(view)
            # The last frame ends the stream, as curl's does: an END_STREAM of its own could
            # arrive after the response, and the request's end (its body filter) after logging.
            self.conn.send_data(stream_id, bytes(view[:window]), end_stream=last)
            view = view[window:]
            self.flush()
            if last:
                return
        if end:
            self.conn.end_stream(stream_id)
            self.flush()

    def read_events(self) -> list[Any]:
        """One read from the socket and the events it brought ([] once closed)."""
        try:
            data = self.sock.recv(self.read_size)
        except ConnectionResetError:
            data = b""
        if not data:
            self.closed = True
            return []
        events = self.conn.receive_data(data)
        for event in events:
            reply = self.replies.get(getattr(event, "stream_id", 0) or 0)
            if isinstance(event, ResponseReceived) and reply is not None:
                reply.headers = list(event.headers)
                reply.status = int(dict(event.headers)[b":status"])
            elif isinstance(event, DataReceived) and reply is not None:
                reply.data += event.data
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, TrailersReceived) and reply is not None:
                reply.trailers = list(event.headers)
            elif isinstance(event, StreamEnded):
                self.ended.add(event.stream_id)
            elif isinstance(event, StreamReset):
                if reply is not None:
                    reply.reset = event.error_code
                self.ended.add(event.stream_id)
            elif isinstance(event, ConnectionTerminated):
                self.goaway = event
        self.flush()
        return events

    def response(self, stream_id: int) -> Reply:
        """Read until the stream ended (or was reset); its reply."""
        while stream_id not in self.ended:
            if self.closed:
                raise ConnectionError(f"closed before stream {stream_id} ended")
            self.read_events()
        return self.replies[stream_id]

    def get(self, path: str = "/", **kwargs: Any) -> Reply:
        return self.response(self.request(path, **kwargs))

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> H2Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def raw_connection(address: str) -> socket.socket:
    """A plaintext socket that has sent the preface and an empty SETTINGS frame."""
    sock = socket.create_connection(host_port(address), timeout=TIMEOUT)
    sock.sendall(PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
    return sock


def read_frames(sock: socket.socket) -> Iterator[Frame]:
    """The frames lbx sends, as they arrive (ends when it closes)."""
    data = b""
    while True:
        while len(data) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(data[:9]))
            if len(data) < 9 + length:
                break
            frame.parse_body(memoryview(data[9 : 9 + length]))
            data = data[9 + length :]
            yield frame
        chunk = sock.recv(65536)
        if not chunk:
            return
        data += chunk


def frames_until_close(sock: socket.socket) -> list[Frame]:
    """Every frame lbx sends until a GOAWAY, or until it closes the connection."""
    frames = []
    try:
        for frame in read_frames(sock):
            frames.append(frame)
            if isinstance(frame, GoAwayFrame):
                break
    except ConnectionResetError:
        pass
    return frames


def parse_frames(data: bytes) -> list[Frame]:
    """The whole frames in ``data``."""
    frames = []
    while len(data) >= 9:
        frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        if len(data) < 9 + length:
            break
        frame.parse_body(memoryview(data[9 : 9 + length]))
        frames.append(frame)
        data = data[9 + length :]
    return frames


def goaway_code(frames: list[Frame]) -> int | None:
    """The error code of the (last) GOAWAY among ``frames``."""
    codes = [frame.error_code for frame in frames if isinstance(frame, GoAwayFrame)]
    return codes[-1] if codes else None


def reset_codes(frames: list[Frame]) -> list[int]:
    return [frame.error_code for frame in frames if isinstance(frame, RstStreamFrame)]
