"""A response_body_filter with a bug: it raises on its last call (``end_of_stream``) for a
request that has ``X-Raise``."""

from lbx import hookimpl


@hookimpl
def response_body_filter(session, body, end_of_stream):
    if end_of_stream and "x-raise" in session.req_header.headers:
        raise RuntimeError("the filter's bug")
    return None
