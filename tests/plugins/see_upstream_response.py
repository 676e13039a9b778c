"""Logs the upstream response and the error the ``logging`` phase sees of each request."""

import logging

from lbx import hookimpl

log = logging.getLogger("lbx.test")


@hookimpl
def logging(session, ctx, error):
    response = session.upstream_response
    status = None if response is None else response.status
    log.warning("logging sees upstream response %s, error %s", status, error)
