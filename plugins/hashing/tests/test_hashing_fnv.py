"""lbx-hashing ``fnv``: FNV-1a 64 of the key over the weighted list, as Pingora's ``FNVHash``."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

import lbx
from lbx import Backend, Backends, LoadBalancer
from lbx_hashing.fnv import FnvHash, fnv1a_64

SELECTIONS = 100_000


def balancer(*backends: Backend) -> LoadBalancer:
    return LoadBalancer(Backends(tuple(backends)), FnvHash, {}, "fnv")


def test_registered_through_the_plugin_hook() -> None:
    """Enabling ``fnv`` registers only the FNV selector, under that name."""
    pm = lbx.get_plugin_manager(["fnv"])
    registered: dict[str, Any] = {}
    pm.hook.register_selectors(register=registered.__setitem__)
    assert registered == {"fnv": FnvHash}
    assert isinstance(FnvHash((), {}), lbx.Selector)


def test_fnv1a_64_reference_values() -> None:
    """The hash is FNV-1a 64 (reference vectors from the FNV authors)."""
    assert fnv1a_64(b"") == 0xCBF29CE484222325
    assert fnv1a_64(b"a") == 0xAF63DC4C8601EC8C
    assert fnv1a_64(b"foobar") == 0x85944171F73967E8


def test_matches_pingoras_fnv_test_vectors() -> None:
    """First choice and fallback order are those of Pingora's ``Weighted<FnvHasher>`` test."""
    b1 = Backend("1.1.1.1", 80)
    b2 = Backend("1.0.0.1", 80, weight=10)
    b3 = Backend("1.0.0.255", 80)
    lb = balancer(b1, b2, b3)
    candidates = lb.selector.iter(b"test")
    assert [next(candidates) for _ in range(11)] == [b2, b2, b2, b1, b3, b2, b2, b1, b2, b3, b1]
    firsts = [next(lb.selector.iter(b"test%d" % i)) for i in range(1, 8)]
    assert firsts == [b2, b2, b3, b1, b2, b2, b2]


@pytest.mark.parametrize("weights", [(1, 1, 1), (3, 1), (1, 2, 3, 4)])
def test_weights_respected_within_one_percent(weights: tuple[int, ...]) -> None:
    """Over 100k distinct keys each backend's share is its weight share, within 1% of it."""
    backends = [Backend("10.0.0.1", 80 + i, weight) for i, weight in enumerate(weights)]
    lb = balancer(*backends)
    counts = Counter(lb.select(b"user-%d" % i) for i in range(SELECTIONS))
    total = sum(weights)
    for backend in backends:
        expected = SELECTIONS * backend.weight / total
        assert counts[backend] == pytest.approx(expected, rel=0.01), (backend, counts)


def test_same_key_same_backend() -> None:
    """A key always maps to the same backend while the set does not change."""
    lb = balancer(*(Backend("10.0.0.1", 80 + i) for i in range(5)))
    for i in range(100):
        assert len({lb.select(b"k%d" % i) for _ in range(5)}) == 1


def test_unready_first_choice_falls_back_along_the_hash_chain() -> None:
    """When the key's backend is down, the next candidate of the chained hash is chosen."""
    backends = [Backend("10.0.0.1", 80 + i) for i in range(4)]
    lb = balancer(*backends)
    for i in range(200):
        key = b"k%d" % i
        first = lb.select(key)
        assert first is not None
        lb.backends.set_healthy(first, False)
        value = fnv1a_64(key)
        while True:
            value = fnv1a_64(value.to_bytes(8, "little"))
            expected = backends[value % 4]
            if expected != first:
                break
        assert lb.select(key) == expected
        lb.backends.set_healthy(first, True)


def test_max_iterations_bounds_the_walk() -> None:
    """With the key's backend down, one candidate is not enough and the bound is respected."""
    a, b = Backend("10.0.0.1", 80), Backend("10.0.0.2", 80)
    lb = balancer(a, b)
    lb.backends.set_enabled(a, False)
    keys = [b"k%d" % i for i in range(100) if next(lb.selector.iter(b"k%d" % i)) == a]
    assert keys
    assert {lb.select(key, max_iterations=1) for key in keys} == {None}
    assert {lb.select(key, max_iterations=256) for key in keys} == {b}


def test_all_unready_and_empty_select_none() -> None:
    """No ready backend, or none at all, selects None."""
    a = Backend("10.0.0.1", 80)
    lb = balancer(a)
    lb.backends.set_healthy(a, False)
    assert lb.select(b"x") is None
    assert balancer().select(b"x") is None


def test_update_rebuilds_over_the_new_set() -> None:
    """After the backend set changes, keys map over the new set only."""
    a, b, c = (Backend("10.0.0.1", 80 + i) for i in range(3))
    lb = balancer(a, b)
    lb.update([b, c])
    assert {lb.select(b"k%d" % i) for i in range(100)} == {b, c}


def test_selection_options_are_refused() -> None:
    """fnv takes no ``selection_options``."""
    with pytest.raises(ValueError, match="fnv takes no selection_options"):
        FnvHash((), {"seed": 1})


def pingora_order(backends: list[Backend], key: bytes) -> Iterator[Backend]:
    """Pingora's ``Weighted<FNVHash>`` walk (the plugin's ``iter`` before it had two parts): the
    key's hash over the weighted list, then the hash chained over the plain list."""
    weighted = [index for index, backend in enumerate(backends) for _ in range(backend.weight)]
    value = fnv1a_64(key)
    if weighted:
        yield backends[weighted[value % len(weighted)]]
    while backends:
        value = fnv1a_64(value.to_bytes(8, "little"))
        yield backends[value % len(backends)]


@pytest.mark.parametrize("weights", [(1, 1, 1), (3, 1, 2), (0, 0)])
def test_first_and_fallback_walk_pingoras_order(weights: tuple[int, ...]) -> None:
    """``first`` then ``fallback`` (what ``LoadBalancer`` calls), ``iter``, and ``select`` with
    the first choice unready all follow Pingora's chain."""
    backends = [Backend("10.0.0.1", 80 + i, weight=w) for i, w in enumerate(weights)]
    selector = FnvHash(backends, {})
    lb = balancer(*backends)
    lb.backends.set_healthy(backends[0], False)
    for key in (b"", b"a", b"user-42", b"\xff" * 9):
        expected = list(itertools.islice(pingora_order(backends, key), 9))
        first = selector.first(key)
        got = [] if first is None else [first]
        got += itertools.islice(selector.fallback(key), 9 - len(got))
        assert got == expected
        assert list(itertools.islice(selector.iter(key), 9)) == expected
        ready = next(b for b in pingora_order(backends, key) if b != backends[0])
        assert lb.select(key) == ready
