"""lbx-random: the weighted random selector, driven through ``lbx.LoadBalancer``."""

from __future__ import annotations

import itertools
import random
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

import lbx
from lbx import Backend, Backends, LoadBalancer
from lbx_random import Random

A = Backend("127.0.0.1", 8001)
B = Backend("127.0.0.1", 8002)
C = Backend("127.0.0.2", 80)
SELECTIONS = 100_000


def balancer(*backends: Backend, seed: int = 7) -> LoadBalancer:
    def factory(items: Any, options: Any) -> Random:
        return Random(items, options, random.Random(seed))

    return LoadBalancer(Backends(tuple(backends)), factory, {}, "random")


def test_registered_through_the_plugin_hook() -> None:
    """Enabling ``random`` registers the ``Random`` factory under that name."""
    pm = lbx.get_plugin_manager(["random"])
    registered: dict[str, Any] = {}
    pm.hook.register_selectors(register=registered.__setitem__)
    assert registered == {"random": Random}
    assert isinstance(Random((A,), {}), lbx.Selector)


@pytest.mark.parametrize("weights", [(1, 1, 1), (3, 1), (1, 2, 3, 4)])
def test_weights_respected_within_one_percent(weights: tuple[int, ...]) -> None:
    """Over 100k selections each backend's share is its weight share, within 1% of it."""
    backends = [Backend("10.0.0.1", 80 + i, weight) for i, weight in enumerate(weights)]
    lb = balancer(*backends)
    counts = Counter(lb.select(b"") for _ in range(SELECTIONS))
    total = sum(weights)
    for backend in backends:
        expected = SELECTIONS * backend.weight / total
        assert counts[backend] == pytest.approx(expected, rel=0.01), (backend, counts)


def test_key_is_ignored() -> None:
    """The same key gets different backends: random does not hash."""
    lb = balancer(A, B, C)
    assert len({lb.select(b"same key") for _ in range(100)}) == 3


def test_fallback_is_unweighted() -> None:
    """When the first choice is not ready, further candidates are uniform, whatever the weights."""
    heavy = Backend("10.0.0.1", 80, weight=8)
    light = Backend("10.0.0.2", 80, weight=1)
    lighter = Backend("10.0.0.3", 80, weight=3)
    lb = balancer(heavy, light, lighter)
    lb.backends.set_healthy(heavy, False)
    counts = Counter(lb.select(b"") for _ in range(SELECTIONS))
    assert set(counts) == {light, lighter}
    # First choices among the ready ones keep their 1:3 ratio (4/12 of the draws); the 8/12 that
    # hit `heavy` fall back uniformly: light gets 1/12 + 8/12 * 1/2 = 5/12 in all.
    assert counts[light] == pytest.approx(SELECTIONS * 5 / 12, rel=0.01)
    assert counts[lighter] == pytest.approx(SELECTIONS * 7 / 12, rel=0.01)


def test_fallback_sequence_follows_the_generator() -> None:
    """The candidates are the weighted draw, then uniform draws, from the same 64-bit stream."""
    weighted = Backend("10.0.0.1", 80, weight=3)
    selector = Random((weighted, B), {}, random.Random(42))
    stream = random.Random(42)
    expected = [(weighted, weighted, weighted, B)[stream.getrandbits(64) % 4]]
    expected += [(weighted, B)[stream.getrandbits(64) % 2] for _ in range(20)]
    candidates = selector.iter(b"")
    assert [next(candidates) for _ in range(21)] == expected


def test_unready_backends_are_skipped() -> None:
    """Unhealthy and disabled backends never get traffic; readmitted ones do again."""
    lb = balancer(A, B, C)
    lb.backends.set_healthy(A, False)
    lb.backends.set_enabled(B, False)
    assert {lb.select(b"") for _ in range(200)} == {C}
    lb.backends.set_healthy(A, True)
    lb.backends.set_enabled(B, True)
    assert {lb.select(b"") for _ in range(200)} == {A, B, C}


