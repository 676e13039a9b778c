"""The cyclic garbage collector, tuned for a proxy.

Requests free their objects by reference counting; the collector is only there for reference
cycles, which the request path does not make. What it costs is scanning: a collection of the
youngest generation visits every tracked object allocated since the last one that is still
alive, and promotes it. CPython starts that collection when tracked allocations minus tracked
deallocations since the last one reach the threshold. That count never goes below zero, so
under steady traffic it wanders up by chance and reaches a threshold ``T`` about every ``T²``
steps: how far it wanders grows with the requests in flight, each holding about fifteen tracked
objects (its exchange, session, heads, coroutines, futures).

With a fixed threshold of 20,000, 5,000 clients with a request each made 166 collections in
eight seconds, each visiting up to 20,000 live objects; they took 9% of the process's CPU
(docs/performance.md). So the threshold follows the open client connections and the requests
running on HTTP/2 ones (``YoungGeneration``), and stays at its floor for up to about 550 of them.
"""

from __future__ import annotations

import gc
from typing import Final

GC_GENERATION0_THRESHOLD: Final = 20_000
"""The floor of the youngest generation's threshold (CPython's default: 700)."""
YOUNG_OBJECTS_PER_CONNECTION: Final = 24
"""Threshold per open client connection: above the tracked objects of a request in flight."""


def tune_gc() -> None:
    """Collect less often on the request path.

    Requests allocate many short-lived objects that reference counting frees at once; the cyclic
    collector mostly rescans the long-lived start-up objects. Freezing those (they then live in
    a permanent generation, also shared copy-on-write with forked workers) and collecting the
    youngest generation less often targets the ~3% of request CPU the profile showed in the
    collector (docs/performance.md).
    """
    gc.collect()
    gc.freeze()
    set_young_threshold(GC_GENERATION0_THRESHOLD)


def set_young_threshold(threshold: int) -> None:
    _, generation1, generation2 = gc.get_threshold()
    gc.set_threshold(threshold, generation1, generation2)


class YoungGeneration:
    """Sizes the youngest generation's threshold to the open client connections, each HTTP/2
    request counted as one more.

    ``Connections`` calls ``resize`` when the count leaves ``[shrink_below, grow_above]``. The
    threshold is sized for half as many connections again as are open, so a count that grows by
    one at a time resizes about twenty times on its way to 5,000, not at each connection. The
    price is memory for cycles a plugin might make: up to that many objects wait for the next
    collection (about 36 per open connection, a few KiB each).
    """

    def __init__(self) -> None:
        self.grow_above = 0
        self.shrink_below = 0
        self.threshold = GC_GENERATION0_THRESHOLD
        set_young_threshold(GC_GENERATION0_THRESHOLD)

    def resize(self, connections: int) -> None:
        sized_for = connections + connections // 2
        self.grow_above = sized_for
        self.shrink_below = sized_for // 3
        threshold = max(GC_GENERATION0_THRESHOLD, YOUNG_OBJECTS_PER_CONNECTION * sized_for)
        if threshold != self.threshold:
            self.threshold = threshold
            set_young_threshold(threshold)
