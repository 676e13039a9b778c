"""lbx-random: weighted random selection, with the semantics of Pingora's ``Weighted<Random>``.

The first candidate of each request is drawn from the weighted list (each backend repeated
``weight`` times, in address order), so a backend with weight 3 is chosen three times as often as
one with weight 1. When that candidate is not ready, every further candidate is drawn uniformly
from the plain backend list (Pingora's *unweighted fallback*), endlessly: ``LoadBalancer.select``
bounds the walk with ``max_iterations`` and stops once every backend was offered. The key is
ignored. Each candidate costs O(1).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from lbx import Backend, SelectorFactory, hookimpl

__all__ = ["Random"]


class Random:
    """Weighted random choice over a fixed backend list."""

    def __init__(
        self,
        backends: Sequence[Backend],
        options: Mapping[str, Any],
        rng: random.Random | None = None,
    ) -> None:
        if options:
            raise ValueError(f"random takes no selection_options, got {sorted(options)}")
        self.backends = tuple(backends)
        self.weighted = tuple(
            index for index, backend in enumerate(self.backends) for _ in range(backend.weight)
        )
        # The module's generator is reseeded in every forked worker; an own Random() built
        # before the fork would make every worker draw the same sequence.
        self._bits = rng.getrandbits if rng is not None else random.getrandbits

    def first(self, key: bytes) -> Backend | None:
        weighted = self.weighted
        if not weighted:  # all weights 0: no first choice, only the fallback (Pingora would panic)
            return None
        return self.backends[weighted[self._bits(64) % len(weighted)]]

    def fallback(self, key: bytes) -> Iterator[Backend]:
        backends = self.backends
        if not backends:
            return
        bits = self._bits
        count = len(backends)
        while True:
            yield backends[bits(64) % count]

    def iter(self, key: bytes) -> Iterator[Backend]:
        first = self.first(key)
        if first is not None:
            yield first
        yield from self.fallback(key)


@hookimpl
def register_selectors(register: Callable[[str, SelectorFactory], None]) -> None:
    register("random", Random)
