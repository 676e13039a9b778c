"""Fixture plugin: one impl of every per-request hook, written as docs/hooks.md shows them for
an HTTP/1.1 request (tests/test_hook_phases.py runs it over HTTP/1.1 and HTTP/2).

Each impl notes its phase in ``ctx["phases"]`` (the body filters once, at the end of the body);
``logging`` writes them with the request on one line of the log.
"""

from __future__ import annotations

import logging as logs
from typing import Any

from lbx import ErrorSource, ProxyError, hookimpl

log = logs.getLogger("every_phase")


def seen(ctx: dict[str, Any], phase: str) -> None:
    ctx.setdefault("phases", []).append(phase)


@hookimpl
def early_request_filter(session, ctx):
    seen(ctx, "early_request_filter")
    if session.req_header.normalized_path == "/early":
        raise ProxyError.http_status(403, "refused early")


@hookimpl
async def request_filter(session, ctx):
    seen(ctx, "request_filter")
    if session.req_header.path == "/lbx-health":
        await session.respond(200, b"ok\n", {"Content-Type": "text/plain"})
        return True
    return None


@hookimpl
async def proxy_upstream_filter(session, ctx):
    seen(ctx, "proxy_upstream_filter")
    if session.req_header.method in ("GET", "HEAD", "POST"):
        return None
    await session.respond(405, b"read-only\n", {"Allow": "GET, HEAD, POST"})
    return False


@hookimpl
async def upstream_peer(session, ctx):
    seen(ctx, "upstream_peer")
    return None  # the service's load balancer


@hookimpl
def fail_to_connect(session, peer, ctx, error):
    seen(ctx, "fail_to_connect")
    log.warning("fail_to_connect: %s %s", peer.addr, error.etype.value)


@hookimpl
async def connected_to_upstream(reused, peer, ctx):
    seen(ctx, "connected_to_upstream")
    ctx["connection"] = "reused" if reused else "new"


@hookimpl
async def upstream_request_filter(session, upstream_request, ctx):
    seen(ctx, "upstream_request_filter")
    upstream_request.insert_header("X-Connection", ctx["connection"])
    upstream_request.insert_header("X-Client-Version", session.req_header.version)


@hookimpl
def request_body_filter(body, end_of_stream, ctx):
    if end_of_stream:
        seen(ctx, "request_body_filter")
    return body.upper()  # the same length


@hookimpl
def error_while_proxy(session, peer, ctx, error, client_reused):
    seen(ctx, "error_while_proxy")
    log.warning("error_while_proxy: %s reused=%s: %s", peer.addr, client_reused, error)


@hookimpl
async def upstream_response_filter(session, upstream_response, ctx):
    seen(ctx, "upstream_response_filter")
    upstream_response.insert_header("X-Upstream-Status", str(upstream_response.status))


@hookimpl
async def response_filter(session, upstream_response, ctx):
    seen(ctx, "response_filter")
    upstream_response.insert_header("X-Upstream", session.peer.addr)


@hookimpl
def response_body_filter(body, end_of_stream, ctx):
    if end_of_stream:
        seen(ctx, "response_body_filter")
    return None


@hookimpl
async def fail_to_proxy(session, ctx, error):
    seen(ctx, "fail_to_proxy")
    if error.source is ErrorSource.UPSTREAM and not session.response_written:
        await session.respond(503, b"try again later\n", {"Retry-After": "5"})
        return 0
    return None


@hookimpl
async def logging(session, ctx, error):
    seen(ctx, "logging")
    head = session.req_header
    log.warning(
        "logged %s %s HTTP/%s %s %d phases=%s error=%s",
        head.method,
        head.uri,
        head.version,
        session.response_status,
        session.body_bytes_sent,
        ",".join(ctx["phases"]),
        error.etype.value if error else None,
    )
