"""A selector that defines ``iter`` in two parts, ``first`` and ``fallback`` (``lbx.Selector``):
``LoadBalancer`` takes the first choice without an iterator and walks the fallback only when the
first choice is not taken, with the same de-duplication and ``max_iterations`` as ``iter``."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from lbx import Backend, Backends, LoadBalancer

A = Backend("10.0.0.1", 80)
B = Backend("10.0.0.2", 80)
C = Backend("10.0.0.3", 80)


class TwoParts:
    """First choice ``choice`` (None: no first choice); the fallback offers ``rest`` in order."""

    choice: Backend | None = A
    rest: tuple[Backend, ...] = (A, B, C)

    def __init__(self, backends: Sequence[Backend], options: Mapping[str, Any]) -> None:
        self.calls = {"first": 0, "fallback": 0, "iter": 0}

    def first(self, key: bytes) -> Backend | None:
        self.calls["first"] += 1
        return self.choice

    def fallback(self, key: bytes) -> Iterator[Backend]:
        self.calls["fallback"] += 1
        yield from self.rest

    def iter(self, key: bytes) -> Iterator[Backend]:
        self.calls["iter"] += 1
        if self.choice is not None:
            yield self.choice
        yield from self.rest


def balancer(factory: Any = TwoParts) -> tuple[LoadBalancer, Any]:
    lb = LoadBalancer(Backends((A, B, C)), factory)
    return lb, lb.selector


def test_a_taken_first_choice_makes_no_iterator() -> None:
    lb, selector = balancer()
    assert [lb.select(b"k") for _ in range(100)] == [A] * 100
    assert selector.calls == {"first": 100, "fallback": 0, "iter": 0}


def test_an_unready_first_choice_walks_the_fallback_skipping_it() -> None:
    """The fallback's own offer of the first choice is skipped, but counts an iteration (as a
    duplicate from ``iter`` does)."""
    lb, selector = balancer()
    lb.backends.set_healthy(A, False)
    assert lb.select(b"k") is B
    assert selector.calls == {"first": 1, "fallback": 1, "iter": 0}
    assert lb.select(b"k", max_iterations=2) is None  # A, then A again
    assert lb.select(b"k", max_iterations=3) is B
    assert lb.select(b"k", max_iterations=0) is None


def test_accept_decides_for_the_first_choice_too() -> None:
    lb, _ = balancer()
    seen: list[tuple[Backend, bool]] = []

    def accept(backend: Backend, ready: bool) -> bool:
        seen.append((backend, ready))
        return backend is C

    assert lb.select_with(b"k", 256, accept) is C
    assert seen == [(A, True), (B, True), (C, True)]


def test_no_first_choice_takes_the_fallback_from_its_start() -> None:
    class NoFirst(TwoParts):
        choice = None
        rest = (B, C)

    lb, selector = balancer(NoFirst)
    assert lb.select(b"k") is B
    assert selector.calls == {"first": 1, "fallback": 1, "iter": 0}


def test_every_backend_unready_stops_once_each_was_offered() -> None:
    offered: list[Backend] = []

    class Endless(TwoParts):
        def fallback(self, key: bytes) -> Iterator[Backend]:
            while True:
                for backend in (A, B, C):
                    offered.append(backend)
                    yield backend

    lb, _ = balancer(Endless)
    for backend in (A, B, C):
        lb.backends.set_healthy(backend, False)
    assert lb.select(b"k") is None
    assert offered == [A, B, C]  # A again (first's) counts, then B and C: all three offered


def test_one_backend_unready_stops_at_the_first_choice() -> None:
    lb = LoadBalancer(Backends((A,)), TwoParts)
    lb.backends.set_healthy(A, False)
    assert lb.select(b"k") is None
    assert lb.selector.calls == {"first": 1, "fallback": 0, "iter": 0}


def test_max_iterations_zero_asks_for_one_candidate_as_iter_did() -> None:
    """``max_iterations=0`` selects nothing, after one draw (a round-robin step), as before."""
    lb, selector = balancer()
    assert lb.select(b"k", max_iterations=0) is None
    assert selector.calls == {"first": 1, "fallback": 0, "iter": 0}


def test_a_selector_with_only_one_part_is_walked_by_iter() -> None:
    """``first`` without ``fallback`` is not the two-part form: ``iter`` is used, as before."""

    class OnlyFirst(TwoParts):
        fallback = None  # type: ignore[assignment]

    lb, selector = balancer(OnlyFirst)
    assert lb.select(b"k") is A
    assert selector.calls == {"first": 0, "fallback": 0, "iter": 1}


def test_a_subclass_that_overrides_only_iter_is_walked_by_its_iter() -> None:
    """A selector in two parts subclassed to change ``iter`` alone keeps its ``iter``; one
    that overrides ``first`` and ``fallback`` (or all three) is taken in two parts."""

    class OwnOrder(TwoParts):
        def iter(self, key: bytes) -> Iterator[Backend]:
            self.calls["iter"] += 1
            yield C

    lb, selector = balancer(OwnOrder)
    assert lb.select(b"k") is C
    assert selector.calls == {"first": 0, "fallback": 0, "iter": 1}

    class OwnParts(OwnOrder):
        def first(self, key: bytes) -> Backend | None:
            self.calls["first"] += 1
            return B

        def fallback(self, key: bytes) -> Iterator[Backend]:
            self.calls["fallback"] += 1
            yield C

    lb, selector = balancer(OwnParts)
    assert lb.select(b"k") is B
    assert selector.calls == {"first": 1, "fallback": 0, "iter": 0}


def test_an_update_and_a_reconfigure_use_the_new_selectors_parts() -> None:
    class OnlyIter:
        def __init__(self, backends: Sequence[Backend], options: Mapping[str, Any]) -> None:
            self.backends = tuple(backends)

        def iter(self, key: bytes) -> Iterator[Backend]:
            yield from self.backends

    lb, _ = balancer(OnlyIter)
    assert lb.select(b"k") is A
    lb.reconfigure(TwoParts, {}, "two")
    lb.backends.set_healthy(A, False)
    assert lb.select(b"k") is B
    assert lb.selector.calls == {"first": 1, "fallback": 1, "iter": 0}
    lb.update((A, B))
    assert lb.select(b"k") is B
    assert lb.selector.calls == {"first": 1, "fallback": 1, "iter": 0}
