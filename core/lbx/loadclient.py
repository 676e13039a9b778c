"""``ClientLoad``: bounded HTTP load from threads for tests (``lbx.testing``), counting every
success and failure and, when asked, which backend answered each request and when it was sent.
"""

from __future__ import annotations

import http.client
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field


class ClientLoad:
    """Bounded HTTP load from threads: half keep-alive clients, half a new connection per
    request, counting every success and every failure (``with ClientLoad(address): ...``).

    ``answers`` holds ``(sent, backend)`` for every successful request: ``time.monotonic()``
    when it was sent and the ``X-Backend`` header of the answer (``DemoBackend``'s name), so a
    test can tell which backends served requests sent after a given moment.
    """

    def __init__(
        self, address: str, clients: int = 20, seconds: float = 15, path: str = "/"
    ) -> None:
        self.path = path
        self.host, port = address.rsplit(":", 1)
        self.port = int(port)
        self.deadline = time.monotonic() + seconds
        self.stop = threading.Event()
        self.ok = 0
        self.errors: list[str] = []
        self.answers: list[tuple[float, str]] = []
        self.lock = threading.Condition()
        self.threads = [
            threading.Thread(target=self.run, args=(i % 2 == 0,), daemon=True)
            for i in range(clients)
        ]

    def __enter__(self) -> ClientLoad:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)

    def run(self, keep_alive: bool) -> None:
        conn = None
        while not self.stop.is_set() and time.monotonic() < self.deadline:
            fresh = conn is None
            if conn is None:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
            try:
                sent = time.monotonic()
                conn.request("GET", self.path)
                response = conn.getresponse()
                body = response.read()
                closing = response.getheader("Connection", "").lower() == "close"
                if response.status != 200:
                    raise RuntimeError(f"status {response.status} body {body[:40]!r}")
                with self.lock:
                    self.ok += 1
                    self.answers.append((sent, response.getheader("X-Backend", "")))
                    self.lock.notify_all()
            except Exception as exc:
                with self.lock:
                    self.errors.append(f"{'new' if fresh else 'reused'} connection: {exc!r}")
                closing = True
            if closing or not keep_alive:
                conn.close()
                conn = None
        if conn is not None:
            conn.close()

    def served_by(self, backend: str, sent_after: float = 0.0) -> list[float]:
        """When requests answered by ``backend`` were sent, of those sent after ``sent_after``."""
        with self.lock:
            return [sent for sent, name in self.answers if name == backend and sent > sent_after]

    def wait_served_by(self, backend: str, sent_after: float, timeout: float = 30) -> float:
        """Wait for an answer from ``backend`` to a request sent after ``sent_after``; returns
        when that request was sent (``TimeoutError`` if none came within ``timeout``)."""
        deadline = time.monotonic() + timeout
        with self.lock:
            checked = 0
            while True:
                for sent, name in self.answers[checked:]:
                    if name == backend and sent > sent_after:
                        return sent
                checked = len(self.answers)
                left = deadline - time.monotonic()
                if left <= 0 or not self.lock.wait(left):
                    raise TimeoutError(f"no request sent after {sent_after} reached {backend}")


Step = dict[str, int]
"""One backend set of a churn: backend name -> weight."""


KINDS = ("add", "remove", "weight", "replace")


def churn_steps(names: list[str], count: int = 20, kinds: tuple[str, ...] = KINDS) -> list[Step]:
    """``count`` backend sets, each differing from the one before by one kind of change, in
    turn: a backend added, one removed, a weight changed, every backend replaced (``kinds``:
    fewer, for a source without weights)."""
    assert len(names) >= 4
    current: Step = {names[0]: 1, names[1]: 1}
    steps: list[Step] = [dict(current)]
    while len(steps) <= count:
        kind = KINDS.index(kinds[(len(steps) - 1) % len(kinds)])
        spare = [n for n in names if n not in current]
        if kind == 0:
            current[spare[0]] = 1
        elif kind == 1:
            del current[sorted(current)[0]]
        elif kind == 2:
            name = sorted(current)[-1]
            current[name] = 3 if current[name] == 1 else 1
        else:
            current = {name: 1 for name in spare[:2]}
        steps.append(dict(current))
    return steps


@dataclass
class ChurnReport:
    """What a churn measured: failures, stale requests and latencies (seconds)."""

    changes: int = 0
    seen: list[float] = field(default_factory=list)
    """Per change: from the change in the source until lbx logged that it applied it."""
    first_request: list[float] = field(default_factory=list)
    """Per added backend: from the change until the first request sent to it."""
    stale: list[str] = field(default_factory=list)
    """Requests a removed backend answered though they were sent after lbx applied the removal."""

    def summary(self, load: ClientLoad) -> str:
        def spread(values: list[float]) -> str:
            if not values:
                return "-"
            ordered = sorted(values)
            return (
                f"median {ordered[len(ordered) // 2]:.3f}s, max {ordered[-1]:.3f}s ({len(ordered)})"
            )

        return (
            f"{self.changes} changes, {load.ok} requests ok, {len(load.errors)} failed, "
            f"{len(self.stale)} to removed backends; change applied: {spread(self.seen)}; "
            f"first request to a new backend: {spread(self.first_request)}"
        )


def churn(
    load: ClientLoad,
    steps: list[Step],
    change: Callable[[Step], None],
    applied: Callable[[], None],
    timeout: float = 30,
) -> ChurnReport:
    """Drive ``steps`` (after the first, which the source already holds) under ``load``:
    ``change(step)`` changes the source, ``applied()`` returns once lbx logged that it applied
    the change. Checks nothing itself: the report says what happened."""
    report = ChurnReport()
    out: dict[str, float] = {}  # removed backend -> when lbx had applied the removal
    intervals: list[tuple[str, float, float]] = []  # (backend, out from, out until)
    for before, after in itertools.pairwise(steps):
        started = time.monotonic()
        change(after)
        applied()
        seen = time.monotonic()
        report.changes += 1
        report.seen.append(seen - started)
        out.update({name: seen for name in before if name not in after})
        for name in after:
            if name not in before:
                if name in out:
                    intervals.append((name, out.pop(name), started))
                report.first_request.append(load.wait_served_by(name, started, timeout) - started)
    intervals += [(name, since, float("inf")) for name, since in out.items()]
    for name, since, until in intervals:
        report.stale += [
            f"{name} at +{sent - since:.3f}s"
            for sent in load.served_by(name, since)
            if sent < until
        ]
    return report
