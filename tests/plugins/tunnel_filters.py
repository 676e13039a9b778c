"""Body filters on a WebSocket tunnel: upper-case what the client sends, count both directions.

Logs the totals each filter saw when its direction ended (``end_of_stream``).
"""

import logging

from lbx import hookimpl

log = logging.getLogger("lbx.test")


@hookimpl
def request_body_filter(session, body, end_of_stream, ctx):
    ctx["up"] = ctx.get("up", 0) + len(body)
    if end_of_stream:
        log.warning("request_body_filter end: %d bytes", ctx["up"])
    if session.upgrade is not None and body:
        # WebSocket frames from a client are masked: flip the case bit through the mask.
        return _uppercase_masked_frames(body)
    return None


@hookimpl
def response_body_filter(session, body, end_of_stream, ctx):
    ctx["down"] = ctx.get("down", 0) + len(body)
    if end_of_stream:
        log.warning("response_body_filter end: %d bytes", ctx["down"])


def _uppercase_masked_frames(data):
    """Upper-case the ASCII letters of small masked text frames (one frame per chunk here)."""
    out = bytearray(data)
    if len(out) < 6 or out[0] & 0x0F != 1 or out[1] & 0x7F > 125:
        return None
    length = out[1] & 0x7F
    mask = out[2:6]
    for index in range(length):
        char = out[6 + index] ^ mask[index % 4]
        if 97 <= char <= 122:
            out[6 + index] = (char - 32) ^ mask[index % 4]
    return bytes(out)
