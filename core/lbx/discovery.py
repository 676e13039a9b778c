"""Service discovery (Pingora's ``ServiceDiscovery``): where a service's backends come from, and
keeping its load balancer in step with that source and with an operator's runtime changes.

A *source* is registered by a plugin (``register_discovery``) and named in a service's
``discovery:`` mapping; static ``upstreams:`` is the simplest source. ``ServiceDiscovery`` runs
``update`` at start (before lbx listens), then every ``update_frequency`` seconds, sooner when
the source says so (a DNS TTL: ``Discovered.refresh``) or when its ``watch`` reports a change.
Each update goes through ``LoadBalancer.update``: health carries over by address, new backends
start as the health-check policy says, the selector is rebuilt, requests in flight finish where
they are. With ``threads: N`` the updates run once, in the background-services process, and
reach the workers through a ``BackendTable`` in shared memory (``lbx.backendtable``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import anyio.abc

from lbx.backendtable import BackendTable
from lbx.config import DEFAULT_MAX_BACKENDS, Config, Document, check_value, validate_mapping
from lbx.config_keys import Field
from lbx.errors import ConfigError, describe, plural
from lbx.lb import Backend, Change, Health, LoadBalancer

if TYPE_CHECKING:
    from lbx.config import ServiceConfig
    from lbx.server import Server

log = logging.getLogger("lbx.discovery")

POLL_SECONDS = 0.1
"""How often a worker of ``threads: N`` looks for a new set in the shared table (a read of 8
bytes; a removed backend is out at once anyway: its ``healthy`` flag is cleared first)."""


@dataclass(frozen=True)
class Discovered:
    """What a source found: the backends, and optionally which are enabled and when to ask
    again."""

    backends: Sequence[Backend]
    enabled: Mapping[str, bool] = field(default_factory=dict)
    """Address -> enabled, as the source says (absent: enabled). Applied when the source's
    value changes, so an operator's ``lbx backend disable`` stands until the source changes
    its mind (Pingora's ``discover`` returns the same map)."""
    refresh: float | None = None
    """Seconds until the next update (a DNS record's TTL); None: ``update_frequency``."""


class Discovery(Protocol):
    """A source of backends for one service (Pingora's ``ServiceDiscovery`` trait).

    ``discover()`` returns the whole current set (a ``Discovered``, or just the backends); an
    exception keeps the last set and is logged once while it lasts (``lbx.DiscoveryError``:
    its message as it is; anything else: with its type). A source may also define
    ``async watch(changed)``, a task that calls ``changed()`` whenever it learns the set changed
    (an etcd watch): an update follows at once. It may define ``async close()``.
    """

    async def discover(self) -> Discovered | Iterable[Backend]: ...


DiscoveryFactory = Callable[[dict[str, Any], "ServiceConfig", Config], Discovery]
"""``factory(options, service, config)``: the source for one service (``config.path`` is the
file relative paths are resolved from); raise ``ValueError`` for bad options (a config error
on the service's ``discovery``)."""


@dataclass(frozen=True)
class Source:
    """A registered discovery source."""

    name: str
    factory: DiscoveryFactory
    keys: Mapping[str, Field]
    update_frequency: float | None


COMMON_KEYS = {
    "source": Field("str", None, "the discovery source (a plugin: dns, file, etcd, ...)"),
    "update_frequency": Field(
        "number",
        None,
        "seconds between two updates (default: the source's)",
        check=lambda v: None if v > 0 else "must be greater than 0",
    ),
    "max_backends": Field(
        "int",
        DEFAULT_MAX_BACKENDS,
        "most backends the service may have at once (shared memory is sized for it)",
        minimum=1,
    ),
}


class StaticDiscovery:
    """``upstreams:``: the backends of the configuration (Pingora's ``discovery::Static``)."""

    def __init__(self, backends: Iterable[Backend]) -> None:
        self.backends = tuple(backends)

    async def discover(self) -> Sequence[Backend]:
        return self.backends


@dataclass
class Overrides:
    """An operator's runtime changes (``lbx backend add|remove|weight``), kept on top of what
    the source says until the next reload or restart (as HAProxy's runtime API)."""

    added: dict[str, Backend] = field(default_factory=dict)
    removed: set[str] = field(default_factory=set)
    weights: dict[str, int] = field(default_factory=dict)

    def apply(self, backends: Iterable[Backend]) -> list[Backend]:
        result = {b.addr: b for b in backends if b.addr not in self.removed}
        result.update(self.added)
        for addr, weight in self.weights.items():
            backend = result.get(addr)
            if backend is not None and backend.weight != weight:
                result[addr] = Backend(backend.host, backend.port, weight, backend.unix_path)
        return list(result.values())

    def copy(self) -> Overrides:
        return Overrides(dict(self.added), set(self.removed), dict(self.weights))


class NoRoom(Exception):
    """An operator's new backend does not fit in the service's ``max_backends``."""


class ServiceDiscovery:
    """Keeps one service's load balancer in step with its source and its overrides."""

    def __init__(
        self,
        service: str,
        lb: LoadBalancer,
        source: Discovery,
        source_name: str,
        update_frequency: float | None = None,
        max_backends: int = DEFAULT_MAX_BACKENDS,
    ) -> None:
        self.service = service
        self.lb = lb
        self.source = source
        self.source_name = source_name
        self.update_frequency = update_frequency
        self.max_backends = max_backends
        self.overrides = Overrides()
        self.table: BackendTable | None = None
        """With ``threads: N``: the shared set this process writes (background) or reads."""
        self.updates = 0
        self.last_update = 0.0
        self.last_error = ""
        self.next_refresh: float | None = None
        """What the last successful update's source asked (``Discovered.refresh``)."""
        self._found: list[Backend] = list(lb.backends.items)
        self._left_out: set[str] = set()
        self._slots: dict[str, int] = {}
        """Address -> slot of every member, with one process (``threads: N``: the table's)."""
        self._give_slots()
        self._enabled: dict[str, bool] = {}
        self._wake: anyio.Event | None = None
        self._lock: anyio.Lock | None = None
        self.precheck: Callable[[Sequence[Backend]], Awaitable[Mapping[str, str]]] | None = None
        """Set by active health checks: checks backends about to join and returns their
        verdicts by address (``""``: healthy, else why not). The update waits for it and
        applies additions and removals together, so a new backend never takes traffic before it
        passed a check, and the backends it replaces serve until then."""

    @property
    def dynamic(self) -> bool:
        """A source that changes by itself (anything but static ``upstreams:``)."""
        return not isinstance(self.source, StaticDiscovery)

    # -- one update ----------------------------------------------------------------------------
    async def update(self) -> Change:
        """Ask the source and apply what it says; an error keeps the last set."""
        try:
            found = await self.source.discover()
        except Exception as exc:
            error = describe(exc)
            if error != self.last_error:  # said once, not on every poll while it lasts
                count = len(self.lb.backends.items)
                log.warning(
                    "service %s: %s discovery failed, %s: %s",
                    self.service,
                    self.source_name,
                    f"keeping the last {plural(count, 'backend')}" if count else "no backends yet",
                    error,
                )
            self.last_error = error
            return Change()
        if self.last_error:
            log.info("service %s: %s discovery works again", self.service, self.source_name)
        self.last_error = ""
        self.updates += 1
        self.last_update = time.monotonic()
        if not isinstance(found, Discovered):
            found = Discovered(tuple(found))
        self._found = list(found.backends)
        self.next_refresh = found.refresh
        change = await self.apply()
        self._apply_enabled(found.enabled)
        return change

    async def apply(self, why: str = "") -> Change:
        """Install the source's last set with the operator's overrides on top (one change at a
        time: an update and an operator's command do not interleave)."""
        async with self._serialised():
            return await self._apply(why)

    def _serialised(self) -> anyio.Lock:
        if self._lock is None:
            self._lock = anyio.Lock()
        return self._lock

    def _fit(self, overrides: Overrides) -> tuple[list[Backend], set[str]]:
        """The set ``overrides`` on top of the source's would give, within ``max_backends``
        (with ``threads: N``, within the table's free slots), and the addresses left out."""
        wanted = overrides.apply(self._found)
        wanted.sort(key=Backend.sort_key)
        if self.table is not None:
            known = self.table.slots
            new = [b for b in wanted if b.addr not in known]
            dropped = {b.addr for b in new[self.table.room() :]}
            return [b for b in wanted if b.addr not in dropped], dropped
        return wanted[: self.max_backends], {b.addr for b in wanted[self.max_backends :]}

    async def _apply(self, why: str) -> Change:
        wanted, dropped = self._fit(self.overrides)
        if dropped and dropped != self._left_out:  # the same ones left out again: said already
            log.error(
                "service %s: %s left out (max_backends %d%s): %s",
                self.service,
                plural(len(dropped), "backend"),
                self.max_backends,
                ", or removed ones still in quarantine" if self.table is not None else "",
                ", ".join(sorted(dropped)),
            )
        self._left_out = dropped
        make_health = None
        if self.precheck is not None:
            members = {backend.addr for backend in self.lb.backends.items}
            joining = [backend for backend in wanted if backend.addr not in members]
            if joining:
                verdicts = await self.precheck(joining)

                def make_health(backend: Backend) -> Health:
                    reason = verdicts.get(backend.addr, "no health check verdict")
                    if reason:  # said as a backend that fails its check is (server.py)
                        log.warning(
                            "service %s: %s joins unhealthy, %s", self.service, backend.addr, reason
                        )
                    return Health(healthy=not reason, reason=reason)

        change = self.lb.update(wanted, make_health)
        if self.table is not None and change:
            self.table.publish(self.lb.backends)
        elif self.table is None:
            self._give_slots()
        if change:
            log.info(
                "service %s: backends changed%s: %s (%s)",
                self.service,
                why or f" ({self.source_name})",
                change.describe(),
                plural(len(self.lb.backends.items), "backend"),
            )
        return change

    def slot(self, addr: str) -> int | None:
        """A member backend's index in per-backend arrays of ``max_backends`` entries (and at
        least one per static upstream), None for an address not in the set. It stays while the
        backend is a member and is the same in every process of ``threads: N``; a later
        backend may get it again (with ``threads: N`` after ``QUARANTINE_SECONDS``), so keep
        with what a slot holds which backend it belongs to."""
        if self.table is not None:
            return self.table.slot_of(addr)
        return self._slots.get(addr)

    def _give_slots(self) -> None:
        members = {backend.addr for backend in self.lb.backends.items}
        slots = {addr: slot for addr, slot in self._slots.items() if addr in members}
        used = set(slots.values())
        free = (slot for slot in range(len(members) + len(used)) if slot not in used)
        for addr in sorted(members - slots.keys()):
            slots[addr] = next(free)
        self._slots = slots

    def _apply_enabled(self, enabled: Mapping[str, bool]) -> None:
        backends = self.lb.backends
        previous, self._enabled = self._enabled, dict(enabled)
        for backend in backends.items:
            value = enabled.get(backend.addr, True)
            if previous.get(backend.addr, True) != value or (
                backend.addr not in previous and not value
            ):
                backends.set_enabled(backend, value)
                if value:
                    backends.health[backend].reason = ""

    # -- an operator's changes -----------------------------------------------------------------
    async def add(self, backend: Backend, *more: Backend) -> Change:
        """Add backends (or change their weight) until the next reload or restart.

        Raises ``NoRoom`` and changes nothing when the new ones do not all fit: an update would
        leave some out (or, without a shared table, push out ones that serve)."""
        adding = (backend, *more)
        async with self._serialised():
            new = {b.addr for b in adding if self.lb.backends.find(b.addr) is None}
            trial = self.overrides.copy()
            for one in adding:
                trial.removed.discard(one.addr)
                trial.added[one.addr] = one
                trial.weights.pop(one.addr, None)
            # Refused before anything changes: when one of them would be left out, or would push
            # out a backend that serves (the source's own newcomers may take the room first).
            kept, _ = self._fit(trial)
            keeping = {b.addr for b in kept}
            serving = {b.addr for b in self._fit(self.overrides)[0]} & {
                b.addr for b in self.lb.backends.items
            }
            if not new <= keeping or not serving <= keeping:
                raise NoRoom(
                    f"service {self.service!r} has no room for {', '.join(sorted(new))}: "
                    f"max_backends is {self.max_backends}"
                    + (", and removed backends keep their slot for a while" if self.table else "")
                )
            before, self.overrides = self.overrides, trial
            try:
                return await self._apply(" by an operator")
            except BaseException:
                self.overrides = before
                raise

    async def remove(self, addr: str) -> Change:
        """Remove a backend, whatever the source says, until the next reload or restart."""
        if self.lb.backends.find(addr) is None:
            raise LookupError(f"service {self.service!r} has no backend {addr!r}")
        self.overrides.added.pop(addr, None)
        self.overrides.weights.pop(addr, None)
        self.overrides.removed.add(addr)
        return await self.apply(" by an operator")

    async def set_weight(self, addr: str, weight: int) -> Change:
        """Give a backend another weight until the next reload or restart."""
        if self.lb.backends.find(addr) is None:
            raise LookupError(f"service {self.service!r} has no backend {addr!r}")
        self.overrides.weights[addr] = weight
        return await self.apply(" by an operator")

    # -- running -------------------------------------------------------------------------------
    def changed(self) -> None:
        """The source's ``watch`` saw a change: update now."""
        if self._wake is not None:
            self._wake.set()

    async def run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """First update (before lbx listens), then update whenever it is due or watched."""
        self._wake = anyio.Event()
        delay = await self._update_with_delay()
        async with anyio.create_task_group() as tasks:
            watch: Callable[[Callable[[], None]], Awaitable[None]] | None = getattr(
                self.source, "watch", None
            )
            if watch is not None:
                tasks.start_soon(self._watch, watch)
            task_status.started()
            while True:
                with anyio.move_on_after(delay if delay is not None else float("inf")):
                    await self._wake.wait()
                self._wake = anyio.Event()
                delay = await self._update_with_delay()

    async def _update_with_delay(self) -> float | None:
        """One update; returns the seconds until the next one (None: only when watched)."""
        before = self.updates
        try:
            await self.update()
        except Exception:  # a bug past the source (a selector refusing the set): keep going
            log.exception("service %s: discovery update failed", self.service)
        if self.updates != before and self.next_refresh is not None:
            return self.next_refresh
        return self.update_frequency

    async def _watch(self, watch: Callable[[Callable[[], None]], Awaitable[None]]) -> None:
        while True:
            try:
                await watch(self.changed)
            except Exception as exc:
                log.warning(
                    "service %s: %s watch failed (%s); watching again in 1s",
                    self.service,
                    self.source_name,
                    describe(exc),
                )
            await anyio.sleep(1.0)

    async def close(self) -> None:
        close: Callable[[], Awaitable[None]] | None = getattr(self.source, "close", None)
        if close is not None:
            await close()

    @property
    def found(self) -> list[Backend]:
        """What the source said last (without an operator's changes)."""
        return list(self._found)

    def seed(self, backends: Sequence[Backend]) -> None:
        """Start from ``backends`` (a reload: the set the previous configuration's source found)."""
        self._found = list(backends)
        self.lb.update(self._found)
        if self.table is None:
            self._give_slots()

    # -- a worker of threads: N ----------------------------------------------------------------
    def refreshed(self) -> bool:
        """``refresh``, telling whether the set changed (``LoadBalancer.on_exhausted``)."""
        try:
            return bool(self.refresh())
        except Exception:
            log.exception("service %s: taking the new backend set failed", self.service)
            return False

    def refresh(self) -> Change:
        """Take the set the background process published, if it changed (workers; the
        background process itself when it starts, to take over the current set)."""
        table = self.table
        if table is None or not table.changed():
            return Change()
        found = table.read()
        if found is None:
            return Change()
        slots = table.slots
        change = self.lb.update([backend for _, backend in found], table.make_health(slots))
        table.attach_all(self.lb.backends)
        self._found = list(self.lb.backends.items)
        return change


async def run_all(
    discoveries: Sequence[ServiceDiscovery],
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """The background service of every dynamic source: their first updates before lbx
    listens, then each its own loop."""
    try:
        async with anyio.create_task_group() as tasks:
            for discovery in discoveries:
                await tasks.start(_run_one, discovery)
            task_status.started()
    finally:
        with anyio.CancelScope(shield=True):
            for discovery in discoveries:
                try:
                    await discovery.close()
                except Exception:
                    log.exception("service %s: closing discovery failed", discovery.service)


async def _run_one(
    discovery: ServiceDiscovery,
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    await discovery.run(task_status=task_status)


async def follow(discoveries: Sequence[ServiceDiscovery]) -> None:
    """A worker of ``threads: N``: take every new set from the shared tables."""
    while True:
        for discovery in discoveries:
            try:
                discovery.refresh()
            except Exception:  # a selector refusing the set: keep the last one, try again
                log.exception("service %s: taking the new backend set failed", discovery.service)
        await anyio.sleep(POLL_SECONDS)


# -- configuration ---------------------------------------------------------------------------


def parse(
    config: Config,
    index: int,
    service: ServiceConfig,
    sources: Mapping[str, Source],
) -> tuple[Source, dict[str, Any], float | None, int]:
    """Validate a service's ``discovery:`` mapping against the source's keys: the source, its
    options, the update frequency and ``max_backends``. Errors name the file, line and key."""
    doc = Document(config.path, {}, config.lines)
    path = ("services", index, "discovery")
    data = service.discovery
    if not isinstance(data, dict):
        raise doc.error(path, f"expected a mapping with a source, got {data!r}")
    name = check_value(doc, (*path, "source"), COMMON_KEYS["source"], data.get("source"))
    if name is None:
        raise doc.error(path, f"missing source; registered: {', '.join(sorted(sources)) or 'none'}")
    source = sources.get(name)
    if source is None:
        raise doc.error(
            (*path, "source"),
            f"unknown discovery source {name!r}; registered: "
            f"{', '.join(sorted(sources)) or 'none'} (enable the plugin: --plugin {name})",
        )
    values = validate_mapping(doc, path, data, {**COMMON_KEYS, **source.keys})
    options = {key: values[key] for key in source.keys}
    frequency = values["update_frequency"]
    return (
        source,
        options,
        frequency if frequency is not None else source.update_frequency,
        int(values["max_backends"]),
    )


def build(
    config: Config,
    index: int,
    service: ServiceConfig,
    lb: LoadBalancer,
    sources: Mapping[str, Source],
) -> ServiceDiscovery:
    """The ``ServiceDiscovery`` of one service: its ``discovery:`` source, or its upstreams."""
    if service.discovery is None:
        return ServiceDiscovery(service.name, lb, StaticDiscovery(service.upstreams), "static")
    source, options, frequency, max_backends = parse(config, index, service, sources)
    try:
        instance = source.factory(options, service, config)
    except ValueError as exc:
        raise config.error(("services", index, "discovery"), str(exc)) from None
    return ServiceDiscovery(service.name, lb, instance, source.name, frequency, max_backends)


def registrar(sources: dict[str, Source]) -> Callable[..., None]:
    """The ``register`` function ``register_discovery`` impls call."""

    def register(
        name: str,
        factory: DiscoveryFactory,
        keys: Mapping[str, Field] | None = None,
        update_frequency: float | None = None,
    ) -> None:
        if name in sources or name == "static":
            raise ConfigError(f"two plugins register the discovery source {name!r}")
        clash = set(keys or {}) & set(COMMON_KEYS)
        if clash:
            raise ConfigError(f"discovery source {name!r} redefines {', '.join(sorted(clash))}")
        sources[name] = Source(name, factory, dict(keys or {}), update_frequency)

    return register


def share(server: Server) -> None:
    """``threads: N``: put every service's backend set in memory shared by the processes about
    to be forked (``lbx.backendtable``)."""
    for found in server.discovery.values():
        backends = found.lb.backends
        table = BackendTable(max(found.max_backends, len(backends.items)))
        table.publish(backends)
        found.table = table


def take_shared(server: Server) -> None:
    """A forked process starts from the set in shared memory, which may have changed since the
    supervisor forked the first generation; a worker also takes a new set at once when it finds
    no ready backend (``LoadBalancer.on_exhausted``)."""
    for found in server.discovery.values():
        if found.table is not None:
            found.table.seen = -1
            found.refresh()
            found.lb.on_exhausted = found.refreshed
