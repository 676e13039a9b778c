"""Unit tests of the sans-IO message heads (``lbx.http``), without sockets."""

from __future__ import annotations

from lbx import Headers, RequestHeader, http


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
