"""Run local demo backends inside lbx: a background service plugin with its own config section.

    plugins: [roundrobin, ../contrib/demo_backends.py]
    demo_backends:
      listen: ["127.0.0.1:8001", "127.0.0.1:8002"]

Each backend answers ``Hello from backend <n>`` (plus the routes of ``lbx.testing``), so the
load balancer can be tried with no network. Shows ``add_config_keys`` and
``register_background_services`` with ``ready=True``: lbx listens once the backends are up.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import anyio.abc

from lbx import ConfigSchema, Field, Server, hookimpl
from lbx.testing import DemoBackend

log = logging.getLogger("lbx.demo_backends")


@hookimpl
def add_config_keys(schema: ConfigSchema) -> None:
    schema.add_section(
        "demo_backends",
        {"listen": Field("str_list", ["127.0.0.1:8001", "127.0.0.1:8002"], "backend addresses")},
    )


@hookimpl
def register_background_services(server: Server, register: Callable[..., None]) -> None:
    addresses = server.config.sections["demo_backends"]["listen"]

    async def run(task_status: anyio.abc.TaskStatus[None]) -> None:
        backends = []
        for index, address in enumerate(addresses, start=1):
            host, _, port = address.rpartition(":")
            backend = DemoBackend(str(index), host.strip("[]"), int(port))
            await backend.start()
            backends.append(backend)
            log.info("demo backend %s listening on %s", index, backend.address)
        task_status.started()  # lbx starts listening only now: the first request finds them
        try:
            await asyncio.Event().wait()
        finally:
            for backend in backends:
                await backend.stop()

    register("demo backends", run, ready=True)
