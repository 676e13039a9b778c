"""What plugins may read of the kernel's server and services: the Protocols ``lbx.Server`` and
``lbx.Service`` that the start-up and lifecycle hooks' ``server`` argument satisfies.

The concrete classes (``lbx.server.Server``, ``lbx.proxy.ProxyService``) carry much more; a
plugin typed against these Protocols keeps working when that changes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import socket

    from lbx.config import Config, ServiceConfig
    from lbx.discovery import ServiceDiscovery
    from lbx.lb import LoadBalancer


class Service(Protocol):
    """One configured service, as plugins see it."""

    @property
    def name(self) -> str:
        """The service's ``name`` (``service<N>`` by default)."""

    @property
    def config(self) -> ServiceConfig:
        """Its validated configuration (``listen``, ``upstreams``, timeouts, limits...)."""

    @property
    def load_balancer(self) -> LoadBalancer | None:
        """Its backends and selector (None for a service without ``upstreams``)."""


class Server(Protocol):
    """The server of this process, as plugins see it (the ``server`` argument of hooks)."""

    @property
    def config(self) -> Config:
        """The validated configuration (``sections`` holds each plugin's own)."""

    @property
    def services(self) -> Sequence[Service]:
        """The services, in the config's order."""

    @property
    def discovery(self) -> Mapping[str, ServiceDiscovery]:
        """Service name -> where its backends come from and an operator's runtime changes
        (``add``, ``remove``, ``set_weight``), for every service with backends."""

    @property
    def listeners(self) -> Mapping[str, socket.socket]:
        """The listening sockets by address key, where this process holds them."""

    @property
    def bound(self) -> Mapping[str, str]:
        """Listen address -> the address bound (``127.0.0.1:0`` -> the real port); a
        ``tls_listen`` address is keyed ``tls:<address>``."""

    @property
    def open_connections(self) -> int:
        """Client connections open in this process."""

    @property
    def idle_upstream_connections(self) -> int:
        """Idle pooled upstream connections in this process."""
