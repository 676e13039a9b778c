"""lbx-roundrobin: the weighted round-robin selector, driven through ``lbx.LoadBalancer``."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pytest

import lbx
from lbx import Backend, Backends, LoadBalancer
from lbx_roundrobin import RoundRobin

A = Backend("127.0.0.1", 8001)
B = Backend("127.0.0.1", 8002)
C = Backend("127.0.0.2", 80)


def balancer(*backends: Backend, options: Mapping[str, Any] | None = None) -> LoadBalancer:
    return LoadBalancer(Backends(tuple(backends)), RoundRobin, options, "roundrobin")


def picks(lb: LoadBalancer, count: int, **kwargs: Any) -> list[Backend | None]:
    return [lb.select(b"", **kwargs) for _ in range(count)]


def test_registered_through_the_plugin_hook() -> None:
    """Enabling ``roundrobin`` registers the ``RoundRobin`` factory under that name."""
    pm = lbx.get_plugin_manager(["roundrobin"])
    registered: dict[str, Any] = {}
    pm.hook.register_selectors(register=registered.__setitem__)
    assert registered == {"roundrobin": RoundRobin}
    assert isinstance(RoundRobin((A,), {}), lbx.Selector)


def test_equal_weights_alternate_in_address_order() -> None:
    """Equal weights alternate exactly, in address order whatever the configured order."""
    lb = balancer(C, B, A)
    assert lb.backends.items == (A, B, C)
    assert picks(lb, 9) == [A, B, C] * 3


def test_weights_three_to_one() -> None:
    """Weights 3:1 give 3:1 over 100k selections (within 1%)."""
    heavy = Backend("127.0.0.1", 8001, weight=3)
    light = Backend("127.0.0.1", 8002, weight=1)
    lb = balancer(light, heavy)
    counts = Counter(picks(lb, 100_000))
    assert set(counts) == {heavy, light}
    assert counts[heavy] == pytest.approx(75_000, rel=0.01)
    assert counts[light] == pytest.approx(25_000, rel=0.01)
    assert picks(lb, 4) == [heavy, heavy, heavy, light]


def test_unready_backend_is_skipped() -> None:
    """An unhealthy backend never gets traffic; the others share it."""
    lb = balancer(A, B, C)
    assert lb.backends.set_healthy(B, False) is True
    counts = Counter(picks(lb, 3000))
    assert set(counts) == {A, C}
    assert abs(counts[A] - counts[C]) <= 3000 * 0.01


def test_disabled_backend_is_skipped_and_readmitted() -> None:
    """A disabled (drained) backend is skipped until enabled again."""
    lb = balancer(A, B)
    lb.backends.set_enabled(A, False)
    assert set(picks(lb, 10)) == {B}
    lb.backends.set_enabled(A, True)
    assert set(picks(lb, 10)) == {A, B}


def test_backend_back_to_healthy_gets_traffic() -> None:
    """A backend that becomes healthy again is selected again."""
    lb = balancer(A, B)
    lb.backends.set_healthy(A, False)
    assert set(picks(lb, 10)) == {B}
    lb.backends.set_healthy(A, True)
    assert set(picks(lb, 10)) == {A, B}


def test_all_unready_selects_none() -> None:
    """When no backend is ready, ``select`` returns None (and does not spin)."""
    lb = balancer(A, B, C)
    for backend in (A, B, C):
        lb.backends.set_healthy(backend, False)
    assert picks(lb, 5) == [None] * 5


def test_max_iterations_bounds_the_walk() -> None:
    """``max_iterations`` bounds how many candidates are tried before giving up."""
    lb = balancer(A, B)
    lb.backends.set_healthy(A, False)
    # The weighted list starts every request at A here (the fallback advances the counter too),
    # so one candidate is never enough and two always are.
    assert picks(lb, 10, max_iterations=1) == [None] * 10
    assert picks(lb, 10, max_iterations=2) == [B] * 10
    assert picks(lb, 3, max_iterations=0) == [None] * 3


def test_max_iterations_bounds_an_endless_selector() -> None:
    """An endless selector that only offers an unready backend is cut off at max_iterations."""
    offered: list[Backend] = []

    class Stuck:
        def __init__(self, backends: Sequence[Backend], options: Mapping[str, Any]) -> None:
            pass

        def iter(self, key: bytes) -> Iterator[Backend]:
            while True:
                offered.append(A)
                yield A

    lb = LoadBalancer(Backends((A, B)), Stuck)
    lb.backends.set_healthy(A, False)
    assert lb.select(b"", max_iterations=50) is None
    assert len(offered) <= 51


def test_empty_backend_list() -> None:
    """With no backends, ``select`` returns None."""
    lb = balancer()
    assert picks(lb, 3) == [None] * 3


def test_selection_options_are_refused() -> None:
    """roundrobin takes no ``selection_options``: any is a ValueError naming them."""
    with pytest.raises(
        ValueError, match=r"roundrobin takes no selection_options, got \['spread'\]"
    ):
        balancer(A, B, options={"spread": 2})
    assert picks(balancer(A, B, options={}), 2) == [A, B]


def test_update_rebuilds_the_selector() -> None:
    """Changing the backend set rebuilds the selector over the new, sorted set."""
    lb = balancer(A, B)
    old = lb.selector
    lb.update([C, A])
    assert lb.selector is not old
    assert lb.backends.items == (A, C)
    assert set(picks(lb, 10)) == {A, C}
    assert B not in lb.backends.health


def test_update_alternates_over_new_set_exactly() -> None:
    """After an update the new selector alternates exactly over the new backends."""
    lb = balancer(A)
    lb.update([C, B, A])
    assert picks(lb, 6) == [A, B, C] * 2


def test_update_with_same_set_keeps_selector_and_health() -> None:
    """An update with the same backends changes nothing, health state included."""
    lb = balancer(A, B)
    lb.backends.set_healthy(A, False)
    selector = lb.selector
    lb.update([B, A])
    assert lb.selector is selector
    assert not lb.backends.ready(A)


def test_update_keeps_health_of_remaining_backends() -> None:
    """Backends present before and after an update keep their health state."""
    lb = balancer(A, B)
    lb.backends.set_healthy(A, False)
    lb.update([A, C])
    assert not lb.backends.ready(A)
    assert lb.backends.ready(C)
    assert set(picks(lb, 10)) == {C}


def pingora_order(backends: Sequence[Backend], counter: Iterator[int]) -> Iterator[Backend]:
    """Pingora's ``Weighted<RoundRobin>`` walk (the plugin's ``iter`` before it had two parts):
    the weighted list at the shared counter, then the plain list at the same counter."""
    weighted = [index for index, backend in enumerate(backends) for _ in range(backend.weight)]
    yield backends[weighted[next(counter) % len(weighted)]]
    while True:
        yield backends[next(counter) % len(backends)]


@pytest.mark.parametrize("weights", [(1, 1, 1), (3, 1, 2)])
def test_first_and_fallback_walk_pingoras_order(weights: tuple[int, ...]) -> None:
    """``first`` then ``fallback`` (what ``LoadBalancer`` calls), ``iter``, and ``select`` with
    the first choice often unready all follow Pingora's order and counter."""
    backends = [Backend("127.0.0.1", 8001 + i, weight=w) for i, w in enumerate(weights)]
    selector, counter = RoundRobin(backends, {}), itertools.count()
    for _ in range(7):
        expected = list(itertools.islice(pingora_order(backends, counter), 6))
        assert [selector.first(b""), *itertools.islice(selector.fallback(b""), 5)] == expected
        assert list(itertools.islice(selector.iter(b""), 6)) == list(
            itertools.islice(pingora_order(backends, counter), 6)
        )
    lb, counter = balancer(*backends), itertools.count()
    lb.backends.set_healthy(backends[0], False)
    for _ in range(20):
        ready = next(b for b in pingora_order(backends, counter) if b != backends[0])
        assert lb.select(b"") == ready
