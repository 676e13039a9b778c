"""lbx-roundrobin: weighted round robin, with Pingora's ``RoundRobin`` semantics.

The first candidate for each request is taken from the weighted list (each backend repeated
``weight`` times, in address order) at a counter shared by all requests of the service; the
fallback candidates, offered when the first is not ready, advance the same counter over the plain
backend list, as Pingora's ``Weighted<RoundRobin>`` does. The counting is ``lbx.Rotation``'s,
compiled with lbx's request path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from lbx import Backend, Rotation, SelectorFactory, hookimpl

__all__ = ["RoundRobin"]


class RoundRobin:
    """Weighted round robin over a fixed backend list."""

    def __init__(self, backends: Sequence[Backend], options: Mapping[str, Any]) -> None:
        if options:
            raise ValueError(f"roundrobin takes no selection_options, got {sorted(options)}")
        rotation = Rotation(backends)
        # The two parts lbx calls on every request: compiled, so no Python runs there.
        self.first: Callable[[bytes], Backend | None] = rotation.first
        self.fallback: Callable[[bytes], Iterator[Backend]] = rotation.fallback

    def iter(self, key: bytes) -> Iterator[Backend]:
        first = self.first(key)
        if first is not None:
            yield first
        yield from self.fallback(key)


@hookimpl
def register_selectors(register: Callable[[str, SelectorFactory], None]) -> None:
    register("roundrobin", RoundRobin)
