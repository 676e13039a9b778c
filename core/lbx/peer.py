"""``Peer``: where one request goes and how to connect there (Pingora's ``HttpPeer``), and the
TLS client context every upstream connection of lbx uses (requests and health checks alike)."""

from __future__ import annotations

import ssl
from typing import Final

from lbx.lb import Backend, split_host_port

HTTP_VERSION_ALPN: Final = 0
"""``Peer.http_version`` for "as TLS's ALPN decides": HTTP/2 when the server picks ``h2``,
else HTTP/1.1 (Pingora's ``ALPN::H2H1``); plaintext peers then speak HTTP/1.1."""


def upstream_tls_context(
    verify_cert: bool,
    verify_hostname: bool,
    ca_file: str | None,
    alpn: tuple[str, ...] = ("http/1.1",),
) -> ssl.SSLContext:
    """A client context for upstreams: certificates and host names verified unless told not to
    (``verify_cert``, ``verify_hostname``), ``ca_file`` (or the system's store) as trust,
    ALPN ``alpn`` (``http/1.1``; HTTP/2 peers offer ``h2`` first). One decision for the proxy
    and for health checks."""
    context = ssl.create_default_context(cafile=ca_file)
    context.set_alpn_protocols(list(alpn))
    if not verify_cert:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif not verify_hostname:
        context.check_hostname = False
    return context


class Peer:
    """An upstream to connect to: address, TLS and SNI, verification and timeouts.

    ``Peer("1.1.1.1:443", tls=True, sni="one.one.one.one")`` is the quick start's peer. The address
    may be ``host:port`` (a hostname is resolved when connecting), ``unix:/path`` or a ``Backend``.
    Connections are pooled per ``pool_key``: peers that differ in address, TLS, SNI,
    verification or HTTP version never share a connection.

    ``http_version`` (Pingora's ``PeerOptions.alpn``): 1, 2 (HTTP/2 by ALPN on TLS, by prior
    knowledge on plaintext; HTTP/1.1 when the server refuses it), or ``HTTP_VERSION_ALPN``.
    An HTTP/2 connection carries up to ``max_h2_streams`` requests at once, and sends a PING when
    it heard nothing for ``h2_ping_interval`` seconds (0: never).
    """

    __slots__ = (
        "backend",
        "ca_file",
        "connection_timeout",
        "h2_ping_interval",
        "host",
        "http_version",
        "idle_timeout",
        "max_h2_streams",
        "pool_key",
        "port",
        "read_timeout",
        "retired",
        "sni",
        "tls",
        "unix_path",
        "verify_cert",
        "verify_hostname",
    )

    def __init__(
        self,
        address: str | Backend,
        tls: bool = False,
        sni: str = "",
        *,
        verify_cert: bool = True,
        verify_hostname: bool = True,
        ca_file: str | None = None,
        connection_timeout: float | None = None,
        read_timeout: float | None = None,
        idle_timeout: float | None = None,
        http_version: int = 1,
        max_h2_streams: int = 100,
        h2_ping_interval: float = 30.0,
    ) -> None:
        if http_version not in (1, 2, HTTP_VERSION_ALPN):
            raise ValueError(f"http_version must be 1, 2 or {HTTP_VERSION_ALPN} (ALPN)")
        if isinstance(address, Backend):
            self.backend: Backend | None = address
            self.host, self.port, self.unix_path = address.host, address.port, address.unix_path
        elif address.startswith("unix:"):
            self.backend = None
            self.host, self.port, self.unix_path = None, 0, address[len("unix:") :]
        else:
            self.backend = None
            host, self.port = split_host_port(address)
            self.host, self.unix_path = host, None
        self.tls = tls
        self.sni = sni
        self.verify_cert = verify_cert
        self.verify_hostname = verify_hostname
        self.ca_file = ca_file
        self.connection_timeout = connection_timeout
        self.read_timeout = read_timeout
        self.idle_timeout = idle_timeout
        self.retired = False
        """The backend left its service: connections to it are closed once idle."""
        self.http_version = http_version
        self.max_h2_streams = max(1, max_h2_streams)
        self.h2_ping_interval = h2_ping_interval
        # A string, not the tuple: pools look it up twice per request, and a string keeps its
        # hash where a tuple of nine hashes them all again each time.
        self.pool_key = repr(
            (
                self.host,
                self.port,
                self.unix_path,
                tls,
                sni,
                verify_cert,
                verify_hostname,
                ca_file,
                http_version,
            )
        )

    @property
    def addr(self) -> str:
        """``ip:port``, ``[v6]:port`` or ``unix:/path``."""
        if self.unix_path is not None:
            return f"unix:{self.unix_path}"
        if self.host is not None and ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"

    def __repr__(self) -> str:
        text = f"addr: {self.addr}, scheme: {'HTTPS' if self.tls else 'HTTP'}"
        if self.sni:
            text += f", sni: {self.sni}"
        if self.http_version != 1:
            text += f", http: {self.http_version or 'alpn'}"
        return f"Peer({text})"
