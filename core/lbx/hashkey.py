"""What hashing selection algorithms hash: the service's ``hash_key`` setting.

``client_ip``, ``path``, ``uri``, ``header:<name>`` or ``cookie:<name>``; no setting hashes the
empty key (every request maps to the same backend for hashing algorithms). The ``selection_key``
hook overrides it per request.
"""

from __future__ import annotations

from collections.abc import Callable
from http.cookies import CookieError, SimpleCookie
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lbx.session import Session

KeyFunction = Callable[["Session"], bytes]

FORMS = ("client_ip", "path", "uri", "header:<name>", "cookie:<name>")


def check_spec(spec: str) -> str | None:
    """An error message for an invalid ``hash_key`` value, or None."""
    kind, _, name = spec.partition(":")
    if spec in ("client_ip", "path", "uri"):
        return None
    if kind in ("header", "cookie") and name:
        return None
    return f"{spec!r} is not a hash key; use one of {', '.join(FORMS)}"


def key_function(spec: str | None) -> KeyFunction:
    """Build the per-request key extractor for a (valid) ``hash_key`` value."""
    if spec is None:
        return _empty
    if spec == "client_ip":
        return _client_ip
    if spec == "path":
        return _path
    if spec == "uri":
        return _uri
    kind, _, name = spec.partition(":")
    if kind == "header":
        return _header(name)
    return _cookie(name)


def _empty(session: Session) -> bytes:
    return b""


def _client_ip(session: Session) -> bytes:
    return session.client_ip.encode("latin-1")


def _path(session: Session) -> bytes:
    return session.req_header.path.encode("latin-1")


def _uri(session: Session) -> bytes:
    return session.req_header.uri.encode("latin-1")


def _header(name: str) -> KeyFunction:
    def key(session: Session) -> bytes:
        return (session.req_header.headers.get(name) or "").encode("latin-1")

    return key


def _cookie(name: str) -> KeyFunction:
    def key(session: Session) -> bytes:
        for header in session.req_header.headers.get_all("cookie"):
            jar: SimpleCookie = SimpleCookie()
            try:
                jar.load(header)
            except CookieError:
                continue
            if name in jar:
                return jar[name].value.encode("latin-1")
        return b""

    return key
