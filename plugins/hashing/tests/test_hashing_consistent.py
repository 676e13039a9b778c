"""lbx-hashing ``consistent``: the ketama ring of nginx and Pingora."""

from __future__ import annotations

import itertools
import zlib
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

import lbx
from lbx import Backend, Backends, LoadBalancer
from lbx_hashing.consistent import POINTS_PER_WEIGHT, Consistent

SELECTIONS = 100_000


def ring(*specs: str) -> Consistent:
    return Consistent([Backend.parse(spec)[0] for spec in specs], {})


def balancer(*backends: Backend) -> LoadBalancer:
    return LoadBalancer(Backends(tuple(backends)), Consistent, {}, "consistent")


def test_registered_through_the_plugin_hook() -> None:
    """Enabling ``consistent`` registers only the ketama selector, under that name."""
    pm = lbx.get_plugin_manager(["consistent"])
    registered: dict[str, Any] = {}
    pm.hook.register_selectors(register=registered.__setitem__)
    assert registered == {"consistent": Consistent}
    assert isinstance(Consistent((), {}), lbx.Selector)


def test_matches_pingoras_nginx_sample() -> None:
    """The keys of pingora-ketama's ``matches_nginx_sample`` test map to the same backends."""
    selector = ring("127.0.0.1:7777", "127.0.0.1:7778")
    expected = {
        b"/some/path": 7778,
        b"/some/longer/path": 7777,
        b"/sad/zaidoon": 7778,
        b"/g": 7777,
        b"/pingora/team/is/cool/and/this/is/a/long/uri": 7778,
        b"/i/am/not/confident/in/this/code": 7777,
    }
    assert {key: next(selector.iter(key)).port for key in expected} == expected


def test_clockwise_walk_matches_pingoras_node_iter() -> None:
    """The candidate order walks the ring point by point, as pingora-ketama's ``node_iter``."""
    selector = ring("127.0.0.1:7777", "127.0.0.1:7778", "127.0.0.1:7779")
    walk = selector.iter(b"doghash")
    assert [next(walk).port for _ in range(8)] == [7778, 7779, 7779, 7777, 7777, 7778, 7778, 7779]
    selector = ring("127.0.0.1:7777", "127.0.0.1:7779")
    walk = selector.iter(b"doghash")
    assert [next(walk).port for _ in range(5)] == [7779, 7779, 7777, 7777, 7779]


def test_ipv6_hashes_the_bare_address() -> None:
    """IPv6 backends hash ``::1\\0port`` like pingora-ketama's ``test_ipv6_ring``."""
    selector = ring("[::1]:7777", "[::1]:7778", "[::1]:7779")
    walk = selector.iter(b"doghash")
    assert [next(walk).port for _ in range(7)] == [7777, 7778, 7777, 7778, 7778, 7777, 7779]


def test_adding_a_backend_keeps_existing_keys() -> None:
    """pingora-ketama's ``consistency_after_adding_host``: keys stay where they were."""
    for count in (10, 11):
        selector = ring(*(f"127.0.0.{u}:6443" for u in range(1, count + 1)))
        assert next(selector.iter(b"a")).host == "127.0.0.10"
        assert next(selector.iter(b"b")).host == "127.0.0.5"


def test_ring_has_160_points_per_unit_of_weight() -> None:
    """Each backend gets 160 points per unit of weight; Unix sockets get none."""
    selector = Consistent(
        [Backend("10.0.0.1", 80, 1), Backend("10.0.0.2", 80, 3), Backend(None, 0, 1, "/s")], {}
    )
    assert len(selector.hashes) == 4 * POINTS_PER_WEIGHT
    assert selector.hashes == sorted(selector.hashes)
    assert Counter(selector.owners) == {
        Backend("10.0.0.1", 80, 1): 160,
        Backend("10.0.0.2", 80, 3): 480,
    }


@pytest.mark.parametrize("weights", [(1, 1, 1, 1), (1, 2, 3, 1, 5)])
def test_distribution_follows_the_ring_within_one_percent(weights: tuple[int, ...]) -> None:
    """Over 100k keys each backend's share is its share of the ring, within 1 point of percent.

    Ketama with 160 points per unit of weight follows weights only to about 10-15%: that is the
    algorithm (nginx and Pingora are the same); the ring share is what it promises exactly.
    """
    backends = [Backend(f"10.0.0.{i + 1}", 80, weight) for i, weight in enumerate(weights)]
    lb = balancer(*backends)
    counts = Counter(lb.select(b"key-%d" % i) for i in range(SELECTIONS))
    shares = lb.selector.shares()
    assert sum(shares.values()) == pytest.approx(1.0)
    total = sum(weights)
    for backend in backends:
        assert counts[backend] / SELECTIONS == pytest.approx(shares[backend], abs=0.01)
        assert shares[backend] == pytest.approx(backend.weight / total, rel=0.2)


