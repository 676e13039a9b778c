"""An lbx service running inside the test process (its real protocol, on the test's event loop),
for tests that inspect objects or drive states a separate process does not expose."""

from __future__ import annotations

import asyncio

from lbx.proxy import ProxyService
from lbx.testing import prepared_server


async def serve(*upstreams: str) -> tuple[ProxyService, asyncio.AbstractServer, int]:
    """One round-robin service over ``upstreams``, listening on 127.0.0.1: (service, listener,
    port)."""
    service = prepared_server(["roundrobin"], upstreams).services[0]
    listener = await asyncio.get_running_loop().create_server(
        service.protocol_factory, "127.0.0.1", 0
    )
    return service, listener, listener.sockets[0].getsockname()[1]
