"""lbx-prometheus: Prometheus metrics for lbx, served on a listener of their own (``/metrics``).

Requests by service, upstream and status class; latency histograms (whole request and upstream
response head); upstream connect errors; open client connections and idle pooled upstream
connections; backend health, state and weight. With ``threads: N`` the numbers of every worker
add up: each process counts into its own row of memory shared before the workers fork, and the
endpoint (a background service: in the background-services process, once) sums the rows at each
scrape. See docs/metrics.md.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, cast

from lbx import (
    Config,
    ConfigSchema,
    Field,
    Peer,
    PluginManager,
    ProxyError,
    Server,
    Session,
    hookimpl,
)
from lbx.admin import Endpoint, Sampler, SharedRows, check_address, sample_every
from lbx_prometheus.metrics import DEFAULT_BUCKETS, Layout, LbxCollector, Recorder

if TYPE_CHECKING:
    from prometheus_client.registry import Collector

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
    "listen": Field("str", DEFAULT_LISTEN, "address of the /metrics listener", check=check_address),
    "path": Field("str", "/metrics", "URL path of the metrics"),
    "buckets": Field(
        "any", list(DEFAULT_BUCKETS), "latency histogram bounds, seconds", check=_check_buckets
    ),
}


@hookimpl
def add_config_keys(schema: ConfigSchema) -> None:
    schema.add_section(SECTION, CONFIG_KEYS)


@hookimpl
def configure(config: Config, plugin_manager: PluginManager) -> None:
    """Build this run's ``Metrics`` (before the workers fork) and register its hooks."""
    if config.test:
        return
    section = config.sections.get(SECTION) or {}
    values = {key: section.get(key, spec.default) for key, spec in CONFIG_KEYS.items()}
    if values["buckets"] is None:
        values["buckets"] = list(DEFAULT_BUCKETS)
    plugin_manager.register(Metrics(values, config), name="prometheus.metrics")


class Metrics:
    """The metrics of one run: counters in memory every worker shares, the endpoint, and the
    hooks that count."""

    def __init__(self, section: dict[str, Any], config: Config) -> None:
        self.listen: str = section["listen"]
        self.path: str = section["path"]
        layout = Layout(
            [(s.name, [b.addr for b in s.upstreams]) for s in config.services],
            [float(b) for b in section["buckets"]],
        )
        self.rows = SharedRows(layout.columns, config.threads + SPARE_ROWS, gauges=(0, 1))
        self.sampler: Sampler | None = None
        self.recorder = Recorder(layout, self.rows)
        self.threads = config.threads
        self._registry: Any = None

    @hookimpl
    def register_background_services(self, server: Server, register: Callable[..., None]) -> None:
        self.recorder.server = server
        endpoint = Endpoint(
            SECTION,
            self.listen,
            self.handle,
            "metrics on http://{address}" + self.path,
            takeover=server.config.upgrade,
        )
        register("prometheus", endpoint.serve, ready=True)

    @hookimpl
    async def worker_started(self, server: Server) -> None:
        """Each process that serves requests samples its own gauges (open connections, pool)."""
        self.recorder.server = server
        self.sampler = sample_every(GAUGE_INTERVAL, self.recorder.sample_gauges)

    @hookimpl
    async def server_stopping(self, server: Server) -> None:
        """Stop sampling (at shutdown, and when a reload replaces this configuration)."""
        if self.sampler is not None:
            self.sampler.cancel()

    @hookimpl
    def logging(self, session: Session, error: ProxyError | None) -> None:
        peer = session.peer
        head_time = session.head_time
        start = session.start_time
        self.recorder.request(
            session.service.name,
            peer.addr if peer is not None else None,
            session.response_status,
            time.monotonic() - start,
            head_time - start if head_time is not None else None,
        )

    @hookimpl
    def fail_to_connect(self, session: Session, peer: Peer) -> None:
        self.recorder.connect_error(session.service.name, peer.addr)

    async def handle(self, method: str, path: str, body: bytes) -> tuple[int, str, bytes]:
        """The endpoint: ``GET <path>`` is the metrics in Prometheus' text format."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        if path != self.path:
            return 404, "text/plain", b"not found; metrics are at " + self.path.encode() + b"\n"
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"GET only\n"
        if self._registry is None:  # built where the endpoint runs (the background process)
            self._registry = build_registry(self)
        self.recorder.sample_gauges()
        return 200, CONTENT_TYPE_LATEST, generate_latest(self._registry)


# -- the registry ---------------------------------------------------------------------------------


class _Delegate:
    """Adds the metrics of another registry (the default one, or multiprocess files)."""

    def __init__(self, source: Any) -> None:
        self.source = source

    def collect(self) -> Iterator[Any]:
        yield from self.source.collect()


def build_registry(metrics: Metrics) -> Any:
    """lbx's metrics, plus the metrics plugins declared with prometheus-client themselves."""
    from prometheus_client import REGISTRY, CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    collectors: list[Collector] = [LbxCollector(metrics.recorder)]
    if metrics.threads == 1:
        collectors.append(_Delegate(REGISTRY))
    elif os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client.multiprocess import MultiProcessCollector

        other = CollectorRegistry(auto_describe=False)
        cast("Callable[[Any], None]", MultiProcessCollector)(other)  # untyped upstream
        collectors.append(_Delegate(other))
    for collector in collectors:
        registry.register(collector)
    return registry
