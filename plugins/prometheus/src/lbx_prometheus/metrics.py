"""Where each metric lives in the shared rows, how requests add to it, and how it is exposed.

Every process counts into its own row of a ``SharedRows`` (see ``shared.py``): a request costs a
few stores into shared memory, no lock and no file. A scrape sums the rows and hands the totals to
prometheus-client as metric families, so the numbers of ``threads: N`` workers add up exactly and
at once.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from lbx.admin import SharedRows

if TYPE_CHECKING:
    from lbx import Server

STATUS_CLASSES = ("none", "1xx", "2xx", "3xx", "4xx", "5xx")
"""``status_class`` label values; index = status // 100 (``none``: no response was sent)."""

OTHER = "other"
"""The ``upstream`` label of peers outside the configured upstreams (chosen by a plugin)."""

DEFAULT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

_go_float = cast("Callable[[float], str]", floatToGoString)  # untyped in prometheus-client

GAUGE_OPEN, GAUGE_POOL = 0, 1  # the first two columns: per-process gauges


@dataclass
class ServiceColumns:
    """Column offsets of one service's metrics."""

    upstreams: list[str]
    requests: dict[str, int] = field(default_factory=dict)
    """upstream ('' for none) -> first of six columns, one per status class."""
    connect_errors: dict[str, int] = field(default_factory=dict)
    upstream_time: dict[str, int] = field(default_factory=dict)
    """upstream -> histogram: one column per bucket (+Inf last), then the sum."""
    total_time: int = 0


class Layout:
    """The columns of every metric, fixed before the workers fork."""

    def __init__(self, services: Sequence[tuple[str, Sequence[str]]], buckets: Sequence[float]):
        self.bounds = list(buckets)
        width = len(self.bounds) + 2  # buckets, +Inf, sum
        column = 2  # after the gauges
        self.services: dict[str, ServiceColumns] = {}
        for name, addresses in services:
            upstreams = [*dict.fromkeys(addresses), OTHER]
            columns = ServiceColumns(upstreams)
            for upstream in ["", *upstreams]:
                columns.requests[upstream] = column
                column += len(STATUS_CLASSES)
            for upstream in upstreams:
                columns.connect_errors[upstream] = column
                column += 1
                columns.upstream_time[upstream] = column
                column += width
            columns.total_time = column
            column += width
            self.services[name] = columns
        self.columns = column


class Recorder:
    """Counts requests of this process into its row."""

    def __init__(self, layout: Layout, rows: SharedRows) -> None:
        self.layout = layout
        self.rows = rows
        self.server: Server | None = None

    def request(
        self,
        service: str,
        upstream: str | None,
        status: int | None,
        total: float,
        upstream_time: float | None,
    ) -> None:
        columns = self.layout.services.get(service)
        if columns is None:
            return
        base = self.rows.row()
        cells = self.rows.cells
        if upstream is None:
            upstream = ""
        start = columns.requests.get(upstream)
        if start is None:
            upstream = OTHER
            start = columns.requests[OTHER]
        status_class = status // 100 if status is not None and 100 <= status < 600 else 0
        cells[base + start + status_class] += 1
        bounds = self.layout.bounds
        start = base + columns.total_time
        cells[start + bisect.bisect_left(bounds, total)] += 1
        cells[start + len(bounds) + 1] += total
        if upstream_time is not None and upstream:
            start = base + columns.upstream_time[upstream]
            cells[start + bisect.bisect_left(bounds, upstream_time)] += 1
            cells[start + len(bounds) + 1] += upstream_time

    def connect_error(self, service: str, upstream: str) -> None:
        columns = self.layout.services.get(service)
        if columns is None:
            return
        column = columns.connect_errors.get(upstream, columns.connect_errors[OTHER])
        self.rows.cells[self.rows.row() + column] += 1

    def sample_gauges(self) -> None:
        """Record this process's open client connections and idle upstream connections."""
        server = self.server
        if server is None:
            return
        base = self.rows.row()
        cells = self.rows.cells
        cells[base + GAUGE_OPEN] = server.open_connections
        cells[base + GAUGE_POOL] = server.idle_upstream_connections


class LbxCollector:
    """A prometheus-client collector: the totals of every process, plus backend health."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    def collect(self) -> Iterator[Metric]:
        recorder = self.recorder
        layout = recorder.layout
        totals = recorder.rows.totals()
        bounds = layout.bounds
        les = [_go_float(b) for b in bounds] + ["+Inf"]

        requests = CounterMetricFamily(
            "lbx_requests",
            "Requests finished, by service, upstream and status class of the response.",
            labels=["service", "upstream", "status_class"],
        )
        errors = CounterMetricFamily(
            "lbx_upstream_connect_errors",
            "Failed attempts to connect to an upstream.",
            labels=["service", "upstream"],
        )
        total_time = HistogramMetricFamily(
            "lbx_request_duration_seconds",
            "Time from the request head to the end of the response, per service.",
            labels=["service"],
        )
        upstream_time = HistogramMetricFamily(
            "lbx_upstream_response_seconds",
            "Time from the request head until the upstream's response head arrived.",
            labels=["service", "upstream"],
        )
        for name, columns in layout.services.items():
            for upstream, start in columns.requests.items():
                for index, status_class in enumerate(STATUS_CLASSES):
                    value = totals[start + index]
                    if value:
                        requests.add_metric([name, upstream, status_class], value)
            for upstream, column in columns.connect_errors.items():
                if upstream != OTHER or totals[column]:
                    errors.add_metric([name, upstream], totals[column])
            total_time.add_metric([name], *_histogram(totals, columns.total_time, les))
            for upstream, start in columns.upstream_time.items():
                if upstream != OTHER or totals[start + len(bounds)]:
                    upstream_time.add_metric([name, upstream], *_histogram(totals, start, les))
        yield requests
        yield errors
        yield total_time
        yield upstream_time
        yield GaugeMetricFamily(
            "lbx_downstream_connections",
            "Client connections open now, all workers together.",
            value=totals[GAUGE_OPEN],
        )
        yield GaugeMetricFamily(
            "lbx_upstream_pool_idle_connections",
            "Idle upstream connections kept for reuse, all workers together.",
            value=totals[GAUGE_POOL],
        )
        yield from _health(recorder.server)


def _histogram(
    totals: list[float], start: int, les: list[str]
) -> tuple[list[tuple[str, float]], float]:
    cumulative = 0.0
    buckets = []
    for index, le in enumerate(les):
        cumulative += totals[start + index]
        buckets.append((le, cumulative))
    return buckets, totals[start + len(les)]


def _health(server: Server | None) -> Iterator[Metric]:
    up = GaugeMetricFamily(
        "lbx_backend_up",
        "1 when the backend takes traffic: healthy, not ejected and enabled.",
        labels=["service", "backend"],
    )
    states = GaugeMetricFamily(
        "lbx_backend_state",
        "Each health flag of a backend: healthy (active checks), ejected (passive), enabled.",
        labels=["service", "backend", "state"],
    )
    weight = GaugeMetricFamily(
        "lbx_backend_weight", "Configured weight of the backend.", labels=["service", "backend"]
    )
    if server is not None:
        for service in server.services:
            lb: Any = service.load_balancer
            if lb is None:
                continue
            for backend, health in lb.backends.health.items():
                labels = [service.name, backend.addr]
                up.add_metric(labels, 1.0 if health.ready else 0.0)
                weight.add_metric(labels, float(backend.weight))
                for state in ("healthy", "ejected", "enabled"):
                    states.add_metric([*labels, state], 1.0 if getattr(health, state) else 0.0)
    yield up
    yield states
    yield weight
