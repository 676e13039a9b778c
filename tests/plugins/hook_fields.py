"""Hooks that put what the request's ``X-Set`` names into the heads lbx writes: the fields,
request line and status line a plugin may set, each as an attacker would like it (CR and LF
from a decoded query parameter, framing fields). ``X-Set: fine`` sets sound values."""

from lbx import Headers, ProxyError, RequestHeader, hookimpl

REQUEST_SIDE = {
    "value-crlf": lambda head: head.insert_header("X-A", "1\r\nContent-Length: 5"),
    "value-lf": lambda head: head.append_header("X-A", "1\nX-B: 2"),
    "value-nul": lambda head: head.insert_header("X-A", "1\x00"),
    "name-crlf": lambda head: head.insert_header("X-A: 1\r\nX-B", "2"),
    "name-space": lambda head: head.append_header("X A", "2"),
    "name-empty": lambda head: head.append_header("", "2"),
    "transfer-encoding": lambda head: head.insert_header("Transfer-Encoding", "chunked"),
    "content-length": lambda head: head.append_header("content-length", "5"),
    "uri-crlf": lambda head: setattr(head, "uri", "/a HTTP/1.1\r\nX-Z: 1"),
    "uri-space": lambda head: setattr(head, "uri", "/a b"),
    "method-crlf": lambda head: setattr(head, "method", "GET /x HTTP/1.1\r\n\r\nGET"),
    "method-head": lambda head: setattr(head, "method", "HEAD"),  # for a GET: and from a HEAD
    "method-connect": lambda head: setattr(head, "method", "CONNECT"),
    "headers-built": lambda head: setattr(
        head, "headers", Headers([(b"Host", b"x"), (b"X-A", b"1\r\nX-B: 2")])
    ),
    "headers-built-framing": lambda head: setattr(
        head, "headers", Headers([(b"Host", b"x"), (b"Transfer-Encoding", b"chunked")])
    ),
}

RESPONSE_SIDE = {
    "response-value-crlf": lambda head: head.insert_header("X-A", "1\r\n\r\nHTTP/1.1 200 OK"),
    "response-content-length": lambda head: head.insert_header("Content-Length", "1000"),
    "response-remove-length": lambda head: head.remove_header("Content-Length"),
    "response-transfer-encoding": lambda head: head.append_header("Transfer-Encoding", "chunked"),
    "reason-crlf": lambda head: setattr(head, "reason", "OK\r\nSet-Cookie: a=1"),
    "status-out-of-range": lambda head: setattr(head, "status", 1200),
    "status-informational": lambda head: setattr(head, "status", 103),
    "status-bodyless": lambda head: setattr(head, "status", 304),
    "reason-beyond-latin-1": lambda head: setattr(head, "reason", "OK\u0100"),
    "response-headers-built": lambda head: setattr(head, "headers", Headers([(b"X-A", b"1\n")])),
    "response-headers-built-length": lambda head: setattr(
        head, "headers", Headers([(b"Content-Length", b"0")])
    ),
}


def fine(head):
    head.insert_header("X-Fine", "a\tb")
    head.append_header("X-Fine", "c")


@hookimpl
async def request_filter(session):
    if session.req_header.headers.get("x-set") == "respond-informational":
        await session.respond(103, b"x")
    if session.req_header.headers.get("x-set") == "respond-error-switch":
        await session.respond_error(101)
    if session.req_header.headers.get("x-set") == "respond-error-204":
        await session.respond_error(204)
        return True
    if session.req_header.headers.get("x-set") == "set-upgrade":
        session.upgrade = "h2c"
    if session.req_header.headers.get("x-set", "").startswith("fail-with-"):
        raise ProxyError.http_status(403)  # its answer is fail_to_proxy's
    if session.req_header.headers.get("x-set") == "replace-head":
        smuggling = "/a HTTP/1.1\r\nHost: x\r\n\r\nGET /smuggled"
        session.req_header = RequestHeader("GET", smuggling, Headers([(b"Host", b"x")]))
    if session.req_header.headers.get("x-set") == "replace-version":
        session.req_header.version = "1.0"
    if session.req_header.headers.get("x-set") == "replace-fine":
        fields = Headers([(b"Host", b"x"), (b"X-Replaced", b"yes")])
        session.req_header = RequestHeader("GET", "/replaced", fields, "1.1")
    if session.req_header.headers.get("x-set") == "respond-204":
        await session.respond(204, b"dropped")
        return True
    if session.req_header.headers.get("x-set") == "respond-crlf":
        await session.respond(200, b"x", {"X-A": "1\r\nX-B: 2"})
        return True
    if session.req_header.headers.get("x-set") == "respond-framing":
        await session.respond(200, b"body", {"Transfer-Encoding": "chunked", "X-Kept": "1"})
        return True
    return False


@hookimpl
def upstream_request_filter(session, upstream_request):
    how = session.req_header.headers.get("x-set")
    if how == "method-head" and upstream_request.method == "HEAD":
        upstream_request.method = "GET"
    elif how == "fine":
        fine(upstream_request)
        upstream_request.uri = "/fine?q=1"
        upstream_request.method = "PUT"
    elif how in REQUEST_SIDE:
        REQUEST_SIDE[how](upstream_request)


@hookimpl
def response_filter(session, upstream_response):
    how = session.req_header.headers.get("x-set")
    if how == "fine":
        fine(upstream_response)
        upstream_response.status = 201
        upstream_response.reason = "Made"
        kept = [*upstream_response.headers.raw, (b"X-Built", b"1")]  # framing fields kept
        upstream_response.headers = Headers(kept)
    elif how in RESPONSE_SIDE:
        RESPONSE_SIDE[how](upstream_response)


ODD_STATUSES = {"fail-with-103": 103, "fail-with-float": 404.5, "fail-with-text": "404"}


@hookimpl
def fail_to_proxy(session, ctx, error):
    return ODD_STATUSES.get(session.req_header.headers.get("x-set"))
