"""A response body filter that changes the length: upper-case, and ``!`` at the end."""

from lbx import hookimpl


@hookimpl
def response_body_filter(body, end_of_stream):
    return body.upper() + (b"!" if end_of_stream else b"")
