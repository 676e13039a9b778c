"""An lbx service running inside the test process (its real protocol, on the test's event loop),
for tests that inspect objects or drive states a separate process does not expose."""

from __future__ import annotations

import asyncio

from lbx import config as config_module
from lbx.plugins import get_plugin_manager
from lbx.proxy import ProxyService
from lbx.server import Server


async def serve(*upstreams: str) -> tuple[ProxyService, asyncio.AbstractServer, int]:
    """One round-robin service over ``upstreams``, listening on 127.0.0.1: (service, listener,
    port)."""
    pm = get_plugin_manager(["roundrobin"])
    schema = config_module.ConfigSchema()
    pm.hook.add_config_keys(schema=schema)
    config = config_module.build_config(config_module.parse_document("version: 1\n"), schema)
    config_module.apply_shortcuts(
        config,
        listen=("127.0.0.1:0",),
        upstreams=upstreams,
        upstream_tls=False,
        sni=None,
        host=None,
    )
    config.test = True
    pm.hook.configure(config=config, plugin_manager=pm)
    server = Server(config, pm)
    server.prepare()
    service = server.services[0]
    listener = await asyncio.get_running_loop().create_server(
        service.protocol_factory, "127.0.0.1", 0
    )
    return service, listener, listener.sockets[0].getsockname()[1]
