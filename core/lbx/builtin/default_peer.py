"""``default_peer``: route every request to the service's load balancer (runs last).

A user plugin that implements ``upstream_peer`` runs before this one; when it returns None, this
impl picks a backend with the service's selection algorithm.
"""

from __future__ import annotations

import logging
from typing import Any

from lbx.errors import ProxyError
from lbx.hookspecs import hookimpl
from lbx.peer import Peer
from lbx.session import Session

log = logging.getLogger("lbx.proxy")

MAX_ITERATIONS = 256
"""How many candidates a selector may offer before the request fails (Pingora's examples)."""


@hookimpl(trylast=True)
def upstream_peer(session: Session, ctx: dict[str, Any]) -> Peer | None:
    """The next ready backend of the service, as a ``Peer`` with the service's TLS settings."""
    service = session.service
    load_balancer = service.load_balancer
    if load_balancer is None:
        return None
    tried = session.tried
    if tried:
        # A retry after a connect failure: another backend, never one already tried.
        backend = load_balancer.select_with(
            service.selection_key(session, ctx),
            MAX_ITERATIONS,
            lambda candidate, ready: ready and candidate not in tried,
        )
        if backend is None:
            return None  # every ready backend was tried: the request fails with the last error
    else:
        backend = load_balancer.select(service.selection_key(session, ctx), MAX_ITERATIONS)
    if backend is None:
        raise ProxyError.http_status(
            503, f"no ready backend in service {service.name!r} (all unhealthy or disabled)"
        )
    if log.isEnabledFor(logging.DEBUG):
        log.debug("upstream peer is: %r", backend)
    return service.peer_for(backend)
