"""The active checks: TCP connect (with TLS and SNI when the service uses TLS) and HTTP.

A check returns None when the backend is healthy, or the reason it is not. Checks never raise
and never block: everything is awaited on the event loop, and the caller bounds each check with
the configured timeout.
"""

from __future__ import annotations

import asyncio
import inspect
import ssl

import httpcore

from lbx import Backend, Headers, ServiceConfig
from lbx_healthcheck.settings import HealthCheckSettings

USER_AGENT = b"lbx-healthcheck/0.1"


def client_ssl_context(service: ServiceConfig, ca_file: str | None) -> ssl.SSLContext:
    """The context the proxy would use for this service: verification per the service's
    ``verify_cert``/``verify_hostname``, the server's ``ca_file`` as trust store."""
    context = ssl.create_default_context(cafile=ca_file)
    context.set_alpn_protocols(["http/1.1"])
    if not service.verify_cert:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif not service.verify_hostname:
        context.check_hostname = False
    return context


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not accepted: {exc.verify_message or exc.reason}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc.reason or exc}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    if isinstance(exc, httpcore.TimeoutException):
        return "timed out"
    cause = exc.__cause__ or exc.__context__
    if isinstance(exc, httpcore.ConnectError) and cause is not None and cause is not exc:
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
        self.ssl_context = client_ssl_context(service, ca_file) if service.tls else None

    async def __call__(self, backend: Backend) -> str | None:
        loop = asyncio.get_running_loop()
        tls = self.ssl_context
        server_hostname = (self.service.sni or backend.host or "localhost") if tls else None
        try:
            if backend.unix_path is not None:
                transport, _ = await loop.create_unix_connection(
                    asyncio.Protocol, backend.unix_path, ssl=tls, server_hostname=server_hostname
                )
            else:
                transport, _ = await loop.create_connection(
                    asyncio.Protocol,
                    backend.host or "",
                    self.settings.port or backend.port,
                    ssl=tls,
                    server_hostname=server_hostname,
                )
        except Exception as exc:
            return f"tcp check failed: {_describe(exc)}"
        transport.close()
        return None


class HttpCheck:
    """One request per check on a new connection (Pingora's ``reuse_connection: false``)."""

    def __init__(
        self, settings: HealthCheckSettings, service: ServiceConfig, ca_file: str | None
    ) -> None:
        self.settings = settings
        self.service = service
        self.scheme = b"https" if service.tls else b"http"
        self.ssl_context = client_ssl_context(service, ca_file) if service.tls else None
        self.method = settings.method.encode("ascii")
        self.target = settings.path.encode("latin-1")

    def host_header(self, backend: Backend, port: int) -> str:
        """``host:`` of the check, else the service's ``host``, else its ``sni``, else the
        backend's address (with the port override)."""
        host = self.settings.host or self.service.host or self.service.sni
        if host:
            return host
        if backend.host is None:
            return "localhost"
        return f"[{backend.host}]:{port}" if ":" in backend.host else f"{backend.host}:{port}"

    async def __call__(self, backend: Backend) -> str | None:
        settings = self.settings
        port = settings.port or backend.port
        host = backend.host.encode("ascii") if backend.host is not None else b"localhost"
        if backend.unix_path is not None:
            port = 443 if self.service.tls else 80
        origin = httpcore.Origin(self.scheme, host, port)
        url = httpcore.URL(scheme=self.scheme, host=host, port=port, target=self.target)
        timeout = settings.timeout
        extensions: dict[str, object] = {
            "timeout": {"connect": timeout, "read": timeout, "write": timeout, "pool": timeout}
        }
        if self.service.tls:
            extensions["sni_hostname"] = self.service.sni or backend.host or "localhost"
        headers = [
            (b"Host", self.host_header(backend, port).encode("latin-1")),
            (b"User-Agent", USER_AGENT),
            (b"Connection", b"close"),
        ]
        summary = f"http check {settings.method} {settings.path}"
        try:
            async with (
                httpcore.AsyncHTTPConnection(
                    origin, ssl_context=self.ssl_context, uds=backend.unix_path
                ) as connection,
                connection.stream(
                    self.method, url, headers=headers, extensions=extensions
                ) as response,
            ):
                status = response.status
                response_headers = Headers(list(response.headers))
        except Exception as exc:
            return f"{summary} failed: {_describe(exc)}"
        validator = settings.validator
        if validator is None:
            if settings.status_ok(status):
                return None
            return f"{summary} answered {status}, expected {settings.describe_expected()}"
        try:
            verdict = validator(status, response_headers)
            if inspect.isawaitable(verdict):
                verdict = await verdict
        except Exception as exc:
            return f"{summary} answered {status}, validator {settings.validator_name}: {exc!r}"
        if verdict is None or verdict is True:
            return None
        if isinstance(verdict, str) and verdict:
            return f"{summary} answered {status}, validator {settings.validator_name}: {verdict}"
        return f"{summary} answered {status}, refused by validator {settings.validator_name}"
