"""``Rotation``: weighted round robin, compiled (the core of the ``roundrobin`` selector).

lbx asks a selector for a backend on every request. In a plugin's Python that is an interpreted
call each time (1.4k instructions, about as much as the rest of the selection), so the kernel
keeps the algorithm here, compiled with the request path, and a selector hands lbx a
``Rotation``'s ``first`` and ``fallback`` as its two parts (``lbx.Selector``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lbx.lb import Backend

__all__ = ["Rotation"]


class Rotation:
    """Backends in turn, each ``weight`` times per round (Pingora's ``Weighted<RoundRobin>``).

    ``first(key)`` takes the next entry of the weighted list (each backend repeated ``weight``
    times, in the order given); ``fallback(key)`` goes on over the plain list. Both advance one
    counter, shared by every request; the key is not used.
    """

    def __init__(self, backends: Sequence[Backend]) -> None:
        self.backends: tuple[Backend, ...] = tuple(backends)
        self.weighted: tuple[int, ...] = tuple(
            index for index, backend in enumerate(self.backends) for _ in range(backend.weight)
        )
        """Indexes into ``backends``, each ``weight`` times."""
        self._count = 0

    def first(self, key: bytes) -> Backend | None:
        weighted = self.weighted
        if not weighted:
            return None
        count = self._count
        self._count = count + 1
        return self.backends[weighted[count % len(weighted)]]

    def fallback(self, key: bytes) -> Iterator[Backend]:
        backends = self.backends
        if not self.weighted:
            return
        while True:
            count = self._count
            self._count = count + 1
            yield backends[count % len(backends)]
