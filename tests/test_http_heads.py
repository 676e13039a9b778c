"""Unit tests of the sans-IO message heads (``lbx.http``), without sockets."""

from __future__ import annotations

import pytest

from lbx import Headers, RequestHeader, ResponseHeader, http


def test_insert_replaces_a_single_value_in_place_and_several_at_the_end() -> None:
    request = RequestHeader("GET", "/", Headers([(b"Host", b"a"), (b"Accept", b"*/*")]))
    request.insert_header("host", "b")
    assert request.headers.raw == [(b"host", b"b"), (b"Accept", b"*/*")]
    request.headers.raw.append((b"X-Tag", b"1"))
    request.headers.raw.insert(0, (b"x-tag", b"2"))
    request.insert_header("X-TAG", "3")
    assert request.headers.raw == [(b"host", b"b"), (b"Accept", b"*/*"), (b"X-TAG", b"3")]


def test_lower_name_cache_stays_bounded_whatever_names_arrive() -> None:
    """Header names are lower-cased through a cache: many distinct (or long) names, as a
    hostile client may send, never grow it past its bound."""
    for index in range(3 * http._LOWERED_MAX_ENTRIES):
        assert http.lower_name(b"X-Name-%d" % index) == b"x-name-%d" % index
    assert len(http._LOWERED) <= http._LOWERED_MAX_ENTRIES
    long_name = b"X-" + b"A" * 100
    assert http.lower_name(long_name) == long_name.lower()
    assert long_name not in http._LOWERED


def test_lower_name_is_right_whatever_the_recent_names_held() -> None:
    """The slot of recent names in front of the cache: names that share a slot, in turn, in
    every case and past the cache's bound, each come back lower-cased; none of them is kept
    for a name it is not, and no long name stays in a slot."""
    for index in range(3 * http._LOWERED_MAX_ENTRIES):  # the dict is full from here on
        http.lower_name(b"X-Fill-%d" % index)
    names = [b"Host", b"HOST", b"host", b"hOsT", b"Content-Length", b"CONTENT-LENGTH", b""]
    names += [bytes([65 + (n % 26)]) * (1 + n % 9) for n in range(200)]  # many share slots
    for _ in range(3):
        for name in names:
            assert http.lower_name(name) == name.lower()
    long_name = b"X-" + b"B" * 100
    assert http.lower_name(long_name) == long_name.lower()
    assert all(len(name) <= http._LOWERED_MAX_NAME for name, _ in http._RECENT)


def test_a_bytes_subclass_from_a_hook_is_compared_as_plain_bytes() -> None:
    """A hook may pass a bytes subclass whose ``==`` says yes to anything: lbx compares (and
    caches) names as plain bytes, so it cannot take the place of another name."""

    class Agreeable(bytes):
        def __eq__(self, other: object) -> bool:
            return True

        __hash__ = bytes.__hash__

    head = RequestHeader("GET", "/", Headers([(b"Host", b"a"), (b"Accept", b"*/*")]))
    head.insert_header(Agreeable(b"Heat"), b"1")
    assert head.headers.raw == [(b"Host", b"a"), (b"Accept", b"*/*"), (b"Heat", b"1")]
    assert [type(name) for name, _ in head.headers.raw] == [bytes, bytes, bytes]
    assert http.lower_name(b"Heat") == b"heat"


def test_encoded_strings_cache_stays_bounded() -> None:
    """Names and values hooks pass as str are encoded through a cache that many distinct (or
    long) strings never grow past its bound."""
    head = RequestHeader("GET", "/")
    for index in range(3 * http._LOWERED_MAX_ENTRIES):
        head.insert_header("X-Id", f"value-{index}")
    assert head.headers.raw == [(b"X-Id", b"value-%d" % (3 * http._LOWERED_MAX_ENTRIES - 1))]
    assert len(http._ENCODED) <= http._LOWERED_MAX_ENTRIES
    head.insert_header("X-Long", "v" * 100)
    assert "v" * 100 not in http._ENCODED


def test_a_field_from_a_hook_must_keep_the_heads_shape() -> None:
    """Names are tokens, values have no control byte but HTAB, framing fields are lbx's; what
    passes is stored as latin-1 bytes, whatever the case of the name."""
    head = RequestHeader("GET", "/", Headers())
    head.insert_header("X-Ok", "a\tb ~\xe9")
    head.append_header(b"x-ok", b"c")
    assert head.headers.raw == [(b"X-Ok", b"a\tb ~\xe9"), (b"x-ok", b"c")]
    for name, value in [
        ("X-A", "1\r\nX-B: 2"),
        ("X-A", "1\n"),
        ("X-A", "\x00"),
        ("X-A", "\x7f"),
        ("X-A: 1\r\nX-B", "2"),
        ("X A", "1"),
        ("X-A:", "1"),
        ("", "1"),
        ("X-\xe9", "1"),
        ("Content-Length", "5"),
        ("TRANSFER-ENCODING", "chunked"),
    ]:
        for edit in (head.insert_header, head.append_header):
            with pytest.raises(ValueError):
                edit(name, value)
    for framing in ("Content-Length", "transfer-encoding"):
        with pytest.raises(ValueError):
            head.remove_header(framing)
    assert head.headers.raw == [(b"X-Ok", b"a\tb ~\xe9"), (b"x-ok", b"c")]


