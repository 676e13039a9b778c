"""``ewma``: power of two choices over peak-EWMA latency (Finagle's and Linkerd's ``PeakEwma``).

Each backend keeps a latency estimate ``rtt`` fed by ``on_finish(seconds)``, the time from the
start of an attempt to the response head:

- *peak*: a sample above the estimate replaces it at once, so a backend that slows down is
  avoided from its next response on;
- *EWMA*: a lower sample pulls the estimate down with weight ``1 - exp(-dt / decay)``, ``dt``
  being the time since the previous update, so it recovers over about ``decay`` seconds;
- an estimate not refreshed decays towards 0 (``rtt * exp(-idle / decay)``), so an idle or
  avoided backend is eventually tried again;
- a failed attempt counts as ``max(seconds, failure_penalty)``, so a backend that fails fast does
  not look fast.

A backend's cost is ``rtt * (outstanding + 1)``. The first candidate is the cheaper of two distinct
backends drawn at random in proportion to their weights (the first drawn wins a tie); the second
candidate is the other one, and the rest follow round the backend list from a random place, so
when candidates are not ready every backend is offered once in ``n`` steps. Drawing costs
O(log n) (binary search over cumulative weights); nothing per request is O(n).

``selection_options``: ``decay`` (seconds, default 10), ``default_rtt`` (seconds, the estimate of
a backend never measured, default 0.03), ``failure_penalty`` (seconds, default 1).
"""

from __future__ import annotations

import math
import random
import time
from bisect import bisect_right
from collections.abc import Callable, Iterator, Mapping, Sequence
from itertools import accumulate
from typing import Any

from lbx import Backend, SelectorFactory, hookimpl

__all__ = ["PeakEwma"]

DEFAULTS = {"decay": 10.0, "default_rtt": 0.03, "failure_penalty": 1.0}


class PeakEwma:
    """Power of two choices over peak-EWMA latency times outstanding requests."""

    def __init__(
        self,
        backends: Sequence[Backend],
        options: Mapping[str, Any],
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        unknown = sorted(set(options) - set(DEFAULTS))
        if unknown:
            raise ValueError(
                f"ewma: unknown selection_options {unknown}; known: {', '.join(DEFAULTS)}"
            )
        settings = dict(DEFAULTS)
        for name, value in options.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"ewma: selection_options.{name} must be a positive number")
            settings[name] = float(value)
        self.decay = settings["decay"]
        self.default_rtt = settings["default_rtt"]
        self.failure_penalty = settings["failure_penalty"]
        self.backends = tuple(backends)
        for backend in self.backends:
            if backend.weight < 1:
                raise ValueError(f"ewma needs a weight of at least 1, {backend!r} has 0")
        self._index = {backend: index for index, backend in enumerate(self.backends)}
        self._cumulative = list(accumulate(backend.weight for backend in self.backends))
        self._clock = clock
        # The module's generator is reseeded in every forked worker; an own Random() built
        # before the fork would make every worker draw the same sequence.
        self._random = rng.random if rng is not None else random.random
        now = clock()
        self.rtt = [self.default_rtt] * len(self.backends)
        """Latency estimate per backend (seconds) as of ``stamp``, in the order of ``backends``."""
        self.stamp = [now] * len(self.backends)
        self.outstanding = [0] * len(self.backends)

    def cost(self, backend: Backend) -> float:
        """The backend's current cost: decayed latency estimate times (outstanding + 1)."""
        index = self._index[backend]
        return self._cost(index, self._clock())

    def _cost(self, index: int, now: float) -> float:
        idle = now - self.stamp[index]
        rtt = self.rtt[index]
        if idle > 0:
            rtt *= math.exp(-idle / self.decay)
        return rtt * (self.outstanding[index] + 1)

    def iter(self, key: bytes) -> Iterator[Backend]:
        backends = self.backends
        count = len(backends)
        if count == 0:
            return
        if count == 1:
            yield backends[0]
            return
        cumulative = self._cumulative
        total = cumulative[-1]
        rand = self._random
        first = bisect_right(cumulative, rand() * total)
        second = first
        for _ in range(4):  # a second, distinct draw; after 4 misses take the neighbour
            second = bisect_right(cumulative, rand() * total)
            if second != first:
                break
        else:
            second = (first + 1) % count
        now = self._clock()
        if self._cost(second, now) < self._cost(first, now):
            first, second = second, first
        yield backends[first]
        yield backends[second]
        start = int(rand() * count)
        for step in range(count):
            index = (start + step) % count
            if index != first and index != second:
                yield backends[index]

    def on_start(self, backend: Backend) -> None:
        index = self._index.get(backend)
        if index is not None:
            self.outstanding[index] += 1

    def on_finish(self, backend: Backend, seconds: float, ok: bool) -> None:
        index = self._index.get(backend)
        if index is None:
            return  # removed from the set while the attempt was in flight
        if self.outstanding[index]:
            self.outstanding[index] -= 1
        sample = seconds if ok else max(seconds, self.failure_penalty)
        now = self._clock()
        idle = now - self.stamp[index]
        rtt = self.rtt[index]
        if sample > rtt:
            rtt = sample
        elif idle > 0:
            keep = math.exp(-idle / self.decay)
            rtt = rtt * keep + sample * (1.0 - keep)
        self.rtt[index] = rtt
        self.stamp[index] = now

    def inherit(self, previous: object) -> None:
        """Keep estimates and in-flight counts of backends that stay; newcomers get the mean."""
        if not isinstance(previous, PeakEwma):
            return
        now = self._clock()
        kept: list[float] = []
        for index, backend in enumerate(self.backends):
            old = previous._index.get(backend)
            if old is not None:
                self.rtt[index] = previous.rtt[old]
                self.stamp[index] = previous.stamp[old]
                self.outstanding[index] = previous.outstanding[old]
                kept.append(previous._cost(old, now) / (previous.outstanding[old] + 1))
        if kept:
            mean = sum(kept) / len(kept)
            for index, backend in enumerate(self.backends):
                if backend not in previous._index:
                    self.rtt[index] = mean
                    self.stamp[index] = now


@hookimpl
def register_selectors(register: Callable[[str, SelectorFactory], None]) -> None:
    register("ewma", PeakEwma)
