"""Fixture plugin: an impl named ``upstreams_peer``, which is not a hook (must be refused)."""

from __future__ import annotations

from typing import Any

from lbx import hookimpl


@hookimpl
async def upstreams_peer(ctx: dict[str, Any]) -> None:
    return None
