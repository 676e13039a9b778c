"""Fixture plugin: ``async def`` hooks that use what asyncio and anyio tie to the current task.

``request_filter`` enters ``asyncio.timeout`` and an anyio cancel scope and suspends inside
both; on ``/timeout`` it waits past a 50 ms timeout. Later hooks report, as response fields,
whether every hook of the request ran in one task, the context variable the request set, and
whether the timeout fired.
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

import anyio

from lbx import ResponseHeader, Session, hookimpl

path_seen: contextvars.ContextVar[str] = contextvars.ContextVar("path_seen", default="unset")


@hookimpl
async def request_filter(session: Session, ctx: dict[str, Any]) -> None:
    path_seen.set(session.req_header.uri)
    ctx["task"] = asyncio.current_task()
    async with asyncio.timeout(5):
        await asyncio.sleep(0)
    with anyio.fail_after(5):
        await anyio.sleep(0)
    if session.req_header.uri == "/timeout":
        try:
            async with asyncio.timeout(0.05):
                await asyncio.sleep(30)
        except TimeoutError:
            ctx["timed_out"] = True
    ctx["same_task"] = ctx["task"] is not None and asyncio.current_task() is ctx["task"]


@hookimpl
def upstream_response_filter(
    session: Session, upstream_response: ResponseHeader, ctx: dict[str, Any]
) -> None:
    same = ctx["same_task"] and asyncio.current_task() is ctx["task"]
    upstream_response.insert_header("X-Same-Task", "yes" if same else "no")
    upstream_response.insert_header("X-Path-Seen", path_seen.get())
    upstream_response.insert_header("X-Timed-Out", "yes" if ctx.get("timed_out") else "no")