def test_removing_one_of_n_moves_at_most_one_nth_plus_two_percent() -> None:
    """Removing one of 10 backends moves at most 1/10 + 2% of 100k keys, and only its keys."""
    backends = [Backend(f"10.0.0.{i + 1}", 8080) for i in range(10)]
    removed = backends[3]
    before = Consistent(backends, {})
    after = Consistent([b for b in backends if b != removed], {})
    moved = 0
    for i in range(SELECTIONS):
        key = b"session-%d" % i
        old, new = next(before.iter(key)), next(after.iter(key))
        if old != new:
            assert old == removed
            moved += 1
    assert moved / SELECTIONS <= 1 / 10 + 0.02
    assert moved > 0


def test_unready_backend_is_skipped_like_a_removed_one() -> None:
    """With a backend down, every key goes where it would go if that backend were removed."""
    backends = [Backend(f"10.0.0.{i + 1}", 80, 1 + i % 3) for i in range(6)]
    down = backends[2]
    lb = balancer(*backends)
    lb.backends.set_healthy(down, False)
    without = Consistent([b for b in backends if b != down], {})
    for i in range(5000):
        key = b"k%d" % i
        assert lb.select(key) == next(without.iter(key))


def test_max_iterations_counts_repeated_points() -> None:
    """Keys whose backend is down need more than one candidate; the bound is respected."""
    a, b = Backend("10.0.0.1", 80), Backend("10.0.0.2", 80)
    lb = balancer(a, b)
    lb.backends.set_enabled(a, False)
    keys = [b"k%d" % i for i in range(200) if next(lb.selector.iter(b"k%d" % i)) == a]
    assert keys
    assert {lb.select(key, max_iterations=1) for key in keys} == {None}
    assert {lb.select(key, max_iterations=256) for key in keys} == {b}
    lb.backends.set_enabled(a, True)
    assert {lb.select(key, max_iterations=1) for key in keys} == {a}


def test_all_unready_empty_and_unix_only_select_none() -> None:
    """No ready backend, no backend, or only Unix sockets (not on the ring): None."""
    a = Backend("10.0.0.1", 80)
    lb = balancer(a)
    lb.backends.set_healthy(a, False)
    assert lb.select(b"x") is None
    assert balancer().select(b"x") is None
    assert balancer(Backend(None, 0, 1, "/tmp/sock")).select(b"x") is None


def test_update_rebuilds_the_ring() -> None:
    """After a backend is removed, its keys move and the others stay."""
    backends = [Backend(f"10.0.0.{i + 1}", 80) for i in range(4)]
    lb = balancer(*backends)
    before = {i: lb.select(b"k%d" % i) for i in range(1000)}
    lb.update(backends[1:])
    for i, backend in before.items():
        now = lb.select(b"k%d" % i)
        assert now == backend or backend == backends[0]


def test_weight_zero_and_options_are_refused() -> None:
    """Weight 0 (Pingora panics) and any ``selection_options`` are ValueErrors."""
    with pytest.raises(ValueError, match="weight of at least 1"):
        Consistent([Backend("10.0.0.1", 80, 0)], {})
    with pytest.raises(ValueError, match="consistent takes no selection_options"):
        Consistent([], {"points": 100})


def clockwise(selector: Consistent, key: bytes) -> Iterator[Backend]:
    """The ketama walk (the plugin's ``iter`` before it had two parts): the first point at or
    after the key's CRC32, then clockwise round the ring."""
    position = bisect_left(selector.hashes, zlib.crc32(key))
    while selector.owners:
        yield selector.owners[position % len(selector.owners)]
        position += 1


@pytest.mark.parametrize("weights", [(1, 2), (1,), ()])
def test_first_and_fallback_walk_the_ring_clockwise(weights: tuple[int, ...]) -> None:
    """``first`` then ``fallback`` (what ``LoadBalancer`` calls) and ``iter`` walk the ring from
    the key's point, round past its end."""
    backends = [Backend("10.0.0.1", 80 + i, weight=w) for i, w in enumerate(weights)]
    selector = Consistent(backends, {})
    keys = [b"", b"a", b"user-42", b"\xff" * 9]
    keys += [b"key-%d" % n for n in range(200)]  # some land past the last point: the wrap
    for key in keys:
        expected = list(itertools.islice(clockwise(selector, key), 700))
        first = selector.first(key)
        got = [] if first is None else [first, *itertools.islice(selector.fallback(key), 699)]
        assert got == expected
        assert list(itertools.islice(selector.iter(key), 700)) == expected