def test_all_unready_selects_none() -> None:
    """When no backend is ready, ``select`` returns None without spinning to max_iterations."""
    lb = balancer(A, B, C)
    for backend in (A, B, C):
        lb.backends.set_healthy(backend, False)
    assert [lb.select(b"") for _ in range(5)] == [None] * 5


def test_max_iterations_bounds_the_walk() -> None:
    """One candidate is never enough when the only weighted backend is down; 256 always are."""
    only_choice = Backend("10.0.0.1", 80, weight=1)
    zero = Backend("10.0.0.2", 80, weight=0)  # never a first choice, only a fallback
    lb = balancer(only_choice, zero)
    lb.backends.set_healthy(only_choice, False)
    assert [lb.select(b"", max_iterations=1) for _ in range(50)] == [None] * 50
    assert [lb.select(b"", max_iterations=256) for _ in range(50)] == [zero] * 50
    assert lb.select(b"", max_iterations=0) is None


def test_empty_and_all_zero_weights() -> None:
    """No backends selects None; all-zero weights still select through the fallback."""
    assert balancer().select(b"") is None
    zero = Backend("10.0.0.2", 80, weight=0)
    assert balancer(zero).select(b"") == zero


def test_selection_options_are_refused() -> None:
    """random takes no ``selection_options``: any is a ValueError naming them."""
    with pytest.raises(ValueError, match=r"random takes no selection_options, got \['seed'\]"):
        Random((A,), {"seed": 1})


def test_update_rebuilds_over_the_new_set() -> None:
    """After the backend set changes, only the new backends are chosen, health kept."""
    lb = balancer(A, B)
    lb.backends.set_healthy(A, False)
    old = lb.selector
    lb.update([A, C])
    assert lb.selector is not old
    assert {lb.select(b"") for _ in range(100)} == {C}


def test_forked_workers_draw_different_sequences():
    """Workers forked after the selector was built do not all pick the same backends."""
    import os

    backends = [Backend("127.0.0.1", port) for port in range(8001, 8011)]
    selector = Random(backends, {})
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        picks = ",".join(next(selector.iter(b"")).addr for _ in range(30))
        os.write(write_fd, picks.encode())
        os._exit(0)
    os.close(write_fd)
    os.waitpid(pid, 0)
    child = os.read(read_fd, 65536).decode()
    os.close(read_fd)
    parent = ",".join(next(selector.iter(b"")).addr for _ in range(30))
    assert child != parent


def pingora_order(backends: list[Backend], rng: random.Random) -> Iterator[Backend]:
    """Pingora's ``Weighted<Random>`` walk (the plugin's ``iter`` before it had two parts): a
    weighted draw, then uniform draws (no weighted draw when every weight is 0)."""
    weighted = [index for index, backend in enumerate(backends) for _ in range(backend.weight)]
    if weighted:
        yield backends[weighted[rng.getrandbits(64) % len(weighted)]]
    while backends:
        yield backends[rng.getrandbits(64) % len(backends)]


@pytest.mark.parametrize("weights", [(1, 1, 1), (3, 1, 2), (0, 0)])
def test_first_and_fallback_walk_pingoras_order(weights: tuple[int, ...]) -> None:
    """``first`` then ``fallback`` (what ``LoadBalancer`` calls), ``iter``, and ``select`` with
    the first choice often unready all make Pingora's draws, in its order."""
    backends = [Backend("10.0.0.1", 80 + i, weight=w) for i, w in enumerate(weights)]
    selector, reference = Random(backends, {}, random.Random(3)), random.Random(3)
    for _ in range(7):
        first = selector.first(b"")
        got = [] if first is None else [first]
        got += itertools.islice(selector.fallback(b""), 5)
        assert got == list(itertools.islice(pingora_order(backends, reference), len(got)))
        assert list(itertools.islice(selector.iter(b""), 6)) == list(
            itertools.islice(pingora_order(backends, reference), 6)
        )
    lb, reference = balancer(*backends, seed=5), random.Random(5)
    lb.backends.set_healthy(backends[0], False)
    for _ in range(20):
        ready = next(b for b in pingora_order(backends, reference) if b != backends[0])
        assert lb.select(b"") == ready
