"""lbx-prometheus end to end: real lbx processes (``threads: 2``) in front of real backends.

The first test is issue #8's "done means": after 1,000 requests through the demo config, /metrics
parses with the Prometheus text parser, the counters add up to 1,000 across the workers and the
access log has 1,000 lines.
"""

from __future__ import annotations

import http.client
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from tests.over_both import HTTP2_ADDRESSES

from lbx.testing import BackendThread, LbxProcess

TIMEOUT = 10.0
REQUESTS = 1000


def config(tmp_path: Path, backends: BackendThread, extra: str = "", threads: int = 2) -> str:
    """The demo config (two backends, round robin) with metrics and an access log."""
    one, two = backends.start("one"), backends.start("two")
    path = tmp_path / "lbx.yaml"
    path.write_text(
        f"version: 1\nthreads: {threads}\n"
        "plugins: [roundrobin, prometheus, accesslog]\n"
        "prometheus: {listen: '127.0.0.1:0'}\n"
        f"accesslog: {{path: '{tmp_path / 'access.log'}', format: json}}\n"
        f"{extra}"
        "services:\n"
        "  - name: demo\n"
        "    listen: ['127.0.0.1:0']\n"
        f"    upstreams: ['{one.address}', '{two.address}']\n"
    )
    return str(path)


def metrics_address(proc: LbxProcess) -> str:
    return proc.wait_for(r"prometheus: metrics on http://(\S+)/metrics").group(1)


def scrape(address: str) -> dict[str, list[Sample]]:
    """GET /metrics and parse it with prometheus-client's text parser: samples by metric name."""
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=TIMEOUT)
    try:
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    finally:
        conn.close()
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def requests_through(address: str, count: int, path: str = "/") -> Iterator[int]:
    """``count`` GETs on keep-alive connections (a new one every 100), yielding each status.
    Over HTTP/2 (one stream each) where an ``over_both`` test's ``[2]`` run started lbx."""
    if address in HTTP2_ADDRESSES:
        for start in range(0, count, 100):
            with httpx.Client(http1=False, http2=True, timeout=TIMEOUT) as client:
                for _ in range(min(100, count - start)):
                    response = client.get(f"http://{address}{path}")
                    assert response.http_version == "HTTP/2"
                    yield response.status_code
        return
    host, port = address.rsplit(":", 1)
    conn = None
    for index in range(count):
        if index % 100 == 0:
            if conn is not None:
                conn.close()
            conn = http.client.HTTPConnection(host, int(port), timeout=TIMEOUT)
        assert conn is not None
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        yield response.status
    if conn is not None:
        conn.close()


def total(samples: list[Sample], **labels: str) -> float:
    return sum(s.value for s in samples if all(s.labels.get(k) == v for k, v in labels.items()))


@pytest.mark.over_both  # streams count as requests
def test_thousand_requests_add_up_across_workers(
    lbx: type[LbxProcess], backends: BackendThread, tmp_path: Path
) -> None:
    """After 1,000 requests with two workers, /metrics parses and every count is 1,000."""
    proc = lbx("-c", config(tmp_path, backends))
    address = metrics_address(proc)
    statuses = list(requests_through(proc.address, REQUESTS))
    assert statuses == [200] * REQUESTS
    metrics = scrape(address)
    requests = metrics["lbx_requests"]
    assert total(requests) == REQUESTS
    assert total(requests, service="demo", status_class="2xx") == REQUESTS
    per_upstream = {s.labels["upstream"]: s.value for s in requests}
    assert sorted(per_upstream.values()) == [REQUESTS / 2, REQUESTS / 2]  # round robin
    duration = metrics["lbx_request_duration_seconds"]
    assert total(duration, service="demo", le="+Inf") == REQUESTS
    assert [s.value for s in duration if s.name.endswith("_count")] == [REQUESTS]
    upstream = metrics["lbx_upstream_response_seconds"]
    assert total([s for s in upstream if s.name.endswith("_count")]) == REQUESTS
    assert {s.labels["backend"]: s.value for s in metrics["lbx_backend_up"]} == {
        b: 1.0 for b in per_upstream
    }
    # Both workers served: the two rows were summed (the log names each worker's pid).
    pids = set(re.findall(r"worker \d+ started \(pid (\d+)\)", proc.output))
    assert len(pids) == 2
    assert proc.stop() == 0
    lines = (tmp_path / "access.log").read_text().splitlines()
    assert len(lines) == REQUESTS
    print(f"\n/metrics: {total(requests):.0f} requests counted across 2 workers")


def test_open_connections_are_sampled_before_any_request(
    lbx: type[LbxProcess], backends: BackendThread, tmp_path: Path
) -> None:
    """Each worker samples its gauges from ``worker_started``: idle clients that never sent a
    request show in ``lbx_downstream_connections`` (sampled every second)."""
    proc = lbx("-c", config(tmp_path, backends))
    address = metrics_address(proc)
    host, port = proc.address.rsplit(":", 1)
    idle = [socket.create_connection((host, int(port)), timeout=TIMEOUT) for _ in range(3)]
    try:
        deadline = time.monotonic() + TIMEOUT
        while True:
            open_now = total(scrape(address)["lbx_downstream_connections"])
            if open_now == 3 or time.monotonic() > deadline:
                break
            time.sleep(0.1)  # the gauge changes only at the next sampling tick: poll it
        assert open_now == 3
    finally:
        for sock in idle:
            sock.close()
    assert proc.stop() == 0
