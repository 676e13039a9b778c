"""lbx-prometheus: Prometheus metrics for lbx, served on a listener of their own (``/metrics``).

Requests by service, upstream and status class; latency histograms (whole request and upstream
response head); upstream connect errors; open client connections and idle pooled upstream
connections; backend health, state and weight. With ``threads: N`` the numbers of every worker
add up: each process counts into its own row of memory shared before the workers fork, and the
endpoint (a background service: in the background-services process, once) sums the rows at each
scrape. See docs/metrics.md.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterator
from logging import getLogger
from typing import TYPE_CHECKING, Any, cast

import anyio
import anyio.abc

from lbx import Config, ConfigSchema, Field, Peer, ProxyError, Session, adminhttp, hookimpl
from lbx.sharedrows import SharedRows
from lbx_prometheus.metrics import DEFAULT_BUCKETS, Layout, LbxCollector, Recorder

if TYPE_CHECKING:
    from prometheus_client.registry import Collector

    from lbx.server import Server

log = getLogger("lbx.prometheus")

SECTION = "prometheus"
DEFAULT_LISTEN = "127.0.0.1:9091"
GAUGE_INTERVAL = 1.0
"""Seconds between two samples of a worker's gauges (open connections, pool size)."""
SPARE_ROWS = 16
"""Rows beyond one per worker: the background process, and workers replaced after a crash."""


def _check_buckets(value: Any) -> str | None:
    if not isinstance(value, list) or not value:
        return "expected a non-empty list of numbers (seconds)"
    if not all(isinstance(v, int | float) and not isinstance(v, bool) and v > 0 for v in value):
        return "bucket bounds must be positive numbers (seconds)"
    if sorted(value) != value or len(set(value)) != len(value):
        return "bucket bounds must be increasing"
    return None


CONFIG_KEYS = {
    "listen": Field(
        "str", DEFAULT_LISTEN, "address of the /metrics listener", check=adminhttp.check_address
    ),
    "path": Field("str", "/metrics", "URL path of the metrics"),
    "buckets": Field(
        "any", list(DEFAULT_BUCKETS), "latency histogram bounds, seconds", check=_check_buckets
    ),
}


class State:
    """What the hooks need, built in ``configure`` (before the workers fork)."""

    def __init__(self, section: dict[str, Any], config: Config) -> None:
        self.listen: str = section["listen"]
        self.path: str = section["path"]
        layout = Layout(
            [(s.name, [b.addr for b in s.upstreams]) for s in config.services],
            [float(b) for b in section["buckets"]],
        )
        self.rows = SharedRows(layout.columns, config.threads + SPARE_ROWS, gauges=(0, 1))
        self.recorder = Recorder(layout, self.rows)
        self.threads = config.threads

    def tick(self) -> None:
        """Sample this worker's gauges every ``GAUGE_INTERVAL`` while its loop runs."""
        self.recorder.sample_gauges()
        asyncio.get_running_loop().call_later(GAUGE_INTERVAL, self.tick)


_STATE: State | None = None


@hookimpl
def add_config_keys(schema: ConfigSchema) -> None:
    schema.add_section(SECTION, CONFIG_KEYS)


@hookimpl
def configure(config: Config) -> None:
    global _STATE
    section = config.sections.get(SECTION) or {}
    values = {key: section.get(key, spec.default) for key, spec in CONFIG_KEYS.items()}
    if values["buckets"] is None:
        values["buckets"] = list(DEFAULT_BUCKETS)
    _STATE = None if config.test else State(values, config)


@hookimpl
def register_background_services(server: Server, register: Callable[..., None]) -> None:
    state = _STATE
    if state is None:
        return
    state.recorder.server = server
    register("prometheus", _serve_metrics, ready=True)


@hookimpl
async def worker_started() -> None:
    """Each process that serves requests samples its own gauges (open connections, pool)."""
    if _STATE is not None:
        _STATE.tick()


@hookimpl
def logging(session: Session, error: ProxyError | None) -> None:
    state = _STATE
    if state is None:
        return
    peer = session.peer
    head_time = session.head_time
    start = session.start_time
    state.recorder.request(
        session.service.name,
        peer.addr if peer is not None else None,
        session.response_status,
        time.monotonic() - start,
        head_time - start if head_time is not None else None,
    )


@hookimpl
def fail_to_connect(session: Session, peer: Peer) -> None:
    state = _STATE
    if state is not None:
        state.recorder.connect_error(session.service.name, peer.addr)


# -- the endpoint ---------------------------------------------------------------------------------


class _Delegate:
    """Adds the metrics of another registry (the default one, or multiprocess files)."""

    def __init__(self, source: Any) -> None:
        self.source = source

    def collect(self) -> Iterator[Any]:
        yield from self.source.collect()


def build_registry(state: State) -> Any:
    """lbx's metrics, plus the metrics plugins declared with prometheus-client themselves."""
    from prometheus_client import REGISTRY, CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    collectors: list[Collector] = [LbxCollector(state.recorder)]
    if state.threads == 1:
        collectors.append(_Delegate(REGISTRY))
    elif os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client.multiprocess import MultiProcessCollector

        other = CollectorRegistry(auto_describe=False)
        cast("Callable[[Any], None]", MultiProcessCollector)(other)  # untyped upstream
        collectors.append(_Delegate(other))
    for collector in collectors:
        registry.register(collector)
    return registry


async def _serve_metrics(
    *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
) -> None:
    state = _STATE
    assert state is not None
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    registry = build_registry(state)

    async def handle(method: str, path: str, body: bytes) -> tuple[int, str, bytes]:
        if path != state.path:
            return 404, "text/plain", b"not found; metrics are at " + state.path.encode() + b"\n"
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"GET only\n"
        state.recorder.sample_gauges()
        return 200, CONTENT_TYPE_LATEST, generate_latest(registry)

    server = await adminhttp.start(state.listen, handle, "prometheus.listen")
    log.info(
        "prometheus: metrics on http://%s%s",
        adminhttp.describe(server, state.listen),
        state.path,
    )
    task_status.started()
    await adminhttp.serve_forever(server, state.listen)
