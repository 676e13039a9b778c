"""Backend health state: three flags with one writer each, shared across processes."""

from __future__ import annotations

import mmap
import os
import time

from lbx import Backend, Backends, Health


def test_ready_needs_healthy_enabled_and_not_ejected():
    """A backend is ready only when healthy, enabled and not ejected."""
    backend = Backend("127.0.0.1", 1)
    backends = Backends((backend,))
    assert backends.ready(backend)
    backends.set_healthy(backend, False, "down")
    assert not backends.ready(backend)
    backends.set_healthy(backend, True)
    backends.set_enabled(backend, False)
    assert not backends.ready(backend)
    backends.set_enabled(backend, True)
    backends.set_ejected(backend, True, "3 failures")
    assert not backends.ready(backend)
    backends.set_ejected(backend, False)
    assert backends.ready(backend)


def test_changes_are_announced_only_when_readiness_flips():
    """Listeners hear about a backend going down or coming back, with the reason, once."""
    backend = Backend("127.0.0.1", 1)
    backends = Backends((backend,))
    heard: list[tuple[bool, str]] = []
    backends.listeners.append(lambda b, health: heard.append((health.ready, health.reason)))
    backends.set_healthy(backend, False, "tcp check failed")
    backends.set_ejected(backend, True, "passive")  # already not ready: nothing to announce
    backends.set_healthy(backend, True)  # still ejected
    backends.set_ejected(backend, False)
    backends.set_enabled(backend, False)
    assert heard == [
        (False, "tcp check failed"),
        (True, ""),
        (False, "disabled by an operator"),
    ]


def test_an_ejection_ends_at_its_deadline_even_if_its_owner_died():
    """A process that ejected a backend and died cannot keep it out past the deadline."""
    backend = Backend("127.0.0.1", 1)
    backends = Backends((backend,))
    cells = mmap.mmap(-1, Health.SIZE)
    backends.share(cells, 0)
    until = time.monotonic() + 0.3
    pid = os.fork()
    if pid == 0:  # the ejecting worker: sets the shared flag and dies without re-admitting
        backends.set_ejected(backend, True, "passive", until=until)
        os._exit(0)
    os.waitpid(pid, 0)
    health = backends.health[backend]
    assert health.ejected and not backends.ready(backend)
    while time.monotonic() < until:
        time.sleep(0.01)
    assert backends.ready(backend)  # the flag is still set, the ejection is over
