"""Runtime changes by an operator (issue 17, HAProxy's runtime API): ``lbx backend
add|remove|weight`` under load reach every worker at once, show in ``lbx status`` and the
metrics, and the admin endpoint is not exposed to the network without a token."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from lbx.testing import BackendThread, ClientLoad, LbxProcess, churn, churn_steps, http_get
from lbx_status.commands import Endpoint

TIMEOUT = 30.0
NAMES = [f"b{i}" for i in range(1, 7)]


def lbx_cli(*args: str, columns: int | None = 200) -> subprocess.CompletedProcess[str]:
    """``lbx ARGS`` with its output piped; ``columns=None``: no ``COLUMNS`` either."""
    env = {name: value for name, value in os.environ.items() if name != "COLUMNS"}
    if columns is not None:
        env["COLUMNS"] = str(columns)
    return subprocess.run(
        [sys.executable, "-m", "lbx", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=env,
    )


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_add_remove_weight_under_load_with_health_checks(
    lbx, backends: BackendThread, tmp_path: Path
) -> None:
    """20 changes through ``lbx backend`` with two workers and active checks: no failed
    request, no request to a removed backend once the command returned, new backends get
    traffic after their first check; ``lbx status`` and /metrics show the current set."""
    addresses = {name: backends.start(name).address for name in NAMES}
    steps = churn_steps(NAMES, 20)
    sock = tmp_path / "status.sock"
    metrics_port = free_port()
    conf = tmp_path / "lbx.yaml"
    conf.write_text(
        "threads: 2\nplugins: [roundrobin, status, healthcheck, prometheus]\n"
        f"status: {{listen: 'unix:{sock}'}}\n"
        f"prometheus: {{listen: '127.0.0.1:{metrics_port}'}}\n"
        "services:\n  - name: web\n    listen: 127.0.0.1:0\n"
        "    health_check: {type: tcp, frequency: 0.5}\n    upstreams:\n"
        + "".join(f"      - {addresses[name]}\n" for name in steps[0])
    )
    proc = lbx("-c", str(conf))
    socket_args = ("--socket", str(sock))
    endpoint = Endpoint(f"unix:{sock}")  # what lbx backend uses, in this process: faster

    def run(action: str, service: str, address: str, weight: str = "1") -> None:
        code, answer = endpoint.request(
            "POST", f"/backends/{service}/{address}/{action}", {"weight": int(weight)}
        )
        assert code == 200, answer

    current = dict(steps[0])

    def change(step: dict[str, int]) -> None:
        for name, weight in step.items():  # additions first: the set is never empty
            if name not in current:
                run("add", "web", addresses[name], str(weight))
        for name in current:
            if name not in step:
                run("remove", "web", addresses[name])
        for name, weight in step.items():
            if name in current and current[name] != weight:
                run("weight", "web", addresses[name], str(weight))
        current.clear()
        current.update(step)

    with ClientLoad(proc.address, clients=8, seconds=180) as load:
        report = churn(load, steps, change, lambda: None)
    print(f"lbx backend, threads: 2, tcp checks every 0.5s: {report.summary(load)}")
    assert load.errors == [] and load.ok > 0
    assert report.stale == []
    document = json.loads(lbx_cli("status", *socket_args, "--json").stdout)
    shown = {b["addr"]: b["weight"] for b in document["services"][0]["backends"]}
    assert shown == {addresses[name]: weight for name, weight in steps[-1].items()}
    assert document["services"][0]["discovery"]["source"] == "static"
    table = lbx_cli("status", *socket_args)
    assert all(addresses[name] in table.stdout for name in steps[-1])
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as page:
        metrics = page.read().decode()
    for name, weight in steps[-1].items():
        assert f'lbx_backend_weight{{backend="{addresses[name]}",service="web"}} {weight}.0' in (
            metrics
        )
    assert proc.output.count("backends changed by an operator") >= 20


def test_unknown_backend_and_bad_weight_are_refused(lbx, backends, tmp_path):
    """Mistakes are one line and exit 1; the set does not change."""
    one = backends.start("one")
    sock = tmp_path / "status.sock"
    conf = tmp_path / "lbx.yaml"
    conf.write_text(f"plugins: [roundrobin, status]\nstatus: {{listen: 'unix:{sock}'}}\n")
    lbx("-c", str(conf), "--listen", "127.0.0.1:0", "--upstream", one.address)
    for args, expected in (
        (("remove", "default", "127.0.0.1:1"), "has no backend '127.0.0.1:1'"),
        (("weight", "default", one.address, "0"), "weight: expected a whole number from 1 to 256"),
        (("weight", "default", one.address, "257"), "from 1 to 256, got 257"),
        (("weight", "default", one.address, "100000000"), "from 1 to 256"),
        (("weight", "default", one.address, "abc"), "from 1 to 256, got 'abc'"),
        (("add", "default", "127.0.0.1:2", "--weight", "100000000"), "1<=x<=256"),
        (("add", "nosuch", "127.0.0.1:1"), "no service 'nosuch'"),
        (("add", "default", "127.0.0.1:99999"), "port must be"),
    ):
        result = lbx_cli("backend", *args, "--socket", str(sock))
        assert result.returncode != 0 and expected in result.stderr, (args, result.stderr)
        if result.returncode == 1:  # the endpoint's refusal: one line, as any lbx failure
            assert result.stderr.startswith("lbx: error: ") and result.stderr.count("\n") == 1
    for command in (("status",), ("backend", "disable", one.address)):
        gone = lbx_cli(*command, "--socket", str(tmp_path / "nothing.sock"))
        assert (gone.returncode, gone.stderr) == (
            1,
            f"lbx: error: cannot reach the lbx admin endpoint at unix:{tmp_path}/nothing.sock: "
            "[Errno 2] No such file or directory\n",
        )
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600


@pytest.mark.parametrize("threads", [1, 2])
def test_a_new_backend_past_max_backends_is_refused(lbx, backends, tmp_path, threads):
    """409 and exit 1, the set unchanged; a backend already in the set may still be re-added
    (a new weight) at the limit. With ``threads: 2`` the room is the shared table's."""
    one, two = backends.start("one"), backends.start("two")
    sock = tmp_path / "status.sock"
    (tmp_path / "backends.yaml").write_text(f"- {one.address}\n")
    conf = tmp_path / "lbx.yaml"
    conf.write_text(
        f"threads: {threads}\nplugins: [roundrobin, file, status]\n"
        f"status: {{listen: 'unix:{sock}'}}\n"
        "services:\n  - name: web\n    listen: 127.0.0.1:0\n"
        f"    discovery: {{source: file, path: {tmp_path / 'backends.yaml'}, max_backends: 2}}\n"
    )
    lbx("-c", str(conf))
    socket_args = ("--socket", str(sock))
    added = lbx_cli("backend", "add", "web", two.address, *socket_args)
    assert added.returncode == 0, added.stderr
    refused = lbx_cli("backend", "add", "web", "127.0.0.1:1", *socket_args)
    assert refused.returncode == 1
    assert "no room for 127.0.0.1:1: max_backends is 2" in refused.stderr, refused.stderr
    code, answer = Endpoint(f"unix:{sock}").request("POST", "/backends/web/127.0.0.1:1/add", {})
    assert code == 409 and "max_backends" in answer["error"]
    reweighted = lbx_cli("backend", "add", "web", two.address, "--weight", "3", *socket_args)
    assert reweighted.returncode == 0, reweighted.stderr
    document = json.loads(lbx_cli("status", *socket_args, "--json").stdout)
    shown = {b["addr"]: b["weight"] for b in document["services"][0]["backends"]}
    assert shown == {one.address: 1, two.address: 3}


