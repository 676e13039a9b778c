"""The discovery model (lbx.discovery, lbx.backendtable, Backends.replace): settings validated
like any key, health carried over by address, the shared table across processes."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import anyio
import pytest

from lbx import Backend, Backends, DiscoveryError, LoadBalancer, NoRoom, ServiceDiscovery
from lbx.backendtable import QUARANTINE_SECONDS, BackendTable

A, B, C = Backend("127.0.0.1", 1), Backend("127.0.0.1", 2), Backend("127.0.0.1", 3)


def check(tmp_path, text: str) -> subprocess.CompletedProcess[str]:
    conf = tmp_path / "conf.yaml"
    conf.write_text(text)
    return subprocess.run(
        [sys.executable, "-m", "lbx", "serve", "-c", str(conf), "-t"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip


def test_lbx_t_validates_discovery_settings(tmp_path):
    """A typo, an unknown source, a missing option, upstreams and discovery together: one line
    with the file, the line and the key; exit 2."""
    base = "plugins: [roundrobin, file, dns]\nservices:\n  - listen: 127.0.0.1:0\n"
    cases = {
        "    discovery:\n      source: file\n      paht: b.yaml\n": (
            "conf.yaml:6: services[0].discovery.paht: unknown key; did you mean 'path'?"
        ),
        "    discovery: {source: fiel}\n": (
            "conf.yaml:4: services[0].discovery.source: unknown discovery source 'fiel'; "
            "registered: dns, file"
        ),
        "    discovery: {source: dns, name: web.test}\n": (
            "conf.yaml:4: services[0].discovery: record: any needs the backends' port"
        ),
        "    discovery: {source: file, path: b.yaml, update_frequency: 0}\n": (
            "conf.yaml:4: services[0].discovery.update_frequency: must be greater than 0"
        ),
        "    upstreams: [127.0.0.1:1]\n    discovery: {source: file, path: b.yaml}\n": (
            "conf.yaml:5: services[0].discovery: a service takes its backends from upstreams "
            "or from discovery, not both"
        ),
    }
    for service, expected in cases.items():
        result = check(tmp_path, base + service)
        assert result.returncode == 2, result.stdout
        assert result.stderr.strip().splitlines() == [f"lbx: error: {tmp_path}/{expected}"] or (
            expected in result.stderr and len(result.stderr.strip().splitlines()) == 1
        ), result.stderr
    ok = check(tmp_path, base + "    discovery: {source: file, path: b.yaml}\n")
    assert ok.returncode == 0, ok.stderr


def test_health_carries_over_by_address():
    """A weight change keeps the backend's health; a backend that joins starts as
    ``initial_healthy`` says; the change says what happened."""
    backends = Backends((A, B), initial_healthy=False)
    backends.set_healthy(B, False, "down")
    heavier = Backend("127.0.0.1", 2, weight=3)
    change = backends.replace([A, heavier, C])
    assert change.added == (C,) and change.reweighted == (heavier,) and change.removed == ()
    assert not backends.health[heavier].healthy and backends.health[heavier].reason == "down"
    assert not backends.health[C].healthy  # checks configured: unchecked means out
    assert backends.replace([A, heavier, C]).describe() == ""
    assert backends.replace([A]).removed == (heavier, C)


def test_the_table_carries_the_set_and_the_flags_to_another_process():
    """What the writer publishes, a forked reader reads: members, weights, health flags; a
    removed backend's healthy flag is cleared before the reader even looks; a retired slot is
    not reused during the quarantine."""
    now = [100.0]
    table = BackendTable(4, clock=lambda: now[0])
    writer = Backends((A, B))
    table.publish(writer)
    writer.set_enabled(B, False)
    old_health_of_b = writer.health[B]
    writer.replace([B, C])
    table.publish(writer)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # a worker: reads the table
        found = table.read()
        ok = found is not None and [b.addr for _, b in found] == [B.addr, C.addr]
        reader = Backends()
        reader.replace([b for _, b in found or []], table.make_health(table.slots))
        ok = ok and not reader.health[B].enabled and reader.health[C].ready
        os.write(write, b"ok" if ok else b"no")
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    assert os.read(read, 2) == b"ok"
    os.close(read)
    assert old_health_of_b.enabled is False
    retired_slot = 0  # A's
    writer.replace([B, C, Backend("127.0.0.1", 4)])
    table.publish(writer)
    assert retired_slot not in table.slots.values()  # quarantined: a free slot was used
    now[0] += QUARANTINE_SECONDS
    assert table.room() == 1  # the retired slot is free again


def test_a_worker_whose_backends_all_leave_always_finds_a_ready_set():
    """Replace-all: while the writer is between the two halves of its sequence number a worker
    cannot read the table, so the backends it has must still be ready then; once the new set
    is readable, the old ones are out and the worker takes the new set (a file source with
    threads: 2 answered 503 in that window)."""
    seen: list[tuple[bool, bool, bool]] = []  # (writing, readable, A ready) after each slot

    class Watched(BackendTable):
        def _write_slot(self, slot: int, state: int, weight: int, at: float, addr: str) -> None:
            super()._write_slot(slot, state, weight, at, addr)
            if watching:
                seen.append((self.sequence % 2 == 1, worker.changed(), serving.health[A].ready))

    watching = False
    table = Watched(4)
    writer = Backends((A, B))
    table.publish(writer)
    worker = BackendTable(4)
    worker.memory = table.memory  # a worker maps the same bytes (forked, in production)
    found = worker.read()
    assert found is not None
    serving = Backends()
    serving.replace([b for _, b in found], worker.make_health(worker.slots))
    watching = True
    writer.replace([C])
    table.publish(writer)
    assert seen and all(writing and not readable for writing, readable, _ in seen)
    assert all(ready for _, _, ready in seen)  # what the worker has serves meanwhile
    assert not serving.health[A].ready and not serving.health[B].ready
    assert worker.changed()
    found = worker.read()
    assert found is not None and [b.addr for _, b in found] == [C.addr]


def test_a_weight_is_bounded_wherever_it_comes_from(tmp_path):
    """A weight is memory (selectors expand it): every backend is 1 to ``MAX_WEIGHT`` (256,
    HAProxy's limit), checked by the one place that makes backends, and by ``lbx -t``."""
    import pytest

    from lbx import MAX_WEIGHT, check_weight

    assert MAX_WEIGHT == 256 and Backend("127.0.0.1", 1, weight=256).weight == 256
    for bad in (0, 257, 100_000_000, True, 2.5, "3"):
        with pytest.raises(ValueError, match="from 1 to 256"):
            check_weight(bad)
    with pytest.raises(ValueError, match="from 1 to 256"):
        Backend("127.0.0.1", 1, weight=100_000_000)
    result = check(
        tmp_path,
        "plugins: [roundrobin]\nservices:\n  - listen: ['127.0.0.1:0']\n"
        "    upstreams: [{address: '127.0.0.1:1', weight: 1000}]\n",
    )
    assert result.returncode == 2, result.stderr
    assert "weight: expected a whole number from 1 to 256, got 1000" in result.stderr


class Flaky:
    """A source that fails with whatever ``error`` holds, or finds ``backends``."""

    def __init__(self) -> None:
        self.error: Exception | None = None
        self.backends: list[Backend] = [A]

    async def discover(self) -> list[Backend]:
        if self.error is not None:
            raise self.error
        return self.backends


@pytest.mark.parametrize(
    ("error", "shown"),
    [
        (DiscoveryError("/srv/lbx/backends.yaml:3: bad"), "/srv/lbx/backends.yaml:3: bad"),
        (KeyError("address"), "KeyError: 'address'"),
        (OSError("connection refused"), "connection refused"),
    ],
)
def test_a_source_error_is_shown_as_its_message_or_with_its_type(error, shown):
    """A ``DiscoveryError`` says what failed in its own words; any other exception (a source's
    bug, most often) keeps its type, which says more than ``'address'``."""
    source = Flaky()
    source.error = error
    found = ServiceDiscovery("web", LoadBalancer(Backends((A,)), First), source, "flaky", None, 2)
    anyio.run(found.update)
    assert found.last_error == shown


class First:
    def __init__(self, backends, options) -> None:
        self.backends = list(backends)

    def iter(self, key: bytes):
        return iter(self.backends)


def test_a_lasting_problem_is_logged_once_and_its_end_too(caplog):
    """A source failing on every poll (etcd down, a file missing) is one warning until the
    error changes, then one saying it works again; backends left out past ``max_backends``
    are logged when the set left out changes, not on every update."""
    source = Flaky()
    found = ServiceDiscovery("web", LoadBalancer(Backends((A,)), First), source, "flaky", None, 2)

    def updates(count: int) -> None:
        for _ in range(count):
            anyio.run(found.update)

    with caplog.at_level(logging.INFO, logger="lbx.discovery"):
        source.error = OSError("connection refused")
        updates(3)
        source.error = OSError("no route to host")
        updates(2)
        source.error = None
        updates(2)
        source.backends = [A, B, C]
        updates(3)
        source.backends = [A, B, C, Backend("127.0.0.1", 4)]
        updates(2)
    said = [record.getMessage() for record in caplog.records]
    assert [line for line in said if "failed" in line or "again" in line] == [
        "service web: flaky discovery failed, keeping the last 1 backend: connection refused",
        "service web: flaky discovery failed, keeping the last 1 backend: no route to host",
        "service web: flaky discovery works again",
    ]
    assert [line for line in said if "max_backends" in line] == [
        "service web: 1 backend left out (max_backends 2): 127.0.0.1:3",
        "service web: 2 backends left out (max_backends 2): 127.0.0.1:3, 127.0.0.1:4",
    ]
    assert found.last_error == "" and [b.addr for b in found.lb.backends.items] == [
        "127.0.0.1:1",
        "127.0.0.1:2",
    ]


def test_an_operator_add_that_does_not_fit_changes_nothing():
    """With one process: a new backend that would sort before the serving ones is refused
    instead of pushing one out; a re-added member (a new weight) still fits at the limit; every
    member has a slot, also right after a reload's seed."""
    source = Flaky()
    source.backends = [B, C]
    found = ServiceDiscovery("web", LoadBalancer(Backends((B, C)), First), source, "flaky", None, 2)
    anyio.run(found.update)
    try:
        anyio.run(found.add, A)
        raise AssertionError("added past max_backends")
    except NoRoom as exc:
        assert str(exc) == "service 'web' has no room for 127.0.0.1:1: max_backends is 2"
    assert [b.addr for b in found.lb.backends.items] == ["127.0.0.1:2", "127.0.0.1:3"]
    assert found.overrides.added == {}
    anyio.run(found.add, Backend("127.0.0.1", 3, weight=5))
    assert [b.weight for b in found.lb.backends.items] == [1, 5]
    assert sorted(found.slot(b.addr) for b in found.lb.backends.items) == [0, 1]
    reloaded = ServiceDiscovery("web", LoadBalancer(Backends(()), First), source, "flaky", None, 2)
    reloaded.seed([B, C])
    assert sorted(reloaded.slot(b.addr) for b in (B, C)) == [0, 1]
    assert reloaded.slot(A.addr) is None
