"""Load balancing core: ``Backend``, ``Backends`` (the set plus health) and ``LoadBalancer``.

Shaped like ``pingora-load-balancing``: a selection algorithm is a component (a ``Selector``) that
is built from the backend list and yields candidates for a key; ``LoadBalancer.select`` walks those
candidates and returns the first one that is ready (healthy, not ejected, enabled).
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import mmap
import socket
import struct
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final

from lbx.selector import Selector, SelectorFactory

monotonic: Final = time.monotonic  # compiled: a C static, not a module attribute per call

MAX_WEIGHT: Final = 256
"""The largest weight of a backend (HAProxy's): selectors expand weights into lists and hash
rings, so a weight is memory (a weight of 10^8 took 800 MB)."""


def check_weight(weight: object) -> int:
    """``weight`` if it is a whole number from 1 to ``MAX_WEIGHT``, else ``ValueError`` saying so
    (every source of backends checks with it: the config, discovery, the admin endpoint)."""
    if isinstance(weight, bool) or not isinstance(weight, int) or not 1 <= weight <= MAX_WEIGHT:
        raise ValueError(f"weight: expected a whole number from 1 to {MAX_WEIGHT}, got {weight!r}")
    return weight


BACKEND_ENTRY_KEYS: Final = ("address", "weight", "enabled")


def backend_entry(value: object) -> tuple[str, int, bool]:
    """A backend as discovery sources list it: ``"ip:port"``, or a mapping of ``address``,
    ``weight`` (1) and ``enabled`` (true). Returns ``(address, weight, enabled)``, the address
    still to ``Backend.parse``; else ``ValueError`` with the reason (a misspelt key gets a
    did-you-mean)."""
    if isinstance(value, str):
        return value, 1, True
    if not isinstance(value, dict):
        raise ValueError(f"expected 'ip:port' or {{{', '.join(BACKEND_ENTRY_KEYS)}}}")
    for key in value:
        if key not in BACKEND_ENTRY_KEYS:
            close = difflib.get_close_matches(str(key), BACKEND_ENTRY_KEYS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown key {key!r}{hint}")
    address = value.get("address")
    if not isinstance(address, str):
        raise ValueError(f"address: expected 'ip:port', got {address!r}")
    weight = check_weight(value.get("weight", 1))
    enabled = value.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ValueError(f"enabled: expected true or false, got {enabled!r}")
    return address, weight, enabled


@dataclass(frozen=True, slots=True)
class Backend:
    """One upstream server: an address and a relative weight.

    ``host`` is an IP literal (hostnames are resolved when the config is loaded, as Pingora does),
    or ``None`` for a Unix socket, whose path is then in ``unix_path``.
    """

    host: str | None
    port: int
    weight: int = 1
    unix_path: str | None = None
    _hash: int = field(default=0, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Every source of backends refuses 0 with check_weight; selectors keep Pingora's meaning
        # of 0 (a fallback, never a first choice) for backends a plugin makes itself.
        if not 0 <= self.weight <= MAX_WEIGHT:
            raise ValueError(
                f"weight: expected a whole number from 1 to {MAX_WEIGHT}, got {self.weight!r}"
            )
        # Hashed several times per request (health, peers, de-duplication): computed once.
        object.__setattr__(self, "_hash", hash((self.host, self.port, self.weight, self.unix_path)))

    def __hash__(self) -> int:
        return self._hash

    @classmethod
    def parse(cls, text: str, weight: int = 1) -> list[Backend]:
        """Parse ``ip:port``, ``[v6]:port``, ``name:port`` (resolved now) or ``unix:/path``.

        A name that resolves to several addresses gives one backend per address, as Pingora's
        ``LoadBalancer::try_from_iter`` does. Raises ``ValueError`` with a readable reason.
        """
        if text.startswith("unix:"):
            path = text[len("unix:") :]
            if not path:
                raise ValueError(f"{text!r}: empty Unix socket path")
            return [cls(None, 0, weight, path)]
        host, port = split_host_port(text)
        try:
            ipaddress.ip_address(host)
        except ValueError:
            try:
                infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except OSError as exc:
                raise ValueError(f"{text!r}: cannot resolve {host!r} ({exc})") from None
            hosts = dict.fromkeys(str(info[4][0]) for info in infos)
            return [cls(ip, port, weight) for ip in hosts]
        return [cls(host, port, weight)]

    @property
    def addr(self) -> str:
        """The address as Pingora prints it: ``ip:port``, ``[v6]:port`` or ``unix:/path``."""
        if self.host is None:
            return f"unix:{self.unix_path}"
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"

    def sort_key(self) -> tuple[int, bytes, int, str]:
        """Pingora orders backends by socket address (a BTreeSet): v4, then v6, then Unix."""
        if self.host is None:
            return (2, b"", 0, self.unix_path or "")
        ip = ipaddress.ip_address(self.host)
        return (ip.version // 6, ip.packed, self.port, "")

    def __repr__(self) -> str:
        return f"Backend {{ addr: {self.addr}, weight: {self.weight} }}"


def split_host_port(text: str) -> tuple[str, int]:
    """Split ``host:port`` or ``[v6]:port``; raises ``ValueError`` naming what is wrong."""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"{text!r}: expected [ipv6]:port")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ValueError(f"{text!r}: expected host:port")
        if ":" in host:
            raise ValueError(f"{text!r}: write IPv6 addresses as [addr]:port")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{text!r}: port must be a number from 0 to 65535")
    return host, int(port_text)


_UNTIL: Final = struct.Struct("d")


class Health:
    """Health and admin state of one backend. Health checks write it; selection reads it.

    Three flags, each with one writer: ``healthy`` (active health checks), ``ejected`` (passive
    checks: outlier ejection after proxy failures) and ``enabled`` (an operator draining a
    backend). A backend is ``ready`` when healthy, not ejected and enabled. The flags live in
    bytes that ``share`` can move into memory shared by every worker process, so one set of
    health checks serves them all. ``consecutive`` and ``reason`` stay with the writing process.
    """

    __slots__ = ("_at", "_cells", "consecutive", "reason")

    SIZE: ClassVar[int] = 3 + _UNTIL.size
    """Bytes of shared state per backend: the three flags, then when an ejection ends."""

    def __init__(
        self, healthy: bool = True, enabled: bool = True, consecutive: int = 0, reason: str = ""
    ) -> None:
        self._cells: bytearray | mmap.mmap = bytearray((healthy, enabled, False)) + bytes(
            _UNTIL.size
        )
        self._at = 0
        self.consecutive = consecutive
        self.reason = reason

    @property
    def healthy(self) -> bool:
        return self._cells[self._at] == 1

    @healthy.setter
    def healthy(self, value: bool) -> None:
        self._cells[self._at] = 1 if value else 0

    @property
    def enabled(self) -> bool:
        return self._cells[self._at + 1] == 1

    @enabled.setter
    def enabled(self, value: bool) -> None:
        self._cells[self._at + 1] = 1 if value else 0

    @property
    def ejected(self) -> bool:
        return self._cells[self._at + 2] == 1

    @ejected.setter
    def ejected(self, value: bool) -> None:
        self._cells[self._at + 2] = 1 if value else 0

    @property
    def ejected_until(self) -> float:
        """``time.monotonic()`` at which the current ejection ends (inf: until cleared)."""
        return float(_UNTIL.unpack_from(self._cells, self._at + 3)[0])

    @ejected_until.setter
    def ejected_until(self, value: float) -> None:
        _UNTIL.pack_into(self._cells, self._at + 3, value)

    @property
    def ready(self) -> bool:
        cells, at = self._cells, self._at
        if cells[at] != 1 or cells[at + 1] != 1:
            return False
        # An ejection is over at its deadline even if the process that set it died meanwhile
        # (CLOCK_MONOTONIC is the same for every process of the machine).
        return cells[at + 2] == 0 or self.ejected_until <= monotonic()

    @property
    def flags_ready(self) -> bool:
        """``ready`` by the flags alone: what changes announce (an ejection ends when cleared)."""
        cells, at = self._cells, self._at
        return cells[at] == 1 and cells[at + 1] == 1 and cells[at + 2] == 0

    def share(self, cells: mmap.mmap, at: int) -> None:
        """Move the state bytes to ``cells[at:at + SIZE]``, keeping their values."""
        cells[at : at + self.SIZE] = bytes(self._cells[self._at : self._at + self.SIZE])
        self._cells, self._at = cells, at

    def attach(self, cells: mmap.mmap, at: int) -> None:
        """Use the state bytes at ``cells[at:at + SIZE]`` as they are (another process wrote
        them: a worker taking over a backend that the discovery process added)."""
        self._cells, self._at = cells, at

    def copy_from(self, other: Health) -> None:
        """Take every value of ``other`` (a reload carrying the state over)."""
        self._cells[self._at : self._at + self.SIZE] = bytes(
            other._cells[other._at : other._at + other.SIZE]
        )
        self.consecutive, self.reason = other.consecutive, other.reason

    def __repr__(self) -> str:
        return (
            f"Health(healthy={self.healthy}, ejected={self.ejected}, enabled={self.enabled}, "
            f"reason={self.reason!r})"
        )


HealthListener = Callable[[Backend, Health], None]


@dataclass(frozen=True)
class Change:
    """What one update of a backend set did. Backends are the same when their address is
    (``Backend.addr``): a weight change keeps the backend, its health and its connections."""

    added: tuple[Backend, ...] = ()
    removed: tuple[Backend, ...] = ()
    reweighted: tuple[Backend, ...] = ()
    """Backends present before and after whose weight changed (the new ``Backend``)."""

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.reweighted)

    def describe(self) -> str:
        """``+a, -b, b weight 1 -> 3``: for the log line of an update."""
        parts = [f"+{b.addr}" for b in self.added] + [f"-{b.addr}" for b in self.removed]
        parts += [f"{b.addr} weight {b.weight}" for b in self.reweighted]
        return ", ".join(parts)


SetListener = Callable[[Change], None]


def each_address_once(backends: Iterable[Backend]) -> list[Backend]:
    """``backends`` in their order, each address once: the first listed (two names may resolve
    to one address; Pingora keeps a set)."""
    unique: dict[str, Backend] = {}
    for backend in backends:
        unique.setdefault(backend.addr, backend)
    return list(unique.values())


@dataclass
class Backends:
    """The backend set of one service plus each backend's health and enabled state."""

    items: tuple[Backend, ...] = ()
    health: dict[Backend, Health] = field(default_factory=dict)
    listeners: list[HealthListener] = field(default_factory=list)
    set_listeners: list[SetListener] = field(default_factory=list)
    """Called with the ``Change`` after every update of the set (health checks follow it)."""
    initial_healthy: bool = True
    """The ``healthy`` flag a backend that joins the set starts with: False while active health
    checks are configured, so that it takes no traffic before its first check passes."""
    version: int = 0
    """Incremented by every update that changed the set."""

    def __post_init__(self) -> None:
        self.items = tuple(sorted(each_address_once(self.items), key=Backend.sort_key))
        for backend in self.items:
            self.health.setdefault(backend, Health())

    def ready(self, backend: Backend) -> bool:
        """Healthy, not ejected and enabled; a backend this set does not know is never ready."""
        state = self.health.get(backend)
        return state is not None and state.ready

    def set_healthy(self, backend: Backend, healthy: bool, reason: str = "") -> bool:
        """Record an active health verdict; returns True when it changed the state."""
        state = self.health[backend]
        if state.healthy == healthy:
            return False
        was_ready = state.flags_ready
        state.healthy = healthy
        state.reason = reason if not healthy else state.reason
        self._notify(backend, state, was_ready)
        return True

    def set_ejected(
        self, backend: Backend, ejected: bool, reason: str = "", until: float = math.inf
    ) -> bool:
        """Eject a backend after proxy failures (passive checks) until ``until`` (a
        ``time.monotonic()`` value), or re-admit it (``ejected=False``)."""
        state = self.health[backend]
        if state.ejected == ejected:
            return False
        was_ready = state.flags_ready
        state.ejected_until = until if ejected else 0.0
        state.ejected = ejected
        state.reason = reason if ejected else state.reason
        self._notify(backend, state, was_ready)
        return True

    def _notify(self, backend: Backend, state: Health, was_ready: bool) -> None:
        if state.flags_ready != was_ready:
            if state.flags_ready:
                state.reason = ""
            for listener in self.listeners:
                listener(backend, state)

    def set_enabled(self, backend: Backend, enabled: bool) -> None:
        """Drain (False) or re-admit (True) a backend without touching its health."""
        state = self.health[backend]
        if state.enabled == enabled:
            return
        was_ready = state.flags_ready
        state.enabled = enabled
        if not enabled:
            state.reason = "disabled by an operator"
        self._notify(backend, state, was_ready)

    def share(self, cells: mmap.mmap, start: int) -> int:
        """Put every backend's state in shared ``cells`` from ``start``; returns the next free."""
        for backend in self.items:
            self.health[backend].share(cells, start)
            start += Health.SIZE
        return start

    def replace(
        self,
        backends: Iterable[Backend],
        make_health: Callable[[Backend], Health] | None = None,
    ) -> Change:
        """Swap in a new set; returns what changed (empty when nothing did).

        A backend keeps its ``Health`` when its address stays, whatever its weight; one that
        joins gets ``make_health(backend)``, or a ``Health`` with ``initial_healthy``. The tuple
        ``items`` and the dictionary ``health`` are replaced, never changed in place, so a
        reader holding the old ones sees a consistent set.
        """
        items, health, change = self.plan(backends, make_health)
        if change:
            self.commit(items, health, change)
        return change

    def plan(
        self,
        backends: Iterable[Backend],
        make_health: Callable[[Backend], Health] | None = None,
    ) -> tuple[tuple[Backend, ...], dict[Backend, Health], Change]:
        """What ``replace`` would install, without installing it."""
        new_items = tuple(sorted(each_address_once(backends), key=Backend.sort_key))
        if new_items == self.items:
            return self.items, self.health, Change()
        old = {backend.addr: backend for backend in self.items}
        health: dict[Backend, Health] = {}
        added: list[Backend] = []
        reweighted: list[Backend] = []
        for backend in new_items:
            previous = old.pop(backend.addr, None)
            if previous is None:
                added.append(backend)
                health[backend] = (
                    make_health(backend)
                    if make_health is not None
                    else Health(healthy=self.initial_healthy)
                )
                continue
            health[backend] = self.health[previous]
            if previous.weight != backend.weight:
                reweighted.append(backend)
        return new_items, health, Change(tuple(added), tuple(old.values()), tuple(reweighted))

    def commit(
        self, items: tuple[Backend, ...], health: dict[Backend, Health], change: Change
    ) -> None:
        """Install what ``plan`` returned and tell the set listeners."""
        self.health = health
        self.items = items
        self.version += 1
        for listener in self.set_listeners:
            listener(change)

    def find(self, addr: str) -> Backend | None:
        """The backend with this address (``ip:port``, ``[v6]:port``, ``unix:/path``), or None."""
        for backend in self.items:
            if backend.addr == addr:
                return backend
        return None


_TwoParts = tuple[Callable[[bytes], Backend | None], Callable[[bytes], Iterator[Backend]]]
"""A selector's ``first`` and ``fallback`` (see ``Selector``)."""


def _two_parts(selector: Selector) -> _TwoParts | None:
    """The selector's ``first`` and ``fallback`` when it defines both with its ``iter``: a
    subclass that overrides only ``iter`` of a selector in two parts is walked by its ``iter``."""
    first = getattr(selector, "first", None)
    fallback = getattr(selector, "fallback", None)
    if first is None or fallback is None:
        return None
    cls = type(selector)
    level = _defined_at(cls, "iter")
    if _defined_at(cls, "first") > level or _defined_at(cls, "fallback") > level:
        return None
    return first, fallback


def _defined_at(cls: type, name: str) -> int:
    """How far up ``cls``'s MRO ``name`` is defined (0: in ``cls``), or -1 when no class defines
    it (the instance holds it). The instance's ``__dict__`` is not read: making it costs the
    interpreter's fast attribute loads on that object (a selector's, on every request)."""
    for level, base in enumerate(cls.__mro__):
        if name in base.__dict__:
            return level
    return -1


class LoadBalancer:
    """A service's backends plus the selector built over them (Pingora's ``LoadBalancer``)."""

    def __init__(
        self,
        backends: Backends,
        selector_factory: SelectorFactory,
        selector_options: Mapping[str, Any] | None = None,
        selector_name: str = "",
    ) -> None:
        self.backends = backends
        self.selector_name = selector_name
        self._factory = selector_factory
        self._options = dict(selector_options or {})
        self._use(selector_factory(backends.items, self._options))
        self.on_exhausted: Callable[[], bool] | None = None
        """Called when no backend is ready, before giving up: True when it changed the set
        (a worker of ``threads: N`` taking a set just published: the old one may be all
        removed backends), and the selection is tried once more."""

    def update(
        self,
        backends: Iterable[Backend],
        make_health: Callable[[Backend], Health] | None = None,
    ) -> Change:
        """Replace the backend set; the selector is rebuilt before the new set is used.

        Requests in flight keep the backend they chose; a selector with ``inherit`` carries its
        per-backend state (connection counts, latencies) over to the new one. Returns what
        changed (see ``Backends.replace``). A factory that raises leaves everything as it was.
        """
        items, health, change = self.backends.plan(backends, make_health)
        if not change:
            return change
        selector = self._factory(items, self._options)
        inherit = getattr(selector, "inherit", None)
        if inherit is not None:
            inherit(self.selector)
        self._use(selector)
        self.backends.commit(items, health, change)
        return change

    def reconfigure(self, factory: SelectorFactory, options: Mapping[str, Any], name: str) -> None:
        """A new selection algorithm or new ``selection_options`` (config reload)."""
        selector = factory(self.backends.items, dict(options))
        if name == self.selector_name:
            inherit = getattr(selector, "inherit", None)
            if inherit is not None:
                inherit(self.selector)
        self._factory, self._options, self.selector_name = factory, dict(options), name
        self._use(selector)

    def _use(self, selector: Selector) -> None:
        """Make ``selector`` the one requests walk, with what is learnt from it once."""
        self.selector = selector
        self.tracks = hasattr(selector, "on_start")
        """Whether the selector wants ``on_start``/``on_finish`` for every upstream attempt."""
        self._parts = _two_parts(selector)

    def select(self, key: bytes = b"", max_iterations: int = 256) -> Backend | None:
        """The first ready backend the selector offers for ``key``, within ``max_iterations``."""
        return self.select_with(key, max_iterations, None)

    def select_with(
        self,
        key: bytes,
        max_iterations: int,
        accept: Callable[[Backend, bool], bool] | None,
    ) -> Backend | None:
        """Like ``select`` but ``accept(backend, ready)`` decides (e.g. skip already-tried ones).

        Every candidate pulled from the selector, duplicates included, counts one iteration, as
        Pingora's ``UniqueIterator`` does.
        """
        found = self._select(key, max_iterations, accept)
        if found is None and self.on_exhausted is not None and self.on_exhausted():
            found = self._select(key, max_iterations, accept)
        return found

    def _select(
        self,
        key: bytes,
        max_iterations: int,
        accept: Callable[[Backend, bool], bool] | None,
    ) -> Backend | None:
        health = self.backends.health
        first: Backend | None = None
        seen: set[Backend] | None = None  # made only when the first candidate is not taken
        steps = 0
        parts = self._parts
        if parts is None:
            candidates = self.selector.iter(key)
        else:
            # The common case needs no iterator: making a generator per request and dropping
            # it unfinished (which throws GeneratorExit into it) costs more than the selection.
            pick_first, fallback = parts
            first = pick_first(key)
            if first is not None:
                if max_iterations <= 0:
                    return None  # iter would have been asked for one candidate too
                steps = 1
                state = health.get(first)
                ready = state is not None and state.ready
                if accept(first, ready) if accept is not None else ready:
                    return first
                if accept is None and len(health) <= 1:
                    return None
            candidates = fallback(key)
        for backend in candidates:
            if steps >= max_iterations:
                return None
            steps += 1
            if first is None:
                first = backend
            elif seen is None:
                if backend == first:
                    continue
                seen = {first, backend}
            elif backend in seen:
                continue
            else:
                seen.add(backend)
            state = health.get(backend)
            ready = state is not None and state.ready
            if accept(backend, ready) if accept is not None else ready:
                return backend
            if accept is None and (1 if seen is None else len(seen)) >= len(health):
                # Every backend was offered and none is ready: stop early instead of spinning.
                return None
        return None