@pytest.mark.parametrize("threads", [1, 2])
def test_backends_added_at_run_time_are_counted(lbx, backends, tmp_path, threads):
    """Each backend counts its own requests, all workers summed, whether it was in the config
    or added since; one that takes the slot of a backend that left starts from zero."""
    one, two, three = (backends.start(name) for name in ("one", "two", "three"))
    address_of = {"one": one.address, "two": two.address, "three": three.address}
    sock = tmp_path / "status.sock"
    conf = tmp_path / "lbx.yaml"
    conf.write_text(
        f"threads: {threads}\nplugins: [roundrobin, status]\n"
        f"status: {{listen: 'unix:{sock}'}}\n"
        f"services:\n  - name: web\n    listen: 127.0.0.1:0\n    upstreams: [{one.address}]\n"
    )
    proc = lbx("-c", str(conf))
    endpoint = Endpoint(f"unix:{sock}")
    served: Counter[str] = Counter()

    def change(action: str, address: str) -> None:
        code, answer = endpoint.request("POST", f"/backends/web/{address}/{action}", {})
        assert code == 200, answer

    def send(count: int, until: str) -> None:
        """``count`` requests, and more until ``until`` answered one (with ``threads: 2`` a
        worker takes a new set within ``POLL_SECONDS``)."""
        deadline = time.monotonic() + TIMEOUT
        while count > 0 or (served[until] == 0 and time.monotonic() < deadline):
            count -= 1
            reply = http_get(proc.address, timeout=TIMEOUT)
            assert reply.status == 200
            served[address_of[reply.backend]] += 1

    def counted() -> dict[str, tuple[int, int]]:
        """The counters once every request sent is in (the log phase ends after the answer)."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            _, document = endpoint.request("GET", "/status")
            service = document["services"][0]
            if service["requests"] == sum(served.values()) or time.monotonic() > deadline:
                return {b["addr"]: (b["requests"], b["failures"]) for b in service["backends"]}
            time.sleep(0.02)

    change("add", two.address)
    send(20, until=two.address)
    assert served[two.address] > 0
    assert counted() == {
        one.address: (served[one.address], 0),
        two.address: (served[two.address], 0),
    }
    change("remove", one.address)
    change("add", three.address)  # with threads: 1, into the slot one left
    before = served[two.address]
    send(10, until=three.address)
    assert counted() == {
        two.address: (served[two.address], 0),
        three.address: (served[three.address], 0),
    }
    assert served[two.address] > before and served[three.address] > 0
    narrow = lbx_cli("status", "--socket", str(sock), columns=80)
    assert narrow.returncode == 0, narrow.stderr
    assert two.address in narrow.stdout and three.address in narrow.stdout
    assert all(len(line) <= 80 for line in narrow.stdout.splitlines())


def test_a_failing_discovery_source_shows_in_the_table(lbx, backends, tmp_path):
    """The service's heading names its listen address, selection and source, and while the
    source fails, its reason as the log says it (the file and line, no exception type; rich
    makes no emoji of ``:100:``); the backends it keeps are listed under it."""
    one = backends.start("one")
    sock = tmp_path / "status.sock"
    listed = tmp_path / "backends.yaml"
    listed.write_text(f"- {one.address}\n")
    conf = tmp_path / "lbx.yaml"
    conf.write_text(
        "plugins: [roundrobin, file, status]\n"
        f"status: {{listen: 'unix:{sock}'}}\n"
        "services:\n  - name: web\n    listen: 127.0.0.1:0\n"
        f"    discovery: {{source: file, path: {listed}, update_frequency: 0.1}}\n"
    )
    proc = lbx("-c", str(conf))
    healthy = lbx_cli("status", "--socket", str(sock), columns=100)
    assert healthy.returncode == 0, healthy.stderr
    assert f"web: listen {proc.address}; roundrobin; file discovery; 0 requests, 0 failures" in (
        healthy.stdout
    )
    mark = len(proc.lines)
    replacement = tmp_path / "backends.new"  # replaced at once: a poll never reads half a file
    replacement.write_text(f"- {one.address}\n" + "# \n" * 98 + "- adress: 10.0.0.1:80\n")
    os.replace(replacement, listed)
    said = f"file discovery failed, keeping the last 1 backend: {listed}:100: unknown key 'adress'"
    proc.wait_for(re.escape(said), TIMEOUT, start=mark)
    table = lbx_cli("status", "--socket", str(sock), columns=400)
    assert table.returncode == 0, table.stderr
    heading = next(line for line in table.stdout.splitlines() if line.startswith("web:"))
    assert f"file discovery failed, keeping the last set: {listed}:100: unknown key" in heading
    assert "BadFile" not in table.stdout and one.address in table.stdout
    assert proc.output.count("file discovery failed") == 1


def test_a_backend_that_fails_its_check_before_joining_says_why(lbx, backends, tmp_path):
    """With active checks a new backend is checked before it joins; one that fails joins
    unhealthy with the check's reason, in the log and in ``lbx status``, as a backend that
    fails at start-up does."""
    one = backends.start("one")
    closed = f"127.0.0.1:{free_port()}"  # nothing listens there
    sock = tmp_path / "status.sock"
    conf = tmp_path / "lbx.yaml"
    conf.write_text(
        "plugins: [roundrobin, status, healthcheck]\n"
        f"status: {{listen: 'unix:{sock}'}}\n"
        "services:\n  - name: web\n    listen: 127.0.0.1:0\n"
        f"    health_check: {{type: tcp, frequency: 60}}\n    upstreams: [{one.address}]\n"
    )
    proc = lbx("-c", str(conf))
    added = lbx_cli("backend", "add", "web", closed, "--socket", str(sock))
    assert added.returncode == 0, added.stderr
    reason = "tcp check failed: connection refused (before joining)"
    proc.wait_for(re.escape(f"service web: {closed} joins unhealthy, {reason}"), TIMEOUT)
    document = json.loads(lbx_cli("status", "--socket", str(sock), "--json").stdout)
    shown = {b["addr"]: (b["healthy"], b["reason"]) for b in document["services"][0]["backends"]}
    assert shown == {one.address: (True, ""), closed: (False, reason)}
    # Piped (grep, awk), the table keeps each backend on one line, its reason whole.
    table = lbx_cli("status", "--socket", str(sock), columns=None).stdout
    assert next(line for line in table.splitlines() if closed in line).endswith(reason), table


def test_a_tcp_endpoint_beyond_loopback_needs_a_token(lbx, backends, tmp_path):
    """Refused at start-up without a token (one line, exit 2); with one, every request needs it."""
    one = backends.start("one")
    port = free_port()
    conf = tmp_path / "lbx.yaml"
    conf.write_text(f"plugins: [roundrobin, status]\nstatus:\n  listen: 0.0.0.0:{port}\n")
    refused = LbxProcess("-c", str(conf), "--listen", "127.0.0.1:0", "--upstream", one.address)
    refused.start_async()
    assert refused.wait() == 2
    assert len(refused.lines) == 1 and "lbx.yaml:3: status.listen: 0.0.0.0:" in refused.output
    refused.close()
    conf.write_text(
        f"plugins: [roundrobin, status]\nstatus:\n  listen: 0.0.0.0:{port}\n  token: s3cret\n"
    )
    lbx("-c", str(conf), "--listen", "127.0.0.1:0", "--upstream", one.address)
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=10)
        raise AssertionError("answered without the token")
    except urllib.error.HTTPError as exc:
        assert exc.code == 401
    wrong = lbx_cli("status", "--socket", f"127.0.0.1:{port}", "--token", "nope")
    assert wrong.returncode == 1 and "Bearer" in wrong.stderr
    right = lbx_cli("status", "--json", "-c", str(conf), "--socket", f"127.0.0.1:{port}")
    assert right.returncode == 0, right.stderr
    added = lbx_cli("backend", "add", "default", "127.0.0.1:1", "-c", str(conf),
                    "--socket", f"127.0.0.1:{port}")  # fmt: skip
    assert added.returncode == 0 and "+127.0.0.1:1" in added.stdout


def test_the_table_keeps_every_address_whole_in_a_narrow_terminal():
    """At 80 columns the other columns give way (folded, or cut with an ellipsis): every
    service name and backend address is shown whole, and no line is wider than the terminal."""
    from rich.console import Console

    from lbx_status.commands import render

    # [fd00::1] would read as rich markup, :100: as an emoji: the table shows them as they are.
    backends = [f"[fd00::{n}]:8080" for n in range(3)] + ["unix:/run/app/backend.sock"]
    document = {
        "pid": 1,
        "threads": 2,
        "open_connections": 0,
        "services": [
            {
                "name": "checkout-api",
                "listen": ["127.0.0.1:6188"],
                "selection": "roundrobin",
                "requests": 123456,
                "failures": 7,
                "backends": [
                    {
                        "addr": addr, "weight": 1, "enabled": True, "healthy": False,
                        "ejected": False, "requests": 41152, "failures": 2,
                        "reason": "http check failed: /health:100: 503 (after 3 attempts)",
                    }
                    for addr in backends
                ],
            }
        ],
    }  # fmt: skip
    console = Console(width=80, record=True, color_system=None)
    console.print(render(document, "unix:/tmp/lbx-status.sock"))
    text = console.export_text()
    assert all(len(line) <= 80 for line in text.splitlines())
    assert all(addr in text for addr in backends) and "checkout-api" in text
    wide = Console(width=200, record=True, color_system=None)
    wide.print(render(document, "unix:/tmp/lbx-status.sock"))
    assert wide.export_text().count("http check failed: /health:100: 503 (after 3") == 4
