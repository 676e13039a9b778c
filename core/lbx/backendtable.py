"""``BackendTable``: one service's backend set in memory shared by every process of ``threads: N``.

The set changes in one process (discovery and the admin endpoint run in the background-services
process); the workers serve with it. The supervisor creates one table per service before it
forks, so every process maps the same bytes:

- a header: a sequence number (odd while the writer is changing the table, even otherwise, as
  a seqlock) and the number of slots;
- ``capacity`` slots, each: a state (free, member, retired), the weight, when it was retired,
  the address as text (``ip:port``, ``[v6]:port``, ``unix:/path``) and the backend's ``Health``
  bytes (the flags every process reads and writes in place, as before discovery existed).

A backend keeps its slot for as long as it is a member, so its health flags never move. A
removed backend's slot is retired, and its ``healthy`` cleared as soon as the new set is
published (a worker that has not read the new set yet already skips it; one left with no ready
backend re-reads the table and finds the new set, never a table being written); it is reused
only after ``QUARANTINE_SECONDS``, so that no worker still reads a retired slot as the old
backend. Workers read the table when its sequence
number changed (``lbx.discovery`` polls it every ``POLL_SECONDS``); the single writer never
waits for them.
"""

from __future__ import annotations

import mmap
import struct
import time
from collections.abc import Callable

from lbx.errors import plural
from lbx.lb import Backend, Backends, Health

HEADER = struct.Struct("=QI4x")
SLOT = struct.Struct("=BxxxId")  # state, weight, retired at (time.monotonic())
ADDRESS_BYTES = 128
SLOT_SIZE = SLOT.size + ADDRESS_BYTES + Health.SIZE
FREE, MEMBER, RETIRED = 0, 1, 2

QUARANTINE_SECONDS = 10.0
"""A retired slot is not reused before this: every worker has read the new set long before."""


class TableFull(Exception):
    """More backends than the table has slots (``discovery.max_backends``)."""


