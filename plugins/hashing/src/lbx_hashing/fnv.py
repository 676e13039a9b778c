"""``fnv``: FNV-1a 64 of the key over the weighted backend list (Pingora's ``FNVHash``).

The first candidate is ``weighted[fnv1a_64(key) % len(weighted)]`` where ``weighted`` repeats each
backend ``weight`` times in address order, so keys spread in proportion to the weights and a key
always maps to the same backend while the set does not change. When that backend is not ready, the
fallback candidates chain the hash: ``h = fnv1a_64(h.to_bytes(8, "little"))`` and take
``backends[h % len(backends)]`` (unweighted), exactly as Pingora's ``Weighted<FnvHasher>`` does.
Changing the backend set remaps most keys; use ``consistent`` when that matters.

Cost: O(len(key)) for the hash (a Python loop, about 0.08 µs a byte), O(1) for the lookup.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from lbx import Backend, SelectorFactory, hookimpl

__all__ = ["FnvHash", "fnv1a_64"]

OFFSET_BASIS = 0xCBF29CE484222325
PRIME = 0x100000001B3
MASK = (1 << 64) - 1


def fnv1a_64(data: bytes, value: int = OFFSET_BASIS) -> int:
    """FNV-1a, 64 bits (the ``fnv`` crate's ``FnvHasher``, which Pingora uses)."""
    for byte in data:
        value = ((value ^ byte) * PRIME) & MASK
    return value


class FnvHash:
    """Weighted FNV-1a hashing of the request key over a fixed backend list."""

    def __init__(self, backends: Sequence[Backend], options: Mapping[str, Any]) -> None:
        if options:
            raise ValueError(f"fnv takes no selection_options, got {sorted(options)}")
        self.backends = tuple(backends)
        self.weighted = tuple(
            index for index, backend in enumerate(self.backends) for _ in range(backend.weight)
        )

    def first(self, key: bytes) -> Backend | None:
        weighted = self.weighted
        if not weighted:  # all weights 0: no first choice, only the fallback (Pingora would panic)
            return None
        return self.backends[weighted[fnv1a_64(key) % len(weighted)]]

    def fallback(self, key: bytes) -> Iterator[Backend]:
        backends = self.backends
        if not backends:
            return
        value = fnv1a_64(key)
        count = len(backends)
        while True:
            value = fnv1a_64(value.to_bytes(8, "little"))
            yield backends[value % count]

    def iter(self, key: bytes) -> Iterator[Backend]:
        first = self.first(key)
        if first is not None:
            yield first
        yield from self.fallback(key)


@hookimpl
def register_selectors(register: Callable[[str, SelectorFactory], None]) -> None:
    register("fnv", FnvHash)
