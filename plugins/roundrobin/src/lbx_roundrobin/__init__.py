"""lbx-roundrobin: weighted round robin, with Pingora's ``RoundRobin`` semantics.

The first candidate for each request is taken from the weighted list (each backend repeated
``weight`` times, in address order) at a counter shared by all requests of the service; the
fallback candidates, offered when the first is not ready, advance the same counter over the plain
backend list, as Pingora's ``Weighted<RoundRobin>`` does.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from lbx import Backend, SelectorFactory, hookimpl

__all__ = ["RoundRobin"]


class RoundRobin:
    """Weighted round robin over a fixed backend list."""

    def __init__(self, backends: Sequence[Backend], options: Mapping[str, Any]) -> None:
        if options:
            raise ValueError(f"roundrobin takes no selection_options, got {sorted(options)}")
        self.backends = tuple(backends)
        self.weighted = tuple(
            index for index, backend in enumerate(self.backends) for _ in range(backend.weight)
        )
        self._counter = itertools.count()

    def first(self, key: bytes) -> Backend | None:
        weighted = self.weighted
        if not weighted:
            return None
        return self.backends[weighted[next(self._counter) % len(weighted)]]

    def fallback(self, key: bytes) -> Iterator[Backend]:
        if not self.weighted:
            return
        backends = self.backends
        counter = self._counter
        while True:
            yield backends[next(counter) % len(backends)]

    def iter(self, key: bytes) -> Iterator[Backend]:
        first = self.first(key)
        if first is not None:
            yield first
        yield from self.fallback(key)


@hookimpl
def register_selectors(register: Callable[[str, SelectorFactory], None]) -> None:
    register("roundrobin", RoundRobin)
