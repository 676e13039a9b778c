"""The httptools parsers of HTTP/1.1 client connections, lent while a connection reads.

A parser takes about 0.9 KiB with a bound method per callback. Kept per connection, it stayed
with every keep-alive connection for ``PARK_SECONDS`` after each request, and the memory it freed
then stayed with the process (issue 18: an idle connection after one request took 4.1 KiB). A
connection now borrows a parser from the process's ``ParserPool`` when bytes arrive and gives it
back when a read ends between two requests, so a pool holds about as many parsers as connections
are in the middle of a request head or body at once: usually one, since a read tends to hold a
whole request.

A parser calls back its ``Relay``, which passes each callback on to the connection that borrowed
it. A parser goes back only in its start state: after a message that llhttp keeps the connection
alive for, at a message boundary. Any other (an error, an upgrade, ``Connection: close``) is
dropped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import httptools

from lbx.http import HeaderList, RequestHeader
from lbx.request_rules import refused_head

if TYPE_CHECKING:
    from lbx.h1 import H1Downstream

__all__ = ["PARSERS_KEPT", "ParserPool", "Relay", "head_read"]

PARSERS_KEPT: Final = 64
"""Idle parsers a pool keeps: beyond them (after a burst of slow clients) they are freed."""


class Relay:
    """A parser's protocol object: each callback goes to the connection that borrowed it."""

    __slots__ = ("conn", "parser")

    def __init__(self) -> None:
        self.conn: H1Downstream | None = None
        self.parser: httptools.HttpRequestParser | None = httptools.HttpRequestParser(self)
        """None once discarded: the parser holds this relay's bound methods, and reference
        counting frees the two at once only without the reference back."""

    def discard(self) -> None:
        """The parser is not in its start state (an error, an upgrade, a ``Connection: close``
        message, a connection gone mid-request), or the pool is full: both go."""
        self.conn = None
        self.parser = None

    def on_message_begin(self) -> None:
        conn = self.conn
        if conn is not None:
            conn.on_message_begin()

    def on_url(self, url: bytes) -> None:
        conn = self.conn
        if conn is not None:
            conn.on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        conn = self.conn
        if conn is not None:
            conn.on_header(name, value)

    def on_headers_complete(self) -> None:
        conn = self.conn
        if conn is not None:
            conn.on_headers_complete()

    def on_body(self, body: bytes) -> None:
        conn = self.conn
        if conn is not None:
            conn.on_body(body)

    def on_message_complete(self) -> None:
        conn = self.conn
        if conn is not None:
            conn.on_message_complete()


class ParserPool:
    """Idle request parsers, each with its relay (one pool per process)."""

    __slots__ = ("_idle", "_spare")

    def __init__(self) -> None:
        self._spare: Relay | None = None
        """The one most often lent and given back within a read: a list emptied and filled
        again would be reallocated every time."""
        self._idle: list[Relay] = []

    def __len__(self) -> int:
        return len(self._idle) + (self._spare is not None)

    def take(self, conn: H1Downstream) -> Relay:
        """A relay whose parser is in its start state, calling ``conn`` back."""
        relay = self._spare
        if relay is not None:
            self._spare = None
        elif self._idle:
            relay = self._idle.pop()
        else:
            relay = Relay()
        relay.conn = conn
        return relay

    def give_back(self, relay: Relay) -> None:
        """The relay's parser is in its start state again (a boundary after a keep-alive
        message)."""
        relay.conn = None
        if self._spare is None:
            self._spare = relay
        elif len(self._idle) < PARSERS_KEPT - 1:  # with the spare
            self._idle.append(relay)
        else:
            relay.discard()


def head_read(
    parser: httptools.HttpRequestParser | None,
    url: bytes,
    fields: HeaderList,
    in_head: bool,
    http: bool,
) -> RequestHeader:
    """What ``parser`` read of a refused head (the version only of a complete ``http`` request
    line), for the log."""
    method = version = ""
    if url and parser is not None:  # the method precedes the target
        method = parser.get_method().decode("latin-1")
        if http and (fields or not in_head):
            version = parser.get_http_version()
    return refused_head(method, url, fields, version)
