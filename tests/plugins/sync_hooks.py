"""Fixture plugin: sync impls of sync hooks (a selector, ``configure``, ``fail_to_connect``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from lbx import Backend, Config, ProxyError, SelectorFactory, hookimpl

CONFIGURED: list[Config] = []


class FirstBackend:
    """Always offers the first backend: enough to prove the selector was registered."""

    def __init__(self, backends: Sequence[Backend], options: Mapping[str, Any]) -> None:
        self.backends = tuple(backends)

    def iter(self, key: bytes) -> Iterator[Backend]:
        yield from self.backends[:1]


@hookimpl
def register_selectors(register: Callable[[str, SelectorFactory], None]) -> None:
    register("sync_hooks_first", FirstBackend)


@hookimpl
def configure(config: Config) -> None:
    CONFIGURED.append(config)


@hookimpl
def fail_to_connect(error: ProxyError) -> None:
    error.retry = True
