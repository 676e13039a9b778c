"""Fixture plugin: plain ``def`` hooks that pass a context variable from the request's first
phase to its response (which resumes in the upstream connection's callback)."""

from __future__ import annotations

import contextvars
from typing import Any

from lbx import ResponseHeader, Session, hookimpl

path_seen: contextvars.ContextVar[str] = contextvars.ContextVar("path_seen", default="unset")


@hookimpl
def request_filter(session: Session, ctx: dict[str, Any]) -> None:
    path_seen.set(session.req_header.uri)


@hookimpl
def response_filter(
    session: Session, upstream_response: ResponseHeader, ctx: dict[str, Any]
) -> None:
    upstream_response.insert_header("X-Path-Seen", path_seen.get())