class BackendTable:
    """The shared backend set of one service (see the module's docstring)."""

    def __init__(self, capacity: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = capacity
        self.memory = mmap.mmap(-1, HEADER.size + capacity * SLOT_SIZE)
        self.clock = clock
        self.seen = -1
        """The sequence number this process last read or wrote."""
        self._slots: dict[str, int] = {}
        """Address -> slot of every member, as this process last read or wrote it."""
        self._parsed: dict[tuple[str, int], Backend] = {}

    # -- layout ------------------------------------------------------------------------------
    def _slot_at(self, slot: int) -> int:
        return HEADER.size + slot * SLOT_SIZE

    def health_at(self, slot: int) -> int:
        """Offset of a slot's ``Health`` bytes."""
        return self._slot_at(slot) + SLOT.size + ADDRESS_BYTES

    @property
    def sequence(self) -> int:
        return int(HEADER.unpack_from(self.memory, 0)[0])

    def _read_slot(self, slot: int) -> tuple[int, int, float, str]:
        at = self._slot_at(slot)
        state, weight, retired = SLOT.unpack_from(self.memory, at)
        raw = self.memory[at + SLOT.size : at + SLOT.size + ADDRESS_BYTES]
        return state, weight, retired, raw.rstrip(b"\0").decode("utf-8", "replace")

    def _write_slot(self, slot: int, state: int, weight: int, retired: float, addr: str) -> None:
        at = self._slot_at(slot)
        SLOT.pack_into(self.memory, at, state, weight, retired)
        encoded = addr.encode("utf-8")
        self.memory[at + SLOT.size : at + SLOT.size + ADDRESS_BYTES] = encoded.ljust(
            ADDRESS_BYTES, b"\0"
        )

    # -- the writer --------------------------------------------------------------------------
    def publish(self, backends: Backends) -> None:
        """Make the table say what ``backends`` holds (the writer: discovery, the admin).

        A backend without a slot gets one and its ``Health`` moves into it; members that left
        are retired, with ``healthy`` cleared once the new set is readable. Raises
        ``TableFull`` (nothing changed) when the new backends do not fit.
        """
        memory = self.memory
        members = dict(self._slots)
        current = {backend.addr: backend for backend in backends.items}
        new = [addr for addr in current if addr not in members]
        free = self._free_slots(len(new))
        sequence = self.sequence + 1  # odd: readers wait
        HEADER.pack_into(memory, 0, sequence, self.capacity)
        now = self.clock()
        leaving: list[int] = []
        for addr, slot in list(members.items()):
            if addr not in current:
                self._write_slot(slot, RETIRED, 0, now, addr)
                leaving.append(slot)
                del members[addr]
        for addr, slot in zip(new, free, strict=True):
            backend = current[addr]
            self._write_slot(slot, MEMBER, backend.weight, 0.0, addr)
            backends.health[backend].share(self.memory, self.health_at(slot))
            members[addr] = slot
        for addr, backend in current.items():
            slot = members[addr]
            if addr not in new:
                health = backends.health[backend]
                health.attach(self.memory, self.health_at(slot))
                if self._read_slot(slot)[1] != backend.weight:
                    self._write_slot(slot, MEMBER, backend.weight, 0.0, addr)
        self._slots = members
        HEADER.pack_into(memory, 0, sequence + 1, self.capacity)
        self.seen = sequence + 1
        # Out now, not while the sequence was odd: a worker whose backends all left would
        # re-read a table being written, find nothing to take, and answer 503.
        for slot in leaving:
            memory[self.health_at(slot)] = 0

    def room(self) -> int:
        """How many backends that have no slot yet can join now."""
        return len(self._usable())

    def _usable(self) -> list[int]:
        free: list[int] = []
        retired: list[tuple[float, int]] = []
        now = self.clock()
        used = set(self._slots.values())
        for slot in range(self.capacity):
            if slot in used:
                continue
            state, _, at, _ = self._read_slot(slot)
            if state == FREE:
                free.append(slot)
            elif state == RETIRED and now - at >= QUARANTINE_SECONDS:
                retired.append((at, slot))
        return free + [slot for _, slot in sorted(retired)]

    def _free_slots(self, count: int) -> list[int]:
        """``count`` slots to use: never used ones first, then retired ones past quarantine,
        the longest retired first."""
        if count == 0:
            return []
        free = self._usable()
        if len(free) < count:
            wanted = plural(len(self._slots) + count, "backend")
            raise TableFull(
                f"no room for {wanted} in {self.capacity} slots (raise discovery.max_backends)"
            )
        return free[:count]

    # -- the readers -------------------------------------------------------------------------
    def changed(self) -> bool:
        """The writer published a set this process has not read (cheap: one 8-byte read)."""
        sequence = self.sequence
        return sequence != self.seen and sequence % 2 == 0

    def read(self) -> list[tuple[int, Backend]] | None:
        """Every member as (slot, backend), or None while the writer is busy (try later)."""
        before = self.sequence
        if before % 2:
            return None
        found: list[tuple[int, Backend]] = []
        for slot in range(self.capacity):
            state, weight, _, addr = self._read_slot(slot)
            if state == MEMBER:
                found.append((slot, self._backend(addr, weight)))
        if self.sequence != before:
            return None
        self.seen = before
        self._slots = {backend.addr: slot for slot, backend in found}
        return found

    def _backend(self, addr: str, weight: int) -> Backend:
        backend = self._parsed.get((addr, weight))
        if backend is None:
            # Addresses in the table are IP literals or Unix paths: nothing is resolved here.
            backend = Backend.parse(addr, weight)[0]
            if len(self._parsed) > 4 * self.capacity:
                self._parsed.clear()
            self._parsed[(addr, weight)] = backend
        return backend

    def make_health(self, slots: dict[str, int]) -> Callable[[Backend], Health]:
        """``make_health`` for ``LoadBalancer.update``: a joining backend's ``Health`` is the
        one in its slot, as the writer initialised it."""

        def attached(backend: Backend) -> Health:
            health = Health()
            health.attach(self.memory, self.health_at(slots[backend.addr]))
            return health

        return attached

    def attach_all(self, backends: Backends) -> None:
        """Point every member's ``Health`` at its slot (a backend removed and added again
        between two reads came back in another slot)."""
        for backend in backends.items:
            slot = self._slots.get(backend.addr)
            if slot is not None:
                backends.health[backend].attach(self.memory, self.health_at(slot))

    def slot_of(self, addr: str) -> int | None:
        """A member's slot, as this process last read or wrote the table."""
        return self._slots.get(addr)

    @property
    def slots(self) -> dict[str, int]:
        return dict(self._slots)
