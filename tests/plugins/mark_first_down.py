"""A ready background service that marks the first backend of every service unhealthy."""

import anyio

from lbx import hookimpl


@hookimpl
def register_background_services(server, register):
    async def run(task_status):
        for service in server.services:
            backends = service.load_balancer.backends
            backends.set_healthy(backends.items[0], False, "marked down by the test")
        task_status.started()
        await anyio.sleep_forever()

    register("mark first down", run, ready=True)
