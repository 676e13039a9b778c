"""Sets the upstream Host header from an ``async def`` impl."""

from lbx import hookimpl


@hookimpl
async def upstream_request_filter(session, upstream_request, ctx):
    upstream_request.insert_header("Host", "async.example")
