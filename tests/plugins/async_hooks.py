"""Fixture plugin: ``async def`` and ``def`` impls of awaitable hooks, each deferring."""

from __future__ import annotations

from typing import Any

from lbx import Peer, hookimpl


@hookimpl
async def request_filter(ctx: dict[str, Any]) -> bool | None:
    ctx.setdefault("calls", []).append("async_hooks.request_filter")
    return None


@hookimpl
async def upstream_peer(ctx: dict[str, Any]) -> Peer | None:
    ctx.setdefault("calls", []).append("async_hooks.upstream_peer")
    return None


@hookimpl
def logging(ctx: dict[str, Any]) -> None:
    ctx.setdefault("calls", []).append("async_hooks.logging")
