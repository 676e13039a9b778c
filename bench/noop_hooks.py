"""Every per-request hook of ``lbx/hookspecs.py`` as a no-op: the cost of the plugin system.

Loaded by ``bench/run.py --scenario b`` on top of scenario (a)'s command line::

    lbx serve --plugin roundrobin --plugin healthcheck --health-check tcp \
        --plugin contrib/host_header.py --plugin bench/noop_hooks.py --upstream ... --upstream ...

Awaitable hooks mix ``def`` and ``async def`` impls (both are allowed there); the sync hooks
(body filters, ``selection_key``, ``fail_to_connect``, ``error_while_proxy``) are ``def``.
Every impl returns what lets the request go on unchanged: ``upstream_peer`` and
``selection_key`` return None to defer to the next impl (round robin decides).
"""

from __future__ import annotations

from typing import Any

from lbx import Peer, ProxyError, RequestHeader, ResponseHeader, Session, hookimpl


@hookimpl
async def early_request_filter(session: Session, ctx: dict[str, Any]) -> None:
    return None


@hookimpl
def request_filter(session: Session, ctx: dict[str, Any]) -> bool | None:
    return None


@hookimpl
def request_body_filter(
    session: Session, body: bytes, end_of_stream: bool, ctx: dict[str, Any]
) -> bytes | None:
    return None


@hookimpl
async def proxy_upstream_filter(session: Session, ctx: dict[str, Any]) -> bool | None:
    return None


@hookimpl
def upstream_peer(session: Session, ctx: dict[str, Any]) -> Peer | None:
    return None


@hookimpl
def selection_key(session: Session, ctx: dict[str, Any]) -> bytes | None:
    return None


@hookimpl
def fail_to_connect(session: Session, peer: Peer, ctx: dict[str, Any], error: ProxyError) -> None:
    return None


@hookimpl
async def connected_to_upstream(
    session: Session, reused: bool, peer: Peer, ctx: dict[str, Any]
) -> None:
    return None


@hookimpl
def upstream_request_filter(
    session: Session, upstream_request: RequestHeader, ctx: dict[str, Any]
) -> None:
    return None


@hookimpl
def error_while_proxy(
    session: Session, peer: Peer, ctx: dict[str, Any], error: ProxyError, client_reused: bool
) -> None:
    return None


@hookimpl
async def upstream_response_filter(
    session: Session, upstream_response: ResponseHeader, ctx: dict[str, Any]
) -> None:
    return None


@hookimpl
def response_filter(
    session: Session, upstream_response: ResponseHeader, ctx: dict[str, Any]
) -> None:
    return None


@hookimpl
def response_body_filter(
    session: Session, body: bytes, end_of_stream: bool, ctx: dict[str, Any]
) -> bytes | None:
    return None


@hookimpl
async def fail_to_proxy(session: Session, ctx: dict[str, Any], error: ProxyError) -> int | None:
    return None


@hookimpl
async def logging(session: Session, ctx: dict[str, Any], error: ProxyError | None) -> None:
    return None
