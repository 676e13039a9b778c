"""Sets the upstream Host header from a plain ``def`` impl."""

from lbx import hookimpl


@hookimpl
def upstream_request_filter(upstream_request):
    upstream_request.insert_header("Host", "sync.example")
