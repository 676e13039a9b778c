"""Fixture plugin: ``request_filter`` asks for ``request``, which the hook does not pass."""

from __future__ import annotations

from typing import Any

from lbx import hookimpl


@hookimpl
async def request_filter(session: Any, request: Any) -> None:
    return None
