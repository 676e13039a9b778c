"""Logs the start-up hooks with the pid of the process that runs them."""

import logging
import os

from lbx import hookimpl

log = logging.getLogger("lbx.announce")


@hookimpl
async def worker_started(server):
    log.info(
        "worker_started in pid %d, listening on %d sockets", os.getpid(), len(server.listeners)
    )


@hookimpl
async def server_started(server):
    log.info("server_started in pid %d", os.getpid())
