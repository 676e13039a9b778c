"""Micro-benchmark: the cost of one backend selection per algorithm, for 3, 100 and 1000 backends.

Measures ``LoadBalancer.select(key)`` (what ``default_peer`` calls per request, kernel walk
included) with every backend ready, plus ``on_start`` + ``on_finish`` for the algorithms that
take feedback. Keys are 20-byte strings that change on every call. Run it with
``.venv/bin/python bench/selection_bench.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import importlib
import time
from collections.abc import Callable
from typing import Any

from lbx import Backend, Backends, LoadBalancer, SelectorFactory

ALGORITHMS: dict[str, tuple[str, str]] = {
    "roundrobin": ("lbx_roundrobin", "RoundRobin"),
    "random": ("lbx_random", "Random"),
    "fnv": ("lbx_hashing.fnv", "FnvHash"),
    "consistent": ("lbx_hashing.consistent", "Consistent"),
    "leastconn": ("lbx_adaptive.leastconn", "LeastConnections"),
    "ewma": ("lbx_adaptive.ewma", "PeakEwma"),
}
SIZES = (3, 100, 1000)


def factory(name: str) -> SelectorFactory | None:
    module, attr = ALGORITHMS[name]
    try:
        built: SelectorFactory = getattr(importlib.import_module(module), attr)
    except ImportError:
        return None
    return built


def backends(count: int) -> tuple[Backend, ...]:
    return tuple(
        Backend(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", 8080, 1 + i % 3)
        for i in range(count)
    )


def per_call(function: Callable[[int], Any], calls: int) -> float:
    """Microseconds per call, the best of 5 runs of ``calls`` calls."""
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for index in range(calls):
            function(index)
        best = min(best, time.perf_counter() - started)
    return best / calls * 1e6


def measure(name: str, count: int, calls: int) -> tuple[float, float | None]:
    build = factory(name)
    assert build is not None
    lb = LoadBalancer(Backends(backends(count)), build, {}, name)
    keys = [b"user-%015d" % i for i in range(calls)]
    select = lb.select

    def one(index: int) -> Backend | None:
        return select(keys[index], 256)

    select_us = per_call(one, calls)
    feedback_us = None
    if lb.tracks:
        selector: Any = lb.selector
        target = lb.backends.items[0]

        def start_finish(index: int) -> None:
            selector.on_start(target)
            selector.on_finish(target, 0.001, True)

        feedback_us = per_call(start_finish, calls)
    return select_us, feedback_us


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls (a smoke run)")
    args = parser.parse_args()
    calls = 2_000 if args.quick else 50_000
    print("µs per LoadBalancer.select (feedback: on_start + on_finish)")
    print(f"| algorithm | {' | '.join(f'{n} backends' for n in SIZES)} | feedback (1000) |")
    print(f"|---|{'---:|' * len(SIZES)}---:|")
    for name in ALGORITHMS:
        if factory(name) is None:
            print(f"| {name} | not installed |")
            continue
        cells = []
        feedback = None
        for count in SIZES:
            select_us, feedback_us = measure(name, count, calls)
            cells.append(f"{select_us:.2f}")
            feedback = feedback_us
        tail = "-" if feedback is None else f"{feedback:.2f}"
        print(f"| {name} | {' | '.join(cells)} | {tail} |", flush=True)


if __name__ == "__main__":
    main()
