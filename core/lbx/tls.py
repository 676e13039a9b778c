"""TLS termination: server contexts per service, certificates chosen by SNI, hot reload.

Every certificate gets its own ``SSLContext`` with modern defaults (TLS 1.2+, Mozilla
"intermediate" ciphers for TLS 1.2, ALPN ``h2`` then ``http/1.1``, or ``http/1.1`` alone with
``http2: false``). The listener's context only carries the SNI callback, which switches each
handshake to the context of the certificate whose names match the name the client asked for.
Reloading swaps that table: new connections see the new certificates, established ones keep
theirs.
"""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Sequence
from dataclasses import dataclass

log = logging.getLogger("lbx.tls")

# Mozilla's "intermediate" TLS 1.2 ciphers (TLS 1.3 suites are OpenSSL's defaults, all fine).
INTERMEDIATE_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "DHE-RSA-AES128-GCM-SHA256",
        "DHE-RSA-AES256-GCM-SHA384",
        "DHE-RSA-CHACHA20-POLY1305",
    ]
)

RELOAD_INTERVAL_SECONDS = 1.0
"""How often certificate files are checked for changes."""


class CertificateError(Exception):
    """A certificate or key file that cannot be used; the message names the file and why."""


@dataclass
class Certificate:
    cert: str
    key: str
    names: tuple[str, ...]
    context: ssl.SSLContext


def certificate_names(cert_file: str) -> tuple[str, ...]:
    """The DNS names (and IP addresses) a PEM certificate is valid for."""
    # The ssl module can only decode a certificate from a file through this helper; the
    # alternative is depending on cryptography for a dozen lines.
    decoded = ssl._ssl._test_decode_cert(cert_file)  # type: ignore[attr-defined]
    names = [value for kind, value in decoded.get("subjectAltName", ()) if kind == "DNS"]
    if not names:
        for rdn in decoded.get("subject", ()):
            names += [value for key, value in rdn if key == "commonName"]
    return tuple(name.lower() for name in names)


ALPN_H2 = ["h2", "http/1.1"]
"""ALPN of a service that speaks HTTP/2 (``http2: true``, the default): h2 first."""
ALPN_H1 = ["http/1.1"]


def _load(
    cert: str, key: str, client_ca: str | None, client_cert: str, alpn: list[str]
) -> Certificate:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(INTERMEDIATE_CIPHERS)
    context.set_alpn_protocols(alpn)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    for path in (cert, key):
        if not os.path.isfile(path):
            raise CertificateError(f"{path}: no such file")
        if not os.access(path, os.R_OK):
            raise CertificateError(f"{path}: permission denied")
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        reason = exc.reason or str(exc)
        if "KEY_VALUES_MISMATCH" in str(exc):
            reason = "the key does not belong to the certificate"
        raise CertificateError(f"{cert} / {key}: {reason}") from None
    _verify_clients(context, client_ca, client_cert)
    try:
        names = certificate_names(cert)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise CertificateError(f"{cert}: cannot read the certificate's names ({exc})") from None
    return Certificate(cert, key, names, context)


def _verify_clients(context: ssl.SSLContext, client_ca: str | None, client_cert: str) -> None:
    if client_ca is None:
        return
    try:
        context.load_verify_locations(client_ca)
    except (OSError, ssl.SSLError) as exc:
        raise CertificateError(f"{client_ca}: cannot load client CA ({exc})") from None
    context.verify_mode = ssl.CERT_REQUIRED if client_cert == "required" else ssl.CERT_OPTIONAL


class ServerTLS:
    """The TLS side of one service's ``tls_listen`` addresses."""

    def __init__(
        self,
        service: str,
        files: Sequence[dict[str, str]],
        *,
        unknown_sni: str = "default",
        client_ca: str | None = None,
        client_cert: str = "none",
        http2: bool = True,
    ) -> None:
        self.service = service
        self.alpn = ALPN_H2 if http2 else ALPN_H1
        self.files = [dict(f) for f in files]
        self.reject_unknown = unknown_sni == "reject"
        self.client_ca = client_ca
        self.client_cert = client_cert
        self.certificates: list[Certificate] = []
        self._mtimes: tuple[float, ...] = ()
        self.load()
        # The listener's own context only routes handshakes to the right certificate.
        self.listener_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.listener_context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.listener_context.load_cert_chain(self.files[0]["cert"], self.files[0]["key"])
        self.listener_context.set_alpn_protocols(self.alpn)
        # OpenSSL keeps the verification settings of the context a handshake started with, so
        # client certificates are asked for here, not only on the per-certificate contexts.
        _verify_clients(self.listener_context, client_ca, client_cert)
        self.listener_context.sni_callback = self._choose

    def load(self) -> None:
        """(Re)load every certificate; raises ``CertificateError`` and keeps the old ones."""
        certificates = [
            _load(f["cert"], f["key"], self.client_ca, self.client_cert, self.alpn)
            for f in self.files
        ]
        try:
            self._mtimes = self._current_mtimes()
        except OSError as exc:
            raise CertificateError(f"{exc.filename}: {exc.strerror}") from None
        self.certificates = certificates

    def reload_if_changed(self) -> bool:
        """Reload when a file changed on disk; True when new certificates are in use."""
        try:
            mtimes = self._current_mtimes()
        except OSError as exc:
            log.error(
                "service %s: certificate files unreadable, keeping the old ones: %s",
                self.service,
                exc,
            )
            return False
        if mtimes == self._mtimes:
            return False
        try:
            self.load()
        except CertificateError as exc:
            self._mtimes = mtimes  # do not retry the same broken files every second
            log.error(
                "service %s: new certificates not loaded, keeping the old ones: %s",
                self.service,
                exc,
            )
            return False
        log.info("service %s: certificates reloaded", self.service)
        return True

    def _current_mtimes(self) -> tuple[float, ...]:
        return tuple(os.stat(f[name]).st_mtime_ns for f in self.files for name in ("cert", "key"))

    def _choose(self, connection: ssl.SSLObject, server_name: str | None, _: object) -> int | None:
        """SNI callback: switch the handshake to the certificate for ``server_name``."""
        certificate = self.find(server_name)
        if certificate is None:
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        connection.context = certificate.context
        return None

    def find(self, server_name: str | None) -> Certificate | None:
        """The certificate for a name: exact, then wildcard, then the default (or None)."""
        certificates = self.certificates
        if server_name:
            name = server_name.lower()
            for certificate in certificates:
                if name in certificate.names:
                    return certificate
            parent = name.partition(".")[2]
            for certificate in certificates:
                if parent and f"*.{parent}" in certificate.names:
                    return certificate
            if self.reject_unknown:
                return None
        return certificates[0]
