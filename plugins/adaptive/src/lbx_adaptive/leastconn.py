"""``leastconn``: weighted least outstanding requests, counted across the whole service.

A backend's load is ``outstanding / weight``, where ``outstanding`` counts the service's upstream
attempts on it that have started (``on_start``) and not finished (``on_finish``), whichever client
connection they came from. The first candidate is the backend with the lowest load; ties go to the
backend with the lowest *pass* (stride scheduling: a backend's pass grows by ``1 / weight`` each
time an attempt starts on it), which makes ties a smooth weighted round robin, so sequential
traffic with no concurrency is still spread by weight. Further candidates, when the first is not
ready, follow in increasing load.

The backends sit in a binary heap keyed ``(load, pass, index)``; a change pushes a fresh entry and
the old one is skipped when it surfaces (it is stale), and the heap is compacted when stale entries
outnumber live ones. The first candidate costs O(log n) amortised, each further one O(log n).
``on_start``/``on_finish`` cost O(log n).

Counts are per lbx process: with ``threads: N`` each worker process balances its own requests.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from lbx import Backend, SelectorFactory, hookimpl

__all__ = ["LeastConnections"]

_Entry = tuple[float, float, int, int]
"""A heap entry: (load, pass, backend index, version); stale when the version is not current."""


class LeastConnections:
    """Weighted least outstanding requests over a fixed backend list."""

    def __init__(self, backends: Sequence[Backend], options: Mapping[str, Any]) -> None:
        if options:
            raise ValueError(f"leastconn takes no selection_options, got {sorted(options)}")
        self.backends = tuple(backends)
        for backend in self.backends:
            if backend.weight < 1:
                raise ValueError(f"leastconn needs a weight of at least 1, {backend!r} has 0")
        self._index = {backend: index for index, backend in enumerate(self.backends)}
        self._stride = [1.0 / backend.weight for backend in self.backends]
        self.outstanding = [0] * len(self.backends)
        """Attempts in flight per backend, in the order of ``backends``."""
        self._pass = [0.0] * len(self.backends)
        self._version = [0] * len(self.backends)
        self._clock = 0.0
        self._heap: list[_Entry] = [self._entry(index) for index in range(len(self.backends))]
        heapq.heapify(self._heap)

    def outstanding_of(self, backend: Backend) -> int:
        """Attempts in flight on ``backend`` (0 for a backend this selector does not know)."""
        index = self._index.get(backend)
        return 0 if index is None else self.outstanding[index]

    def _drop_stale_top(self) -> None:
        heap = self._heap
        version = self._version
        while heap and heap[0][3] != version[heap[0][2]]:
            heapq.heappop(heap)

    def first(self, key: bytes) -> Backend | None:
        self._drop_stale_top()
        heap = self._heap
        return self.backends[heap[0][2]] if heap else None

    def iter(self, key: bytes) -> Iterator[Backend]:
        first = self.first(key)
        if first is not None:
            yield first
        yield from self.fallback(key)

    def fallback(self, key: bytes) -> Iterator[Backend]:
        """The backends after ``first``'s, in increasing load."""
        heap = self._heap
        if not heap:
            return
        version = self._version
        backends = self.backends
        # The rest in increasing load: a best-first walk of the heap's tree, skipping stale
        # entries. The generator runs between awaits, so the heap does not change under it.
        frontier: list[tuple[_Entry, int]] = []
        for child in (1, 2):
            if child < len(heap):
                frontier.append((heap[child], child))
        heapq.heapify(frontier)
        while frontier:
            entry, position = heapq.heappop(frontier)
            for child in (2 * position + 1, 2 * position + 2):
                if child < len(heap):
                    heapq.heappush(frontier, (heap[child], child))
            if entry[3] == version[entry[2]]:
                yield backends[entry[2]]

    def on_start(self, backend: Backend) -> None:
        index = self._index.get(backend)
        if index is None:
            return  # chosen by a hook outside this service's backends, or removed since
        self.outstanding[index] += 1
        start = max(self._pass[index], self._clock)
        self._clock = start
        self._pass[index] = start + self._stride[index]
        self._push(index)

    def on_finish(self, backend: Backend, seconds: float, ok: bool) -> None:
        index = self._index.get(backend)
        if index is None or self.outstanding[index] == 0:
            return  # removed from the set, or started before an update that dropped it
        self.outstanding[index] -= 1
        self._push(index)

    def inherit(self, previous: object) -> None:
        """Carry the in-flight counts over from the selector this one replaces."""
        if not isinstance(previous, LeastConnections):
            return
        self._clock = previous._clock
        for index, backend in enumerate(self.backends):
            old = previous._index.get(backend)
            if old is None:
                self._pass[index] = self._clock  # a newcomer joins at the current virtual time
            else:
                self.outstanding[index] = previous.outstanding[old]
                self._pass[index] = previous._pass[old]
        self._heap = [self._entry(index) for index in range(len(self.backends))]
        heapq.heapify(self._heap)

    def _entry(self, index: int) -> _Entry:
        load = self.outstanding[index] * self._stride[index]
        return (load, self._pass[index], index, self._version[index])

    def _push(self, index: int) -> None:
        self._version[index] += 1
        heap = self._heap
        heapq.heappush(heap, self._entry(index))
        if len(heap) > 4 * len(self.backends) + 64:
            version = self._version
            self._heap = [entry for entry in heap if entry[3] == version[entry[2]]]
            heapq.heapify(self._heap)


@hookimpl
def register_selectors(register: Callable[[str, SelectorFactory], None]) -> None:
    register("leastconn", LeastConnections)
