"""Fixture plugin: an ``async def`` impl of the sync hook ``fail_to_connect`` (must be refused)."""

from __future__ import annotations

from lbx import ProxyError, hookimpl


@hookimpl
async def fail_to_connect(error: ProxyError) -> None:
    error.retry = True