def test_a_request_line_and_a_status_line_a_hook_sets_cannot_split() -> None:
    request = RequestHeader("GET", "/")
    request.method, request.uri = "PURGE", "/a?b=%20#c"
    for attribute, value in [
        ("method", "GET /x HTTP/1.1\r\n"),
        ("method", "GE T"),
        ("method", ""),
        ("uri", "/a b"),
        ("uri", "/a\r\nX: 1"),
        ("uri", "/\xe9"),
        ("uri", ""),
        ("method", "HEAD"),  # its response has no body: the client's framing would be off
        ("method", "CONNECT"),
    ]:
        with pytest.raises(ValueError):
            setattr(request, attribute, value)
    assert (request.method, request.uri) == ("PURGE", "/a?b=%20#c")
    head = RequestHeader("HEAD", "/")
    head.method = "HEAD"  # (unchanged)
    with pytest.raises(ValueError):
        head.method = "GET"
    response = ResponseHeader(200)
    response.status, response.reason = 404, "Gone \xe9lsewhere"
    response.reason = None
    for attribute, value in [
        ("reason", "OK\r\nSet-Cookie: a=1"),
        ("reason", "\x00"),
        ("status", 99),
        ("status", 600),
        ("status", 103),
        ("status", 204),  # a response with a body would have it read as the next response
        ("status", 304),
    ]:
        with pytest.raises(ValueError):
            setattr(response, attribute, value)
    assert (response.status, response.reason) == (404, None)
    bodyless = ResponseHeader(304)
    bodyless.status = 204
    with pytest.raises(ValueError):
        bodyless.status = 200  # its head announces no body for the client to read
    with pytest.raises(ValueError):
        ResponseHeader(101).status = 200  # the switch (and its tunnel) is decided
    switch = ResponseHeader(101)
    switch.status = 101  # (unchanged: a hook that sets what is there)
    with pytest.raises(ValueError):
        switch.reason = "Switching \u0100"  # the status line is latin-1


def test_headers_a_hook_builds_whole_get_the_checks_of_edited_ones() -> None:
    response = ResponseHeader(200, Headers([(b"Content-Length", b"5"), (b"X-A", b"1")]))
    response.headers = Headers([(b"X-B", b"2"), (b"content-length", b"5")])  # same framing
    assert response.headers.raw == [(b"X-B", b"2"), (b"content-length", b"5")]
    for built in (
        [(b"X-B", b"2")],  # its Content-Length gone
        [(b"Content-Length", b"0")],
        [(b"Content-Length", b"5"), (b"Transfer-Encoding", b"chunked")],
        [(b"Content-Length", b"5"), (b"X-C", b"1\r\nX-D: 2")],
        [(b"Content-Length", b"5"), (b"X C", b"1")],
    ):
        with pytest.raises(ValueError):
            response.headers = Headers(built)
    assert response.headers.raw == [(b"X-B", b"2"), (b"content-length", b"5")]
    request = RequestHeader("GET", "/", Headers([(b"Host", b"x")]))
    replaced = http.replacement_head(
        request, RequestHeader("PUT", "/b", Headers([(b"Host", b"y")]))
    )
    assert (replaced.method, replaced.uri, replaced.headers.raw) == ("PUT", "/b", [(b"Host", b"y")])
    client_spoke_2 = RequestHeader("GET", "/", Headers([(b"Host", b"x")]), version="2")
    assert http.replacement_head(client_spoke_2, RequestHeader("GET", "/c")).version == "2"
    for head in (
        RequestHeader("HEAD", "/"),
        RequestHeader("GET", "/ HTTP/1.1\r\n"),
        RequestHeader("GET", "/", Headers([(b"Content-Length", b"5")])),
    ):
        with pytest.raises(ValueError):
            http.replacement_head(request, head)


def test_the_sound_fields_hooks_set_are_remembered_within_bounds() -> None:
    """Names and short values found sound are kept so that the next request's same field costs
    a lookup; many distinct ones (a request id per request) never grow the sets past their
    bound, and a refused one is never kept."""
    head = ResponseHeader(200)
    for index in range(3 * http._LOWERED_MAX_ENTRIES):
        head.insert_header(f"X-Name-{index}", f"value-{index}")
    assert len(http._CHECKED_NAMES) <= http._LOWERED_MAX_ENTRIES
    assert len(http._CHECKED_VALUES) <= http._LOWERED_MAX_ENTRIES
    for _ in range(2):
        with pytest.raises(ValueError):
            head.insert_header("X-A", "1\r\n")
    assert b"1\r\n" not in http._CHECKED_VALUES
