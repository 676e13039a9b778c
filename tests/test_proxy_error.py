"""How a ``ProxyError`` reads in the log: Pingora's ``source etype [status] context: ... cause:
...``, with an exception named once when it is both the context and the cause (an internal
error from a hook)."""

from __future__ import annotations

from lbx import ErrorSource, ErrorType, ProxyError


def test_the_cause_is_named_once_when_it_is_the_context() -> None:
    bug = ValueError("a control character in the value of X-Tag")
    error = ProxyError(ErrorType.INTERNAL_ERROR, ErrorSource.INTERNAL, repr(bug)).caused_by(bug)
    assert str(error) == f"internal InternalError context: {bug!r}"
    assert str(error).count("control character") == 1


def test_a_cause_other_than_the_context_is_named_after_it() -> None:
    refused = ConnectionRefusedError(111, "Connection refused")
    error = ProxyError(ErrorType.CONNECT_REFUSED, ErrorSource.UPSTREAM, "127.0.0.1:9 refused")
    assert str(error.caused_by(refused)) == (
        "upstream ConnectRefused context: 127.0.0.1:9 refused cause: "
        "ConnectionRefusedError(111, 'Connection refused')"
    )
