"""``Selector``: the contract of a selection algorithm (Pingora's ``BackendSelection``).

Kept apart from ``lbx.lb``, which is compiled by mypyc: a compiled module cannot define a
``runtime_checkable`` Protocol, and plugins check their selectors with ``isinstance``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from lbx.lb import Backend


@runtime_checkable
class Selector(Protocol):
    """A selection algorithm built for one backend list (Pingora's ``BackendSelection``).

    ``iter(key)`` yields candidates in preference order; it may repeat backends and may be
    endless: ``LoadBalancer.select`` de-duplicates and bounds the walk with ``max_iterations``.
    Selectors are rebuilt whenever the backend list changes, so they can precompute freely.

    A selector may also define ``iter`` in two parts, ``first(key)`` (the first choice, or None
    when there is none) and ``fallback(key)`` (the candidates after it, asked right after
    ``first`` for the same request), so that ``iter(key)`` is ``first(key)`` then
    ``fallback(key)``. lbx then calls ``first`` for every selection and ``fallback`` only when
    that candidate is not taken: most requests make no iterator (making a generator per request
    and dropping it after one candidate costs more than a round-robin step). Both parts are
    needed, beside ``iter``; a subclass that overrides only ``iter`` is walked by it
    (docs/plugins.md has the rules).

    A selector that needs feedback from traffic (least connections, latency) also defines
    ``on_start(backend)`` and ``on_finish(backend, seconds, ok)``: lbx calls them around every
    upstream attempt (``seconds`` until the response head, ``ok`` False on failure). It may
    define ``inherit(previous)`` to carry such state over when it is rebuilt.
    """

    def iter(self, key: bytes) -> Iterator[Backend]: ...


SelectorFactory = Callable[[Sequence["Backend"], Mapping[str, Any]], Selector]
"""Builds a ``Selector`` from the sorted backends and the service's ``selection_options``."""
