"""Logs what the hooks see of an Upgrade request and of the 101 that answers it."""

import logging

from lbx import hookimpl

log = logging.getLogger("lbx.test")


@hookimpl
async def request_filter(session, ctx):
    if session.upgrade is not None:
        log.warning("request_filter sees upgrade to %s", session.upgrade)


@hookimpl
async def response_filter(session, upstream_response, ctx):
    if upstream_response.status == 101:
        log.warning("response_filter sees %s", upstream_response.status)


@hookimpl
async def logging(session, ctx, error):
    if session.upgrade is not None:
        log.warning("logging sees status %s, error %s", session.response_status, error)
