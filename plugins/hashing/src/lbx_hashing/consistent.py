"""``consistent``: the ketama ring of nginx's ``hash $key consistent`` and Pingora's ``Consistent``.

Ring construction, point for point what ``ngx_http_upstream_init_chash`` and ``pingora-ketama``
do, so that lbx, nginx and Pingora send a key to the same backend:

- each IP backend, in address order, gets ``160 * weight`` points (Unix sockets get none);
- ``base`` is the CRC32 state after ``"<ip>\\0<port>"``; point ``j`` is
  ``crc32(base ++ prev.to_bytes(4, "little"))`` where ``prev`` is point ``j - 1`` (0 for the first);
- points are sorted by hash (a stable sort) and equal hashes are dropped except the first, i.e. the
  backend listed first wins a collision, as in nginx's insertion sort.

Lookup: ``crc32(key)``, then the first point whose hash is ``>=`` it (binary search, wrapping to
point 0 past the end): O(log points). The fallback candidates walk the ring clockwise one point at
a time; a backend owning consecutive points repeats and ``LoadBalancer.select`` de-duplicates, each
repeat counting towards ``max_iterations`` as in Pingora's ``UniqueIterator``.

IPv6 backends hash their address in its canonical text form without brackets (``::1``), as Pingora
does; nginx hashes the text of the ``server`` line, brackets included, so for IPv6 lbx agrees with
Pingora and not with nginx. Hostnames are resolved to addresses when the config is loaded and the
address is hashed (nginx would hash the name as written).
"""

from __future__ import annotations

import ipaddress
import zlib
from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from lbx import Backend, SelectorFactory, hookimpl

__all__ = ["POINTS_PER_WEIGHT", "Consistent"]

POINTS_PER_WEIGHT = 160
"""Points on the ring per unit of weight (nginx's and Pingora's constant)."""


class Consistent:
    """The ketama continuum over a fixed backend list."""

    def __init__(self, backends: Sequence[Backend], options: Mapping[str, Any]) -> None:
        if options:
            raise ValueError(f"consistent takes no selection_options, got {sorted(options)}")
        self.backends = tuple(backends)
        points: list[tuple[int, int]] = []
        crc32 = zlib.crc32
        for node, backend in enumerate(self.backends):
            if backend.host is None:
                continue  # Unix sockets are not on the ring (Pingora: "TODO: UDS")
            if backend.weight < 1:
                raise ValueError(f"consistent needs a weight of at least 1, {backend!r} has 0")
            host = str(ipaddress.ip_address(backend.host))
            base = crc32(f"{host}\0{backend.port}".encode("ascii"))
            value = 0
            for _ in range(backend.weight * POINTS_PER_WEIGHT):
                value = crc32(value.to_bytes(4, "little"), base)
                points.append((value, node))
        points.sort(key=_hash_of)  # stable: on equal hashes the earlier backend stays first
        hashes: list[int] = []
        owners: list[Backend] = []
        for value, node in points:
            if hashes and hashes[-1] == value:
                continue
            hashes.append(value)
            owners.append(self.backends[node])
        self.hashes = hashes
        """The ring: sorted, distinct point hashes."""
        self.owners = tuple(owners)
        """``owners[i]`` is the backend that owns ``hashes[i]``."""

    def index(self, key: bytes) -> int:
        """The ring position a key maps to (the first point at or after its CRC32)."""
        position = bisect_left(self.hashes, zlib.crc32(key))
        return 0 if position == len(self.hashes) else position

    def first(self, key: bytes) -> Backend | None:
        return self.owners[self.index(key)] if self.owners else None

    def fallback(self, key: bytes) -> Iterator[Backend]:
        """The points clockwise after the key's, round and round."""
        owners = self.owners
        count = len(owners)
        if not count:
            return
        position = self.index(key)
        while True:
            position += 1
            if position == count:
                position = 0
            yield owners[position]

    def iter(self, key: bytes) -> Iterator[Backend]:
        first = self.first(key)
        if first is not None:
            yield first
        yield from self.fallback(key)

    def shares(self) -> dict[Backend, float]:
        """The fraction of the 32-bit key space each backend owns (what it receives on average)."""
        hashes = self.hashes
        result = dict.fromkeys((b for b in self.backends if b.host is not None), 0.0)
        previous = hashes[-1] - (1 << 32) if hashes else 0
        for value, owner in zip(hashes, self.owners, strict=True):
            result[owner] += (value - previous) / (1 << 32)
            previous = value
        return result


def _hash_of(point: tuple[int, int]) -> int:
    return point[0]


@hookimpl
def register_selectors(register: Callable[[str, SelectorFactory], None]) -> None:
    register("consistent", Consistent)
