"""Sans-IO limits on what an HTTP/2 client sends, read from frame headers before any parsing.

The attacks HTTP/2 brings cost a client a few bytes and the server much more: a stream opened
and reset at once (rapid reset, CVE-2023-44487), endless CONTINUATION frames (2024), floods of
SETTINGS, PING, PRIORITY, RST_STREAM, WINDOW_UPDATE or empty DATA frames, a frame header that
announces megabytes. ``FrameGuard`` reads the 9-byte header of every frame a client sends,
counts each kind per second and bounds header blocks and frame sizes, so the connection is
refused (GOAWAY) before ``h2`` decodes or buffers anything. HPACK bombs (a small block that
decodes huge), flow-control violations and streams past the advertised limit are ``h2``'s own
checks (``lbx.h2`` sets their limits). docs/http2.md lists the limits and codes.

``send_within_windows`` is the other side of flow control, shared by both ends of lbx: DATA
sent only as the peer's windows allow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from h2.connection import H2Connection

PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
"""What an HTTP/2 client sends first (RFC 9113 3.4)."""

ENHANCE_YOUR_CALM: Final = 0xB
FRAME_SIZE_ERROR: Final = 0x6

DATA: Final = 0x0
HEADERS: Final = 0x1
PRIORITY: Final = 0x2
RST_STREAM: Final = 0x3
SETTINGS: Final = 0x4
PUSH_PROMISE: Final = 0x5
PING: Final = 0x6
GOAWAY: Final = 0x7
WINDOW_UPDATE: Final = 0x8
CONTINUATION: Final = 0x9
END_STREAM: Final = 0x1
ACK: Final = 0x1
END_HEADERS: Final = 0x4

# What is counted per second (each kind on its own).
_KINDS: Final = ("SETTINGS", "PING", "PRIORITY", "RST_STREAM", "unknown", "empty", "WINDOW_UPDATE")
_SETTINGS: Final = 0
_PING: Final = 1
_PRIORITY: Final = 2
_RESET: Final = 3
_UNKNOWN: Final = 4
_EMPTY: Final = 5
_WINDOW: Final = 6

MAX_FRAME_SIZE: Final = 16384
"""The largest frame a client may send (SETTINGS_MAX_FRAME_SIZE, RFC 9113's minimum)."""


class FrameGuard:
    """Counts and bounds a client's frames from their headers, as the bytes arrive.

    ``feed`` returns None, or ``(error code, reason)`` once a limit is passed: the connection
    is then answered GOAWAY with that code and closed.
    """

    __slots__ = (
        "_block",
        "_counts",
        "_head",
        "_limits",
        "_max_block",
        "_preface",
        "_skip",
        "_window",
    )

    def __init__(
        self,
        control_per_second: int,
        empty_per_second: int,
        window_updates_per_second: int,
        max_header_block: int,
        now: float,
    ) -> None:
        c = control_per_second
        self._limits = [c, c, c, c, c, empty_per_second, window_updates_per_second]
        self._counts = [0] * len(_KINDS)
        self._window = now
        self._max_block = max_header_block
        self._preface = len(PREFACE)
        """Preface bytes still to come (``h2`` checks them)."""
        self._head = b""
        """The part of a frame header that arrived so far."""
        self._skip = 0
        """Payload bytes of the current frame still to come."""
        self._block = -1
        """Bytes of the header block being received (HEADERS, then CONTINUATION), -1: none."""

    def feed(self, data: bytes, now: float) -> tuple[int, str] | None:
        """Read the frame headers in ``data`` (the next bytes from the client)."""
        if now - self._window >= 1.0:
            self._window = now
            self._counts = [0] * len(_KINDS)
        pos = 0
        size = len(data)
        if self._preface:
            taken = min(self._preface, size)
            self._preface -= taken
            pos = taken
        while pos < size:
            if self._skip:
                taken = min(self._skip, size - pos)
                self._skip -= taken
                pos += taken
                continue
            head = self._head
            piece = data[pos : pos + 9 - len(head)]
            pos += len(piece)
            head += piece
            if len(head) < 9:
                self._head = head
                break
            self._head = b""
            length = int.from_bytes(head[:3], "big")
            self._skip = length
            problem = self._frame(head[3], head[4], length)
            if problem is not None:
                return problem
        return None

    def data_sent(self, frames: int) -> None:
        """lbx sent ``frames`` DATA frames: a client acknowledging them may send that many
        WINDOW_UPDATE frames more (two each, stream and connection) this second."""
        self._counts[_WINDOW] -= 2 * frames

    def _frame(self, kind: int, flags: int, length: int) -> tuple[int, str] | None:
        if length > MAX_FRAME_SIZE:
            return FRAME_SIZE_ERROR, f"a frame of {length} bytes (at most {MAX_FRAME_SIZE})"
        counted = -1
        if kind == DATA:
            if length == 0 and not flags & END_STREAM:
                counted = _EMPTY
        elif kind == HEADERS:
            if not flags & END_HEADERS:
                self._block = length
            elif length > self._max_block:
                return ENHANCE_YOUR_CALM, "header block too large"
        elif kind == CONTINUATION:
            if self._block < 0:
                return None  # h2 answers a CONTINUATION out of place (PROTOCOL_ERROR)
            self._block += length
            if self._block > self._max_block:
                return ENHANCE_YOUR_CALM, (
                    f"header block over {self._max_block} bytes (CONTINUATION flood)"
                )
            if flags & END_HEADERS:
                self._block = -1
            elif length == 0:
                counted = _EMPTY
        elif kind == SETTINGS:
            counted = -1 if flags & ACK else _SETTINGS
        elif kind == PING:
            counted = -1 if flags & ACK else _PING
        elif kind == RST_STREAM:
            counted = _RESET
        elif kind == PRIORITY:
            counted = _PRIORITY
        elif kind == WINDOW_UPDATE:
            counted = _WINDOW
        elif kind not in (PUSH_PROMISE, GOAWAY):
            counted = _UNKNOWN
        if counted < 0:
            return None
        count = self._counts[counted] + 1
        self._counts[counted] = count
        if count > self._limits[counted]:
            return ENHANCE_YOUR_CALM, (
                f"more than {self._limits[counted]} {_KINDS[counted]} frames in a second"
            )
        return None


def send_within_windows(h2: H2Connection, stream_id: int, outbox: list[bytes]) -> tuple[int, int]:
    """Queue DATA on ``stream_id`` from the front of ``outbox`` as far as the stream's and the
    connection's flow-control windows and the frame size allow; what does not fit stays in
    ``outbox`` (a chunk may be split). Returns (bytes, frames) queued. ``h2``'s errors (the
    peer closed the stream) propagate."""
    sent = frames = 0
    while outbox:
        window = min(h2.local_flow_control_window(stream_id), h2.max_outbound_frame_size)
        if window <= 0:
            break
        chunk = outbox[0]
        if len(chunk) > window:
            outbox[0] = chunk[window:]
            chunk = chunk[:window]
        else:
            outbox.pop(0)
        h2.send_data(stream_id, chunk)
        sent += len(chunk)
        frames += 1
    return sent, frames
