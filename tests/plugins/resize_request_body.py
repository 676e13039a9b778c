"""A request_body_filter that breaks its Content-Length contract on request: ``X-Resize: grow``
doubles each chunk, ``shrink`` keeps its first byte; without the field it keeps the body."""

from __future__ import annotations

from typing import Any

from lbx import Session, hookimpl


@hookimpl
def request_body_filter(
    session: Session, body: bytes, end_of_stream: bool, ctx: dict[str, Any]
) -> bytes | None:
    resize = session.req_header.headers.get("x-resize")
    if resize == "grow":
        return body + body
    if resize == "shrink":
        return body[:1]
    return None
