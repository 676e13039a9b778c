"""Logs, in every process that serves, whether its collector follows the open connections."""

import logging
import os

from lbx import hookimpl

log = logging.getLogger("lbx.tests")


@hookimpl
def worker_started(server):
    following = server.connections.young is not None
    log.warning("pid %d: the collector follows the connections: %s", os.getpid(), following)
