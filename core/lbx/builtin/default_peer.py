"""``default_peer``: route every request to the service's load balancer (runs last).

A user plugin that implements ``upstream_peer`` runs before this one; when it returns None, this
impl picks a backend with the service's selection algorithm.
"""

from __future__ import annotations

from typing import Any

from lbx.hookspecs import hookimpl
from lbx.peer import Peer
from lbx.session import Session


@hookimpl(trylast=True)
def upstream_peer(session: Session, ctx: dict[str, Any]) -> Peer | None:
    """The next ready backend of the service, as a ``Peer`` with the service's TLS settings."""
    return session.service.default_peer(session, ctx)
