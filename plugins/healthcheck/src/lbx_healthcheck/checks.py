"""The active checks: TCP connect (with TLS and SNI when the service uses TLS) and HTTP.

A check returns None when the backend is healthy, or the reason it is not. Checks never raise
and never block: everything is awaited on the event loop, and the caller bounds each check with
the configured timeout.
"""

from __future__ import annotations

import contextlib
import inspect
import ssl
from collections.abc import AsyncGenerator, Collection
from typing import cast

import anyio
import httpcore

from lbx import Backend, Headers, ServiceConfig, upstream_tls_context
from lbx_healthcheck.network import open_stream
from lbx_healthcheck.settings import HealthCheckSettings

USER_AGENT = b"lbx-healthcheck/0.1"
DRAIN_LIMIT = 64 * 1024
"""Body bytes a check reads to keep its connection; a longer body closes it instead."""


def _tls_context(service: ServiceConfig, ca_file: str | None) -> ssl.SSLContext | None:
    """The context the proxy uses for this service's upstreams (None without ``tls``)."""
    if not service.tls:
        return None
    return upstream_tls_context(service.verify_cert, service.verify_hostname, ca_file)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not accepted: {exc.verify_message or exc.reason}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc.reason or exc}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    cause = exc.__cause__ or exc.__context__
    if isinstance(exc, httpcore.NetworkError) and cause is not None and cause is not exc:
        return _describe(cause)
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class TcpCheck:
    """Connect (and complete the TLS handshake when the service uses TLS), then close."""

    def __init__(
        self, settings: HealthCheckSettings, service: ServiceConfig, ca_file: str | None
    ) -> None:
        self.settings = settings
        self.service = service
        self.ssl_context = _tls_context(service, ca_file)

    async def __call__(self, backend: Backend) -> str | None:
        tls = self.ssl_context
        sni = (self.service.sni or backend.host or "localhost") if tls else None
        port = self.settings.port or backend.port
        try:
            stream = await open_stream(backend.host or "", port, backend.unix_path, tls, sni)
        except Exception as exc:
            return f"tcp check failed: {_describe(exc)}"
        await stream.aclose()
        return None

    async def retain(self, backends: Collection[Backend]) -> None:
        """Nothing is kept between TCP checks."""


class _Target:
    """What an HTTP check keeps per backend: where to connect, the request (built once) and the
    connection of the previous check."""

    __slots__ = ("connection", "host", "origin", "port", "request", "sni", "unix_path")

    def __init__(
        self, backend: Backend, port: int, sni: str | None, request: httpcore.Request
    ) -> None:
        self.host = backend.host or ""
        self.port = port
        self.unix_path = backend.unix_path
        self.sni = sni
        self.request = request
        self.origin = request.url.origin
        self.connection: httpcore.AsyncHTTP11Connection | None = None
        """Kept alive since the last check (``reuse_connection``), None when there is none."""


