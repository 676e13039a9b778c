"""The request hooks of passive health checks: proxy failures count against a backend.

``PassiveChecks`` is registered by the plugin's ``configure`` only when a service has
``passive_health``, so that requests of a configuration without passive checks never call its
hooks.
"""

from __future__ import annotations

from lbx import Peer, ProxyError, Session, hookimpl
from lbx_healthcheck.state import ServiceHealth


class PassiveChecks:
    """The passive checks of one server: the ``ServiceHealth`` of each service that has them."""

    def __init__(self) -> None:
        self.services: dict[str, ServiceHealth] = {}
        """By service name; filled when the server registers its background services, before
        any request."""

    def _failure(self, session: Session, peer: Peer, error: ProxyError) -> None:
        health = self.services.get(session.service.name)
        if health is not None and peer.backend is not None:
            health.record_failure(peer.backend, str(error))

    @hookimpl
    def fail_to_connect(self, session: Session, peer: Peer, error: ProxyError) -> None:
        self._failure(session, peer, error)

    @hookimpl
    def error_while_proxy(
        self, session: Session, peer: Peer, error: ProxyError, client_reused: bool
    ) -> None:
        if client_reused and error.retry:
            return  # a pooled connection the backend had closed: not the backend's fault
        self._failure(session, peer, error)

    @hookimpl
    def logging(self, session: Session, error: ProxyError | None) -> None:
        """Successes reset the failure count; a 5xx counts as a failure with ``on_5xx``."""
        if error is not None:
            return  # failures were counted where they happened, other errors say nothing
        health = self.services.get(session.service.name)
        if health is None:
            return
        peer = session.peer
        backend = peer.backend if peer is not None else None
        if backend is None:
            return
        response = session.upstream_response
        if response is None:
            return
        assert health.passive is not None
        if health.passive.on_5xx and response.status >= 500:
            health.record_failure(backend, f"status {response.status}")
        else:
            health.record_success(backend)