class HttpCheck:
    """One request per check; with ``reuse_connection`` on the connection of the previous check.

    A kept connection is used only if the backend did not close it meanwhile. If the request on it
    fails all the same (the backend closed it at that very moment, at the end of its keep-alive
    timeout), the check tries once more on a new connection, which alone gives the verdict. A
    connection that failed or timed out, or whose response body is longer than ``DRAIN_LIMIT``,
    is closed, never kept.
    """

    def __init__(
        self, settings: HealthCheckSettings, service: ServiceConfig, ca_file: str | None
    ) -> None:
        self.settings = settings
        self.service = service
        self.scheme = b"https" if service.tls else b"http"
        self.ssl_context = _tls_context(service, ca_file)
        self.method = settings.method.encode("ascii")
        self.target = settings.path.encode("latin-1")
        self.summary = f"http check {settings.method} {settings.path}"
        self.targets: dict[Backend, _Target] = {}

    def host_header(self, backend: Backend, port: int) -> str:
        """``host:`` of the check, else the service's ``host``, else its ``sni``, else the
        backend's address (with the port override)."""
        host = self.settings.host or self.service.host or self.service.sni
        if host:
            return host
        if backend.host is None:
            return "localhost"
        return f"[{backend.host}]:{port}" if ":" in backend.host else f"{backend.host}:{port}"

    def _target(self, backend: Backend) -> _Target:
        port = self.settings.port or backend.port
        host = backend.host.encode("ascii") if backend.host is not None else b"localhost"
        if backend.unix_path is not None:
            port = 443 if self.service.tls else 80
        headers = [
            (b"Host", self.host_header(backend, port).encode("latin-1")),
            (b"User-Agent", USER_AGENT),
        ]
        if not self.settings.reuse_connection:
            headers.append((b"Connection", b"close"))
        url = httpcore.URL(scheme=self.scheme, host=host, port=port, target=self.target)
        request = httpcore.Request(self.method, url, headers=headers)
        sni = (self.service.sni or backend.host or "localhost") if self.service.tls else None
        target = self.targets[backend] = _Target(backend, port, sni, request)
        return target

    async def __call__(self, backend: Backend) -> str | None:
        target = self.targets.get(backend) or self._target(backend)
        kept, target.connection = target.connection, None
        if kept is not None:
            if not kept.has_expired():
                try:
                    return await self._exchange(target, kept)
                except Exception:
                    pass  # closed by the backend as it was reused: the new connection decides
            else:
                await kept.aclose()  # the backend closed it while idle
        try:
            stream = await open_stream(
                target.host, target.port, target.unix_path, self.ssl_context, target.sni
            )
            return await self._exchange(
                target, httpcore.AsyncHTTP11Connection(target.origin, stream)
            )
        except Exception as exc:
            return f"{self.summary} failed: {_describe(exc)}"

    async def _exchange(
        self, target: _Target, connection: httpcore.AsyncHTTP11Connection
    ) -> str | None:
        """The request on ``connection`` and the verdict on its response; transport and protocol
        errors are raised. The connection is kept in ``target`` if it can carry the next check,
        else closed."""
        reuse = self.settings.reuse_connection
        keep = False
        try:
            response = await connection.handle_async_request(target.request)
            try:
                status, headers = response.status, response.headers
                if reuse:
                    await _drain(response)
            finally:
                await response.aclose()
            keep = reuse and connection.is_idle()
        finally:
            if keep:
                target.connection = connection
            else:
                with anyio.CancelScope(shield=True):  # also when the check timed out
                    await connection.aclose()
        return await self._verdict(status, headers)

    async def _verdict(self, status: int, headers: list[tuple[bytes, bytes]]) -> str | None:
        settings = self.settings
        validator = settings.validator
        if validator is None:
            if settings.status_ok(status):
                return None
            return f"{self.summary} answered {status}, expected {settings.describe_expected()}"
        try:
            verdict = validator(status, Headers(list(headers)))
            if inspect.isawaitable(verdict):
                verdict = await verdict
        except Exception as exc:
            return f"{self.summary} answered {status}, validator {settings.validator_name}: {exc!r}"
        if verdict is None or verdict is True:
            return None
        if isinstance(verdict, str) and verdict:
            return (
                f"{self.summary} answered {status}, validator {settings.validator_name}: {verdict}"
            )
        return f"{self.summary} answered {status}, refused by validator {settings.validator_name}"

    async def retain(self, backends: Collection[Backend]) -> None:
        """Close the kept connections of backends that left the service (all with ``()``)."""
        keep = set(backends)
        for backend in [backend for backend in self.targets if backend not in keep]:
            connection = self.targets.pop(backend).connection
            if connection is not None:
                await connection.aclose()


async def _drain(response: httpcore.Response) -> None:
    """Read the body, so the connection can carry the next check (Pingora drains it too).

    Past ``DRAIN_LIMIT`` bytes reading stops: the connection is then closed rather than kept.
    """
    size = 0
    # aiter_stream() is an async generator (typed as an iterator): closed at once when the
    # reading stops early, not whenever the garbage collector gets to it.
    body = cast(AsyncGenerator[bytes, None], response.aiter_stream())
    async with contextlib.aclosing(body) as chunks:
        async for chunk in chunks:
            size += len(chunk)
            if size > DRAIN_LIMIT:
                return
