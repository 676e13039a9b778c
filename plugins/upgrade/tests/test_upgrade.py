"""lbx-upgrade: SIGQUIT plus `lbx serve -u` hands the listeners over without refusing anyone."""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from lbx.testing import ClientLoad, LbxProcess, http_get
from lbx_status.commands import Endpoint


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_conf(tmp_path: Path, upstream: str, listen: str = "127.0.0.1:0") -> Path:
    path = tmp_path / "conf.yaml"
    path.write_text(
        f"upgrade_sock: {tmp_path / 'upgrade.sock'}\n"
        "plugins: [roundrobin]\n"
        "services:\n"
        f"  - listen: ['{listen}']\n"
        f"    upstreams: ['{upstream}']\n"
    )
    return path


def slow_request(address: str, results: list[int]) -> None:
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("GET", "/sleep/2")
        response = conn.getresponse()
        response.read()
        results.append(response.status)
    except Exception:
        results.append(-1)
    finally:
        conn.close()


def test_upgrade_under_load_drops_nothing(tmp_path, backends):
    """20 clients and slow requests in flight see no error while SIGQUIT + -u swap processes."""
    backend = backends.start("a")
    conf = write_conf(tmp_path, backend.address)
    old = LbxProcess("-c", str(conf)).start()
    new = None
    try:
        address = old.address
        with ClientLoad(address, clients=20, seconds=15) as load:
            while load.ok < 200:  # the load is flowing through the old process
                time.sleep(0.01)
            slow: list[int] = []
            slow_threads = [
                threading.Thread(target=slow_request, args=(address, slow)) for _ in range(3)
            ]
            for thread in slow_threads:
                thread.start()
            deadline = time.monotonic() + 10
            while backend.sleeping < 3:  # the slow requests reached the backend via the old lbx
                assert time.monotonic() < deadline
                time.sleep(0.01)
            new = LbxProcess("-c", str(conf), "-u").start_async()
            old.send_signal(signal.SIGQUIT)
            new.wait_for("lbx ready", timeout=30)
            assert new.address == address  # the same socket, handed over
            for thread in slow_threads:
                thread.join(30)
            assert old.wait(timeout=30) == 0
            served_by_new = load.ok
            while load.ok < served_by_new + 200:  # and now through the new one
                time.sleep(0.01)
        print(f"upgrade: {load.ok} requests ok, {len(load.errors)} errors, slow: {slow}")
        assert load.errors == []
        assert slow == [200, 200, 200]
    finally:
        old.close()
        if new is not None:
            assert new.stop() == 0
            new.close()


@pytest.mark.parametrize("threads", [1, 2])
def test_admin_endpoints_move_to_the_new_process(tmp_path, backends, threads):
    """The metrics port and the status socket, which the old process holds while the new one
    starts, do not fail the upgrade: the new process takes them once the old one handed its
    listeners over, and answers there (its pid in /status, its own metrics)."""
    backend = backends.start("a")
    metrics = f"127.0.0.1:{free_port()}"
    status = tmp_path / "status.sock"
    conf = tmp_path / "conf.yaml"
    conf.write_text(
        f"threads: {threads}\nupgrade_sock: {tmp_path / 'upgrade.sock'}\n"
        "plugins: [roundrobin, prometheus, status]\n"
        f"prometheus: {{listen: '{metrics}'}}\nstatus: {{listen: 'unix:{status}'}}\n"
        f"services:\n  - listen: ['127.0.0.1:0']\n    upstreams: ['{backend.address}']\n"
    )
    old = LbxProcess("-c", str(conf)).start()
    new = None

    def scrape() -> str:
        return http_get(metrics, "/metrics").body.decode()

    try:
        assert Endpoint(f"unix:{status}").status()["pid"] == old.pid
        new = LbxProcess("-c", str(conf), "-u").start_async()
        new.wait_for("-u: waiting up to")
        old.send_signal(signal.SIGQUIT)
        new.wait_for("lbx ready", timeout=30)
        new.wait_for(r"prometheus: metrics on http://", timeout=30)
        new.wait_for(r"status: admin endpoint on", timeout=30)
        assert old.wait(timeout=30) == 0
        assert Endpoint(f"unix:{status}").status()["pid"] == new.pid
        assert http_get(new.address).status == 200
        deadline = time.monotonic() + 30  # a worker counts a request once it answered it
        while not re.search(r'lbx_requests_total\{[^}]*"2xx"[^}]*\} 1\.0\n', scraped := scrape()):
            assert time.monotonic() < deadline, scraped  # only the new process's one request
            time.sleep(0.05)
        assert status.exists()  # the old process did not remove the new one's socket file
    finally:
        old.close()
        if new is not None:
            assert new.stop() == 0
            new.close()
    assert not status.exists()


def test_kill_and_restart_does_drop_requests(tmp_path, backends):
    """The same load through a plain stop-and-start sees errors: the test can fail."""
    backend = backends.start("a")
    conf = write_conf(tmp_path, backend.address)
    old = LbxProcess("-c", str(conf)).start()
    address = old.address
    conf2 = write_conf(tmp_path, backend.address, listen=address)
    new = None
    try:
        with ClientLoad(address, clients=20, seconds=15) as load:
            while load.ok < 200:
                time.sleep(0.01)
            assert old.stop(signal.SIGINT) == 0
            new = LbxProcess("-c", str(conf2)).start()
            restarted = load.ok
            while load.ok < restarted + 200:
                time.sleep(0.01)
        print(f"kill and restart: {load.ok} ok, {len(load.errors)} errors")
        assert load.errors, "a plain restart should have refused or reset some requests"
    finally:
        old.close()
        if new is not None:
            new.close()


def test_upgrade_without_old_process_fails_clearly(tmp_path, backends):
    """`-u` with nobody sending listeners exits 1 with a clear message (after the wait)."""
    backend = backends.start("a")
    conf = write_conf(tmp_path, backend.address)
    with conf.open("a") as extra:
        extra.write("upgrade:\n  receive_timeout_seconds: 1\n")
    proc = LbxProcess("-c", str(conf), "-u")
    proc.start_async()
    try:
        assert proc.wait(timeout=60) == 1
    finally:
        proc.close()
    assert "no running lbx sent its listeners" in proc.output
    assert os.path.exists(tmp_path / "upgrade.sock") is False


def test_failed_new_process_leaves_the_old_one_serving(tmp_path, backends):
    """A new process that takes the listeners but dies before serving: the old one goes on."""
    import socket

    backend = backends.start("a")
    conf = write_conf(tmp_path, backend.address)
    old = LbxProcess("-c", str(conf)).start()
    new = None
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = f"127.0.0.1:{taken.getsockname()[1]}"
        broken = tmp_path / "broken.yaml"
        broken.write_text(  # the same listener plus one that cannot be bound
            f"upgrade_sock: {tmp_path / 'upgrade.sock'}\nplugins: [roundrobin]\nservices:\n"
            f"  - listen: ['127.0.0.1:0', '{busy}']\n    upstreams: ['{backend.address}']\n"
        )
        try:
            new = LbxProcess("-c", str(broken), "-u").start_async()
            old.send_signal(signal.SIGQUIT)
            assert new.wait(timeout=60) == 1
            assert "cannot listen on" in new.output
            old.wait_for("upgrade failed: the new process did not take over; still serving")
            with ClientLoad(old.address, clients=4, seconds=5) as load:
                while load.ok < 100:
                    time.sleep(0.01)
            assert load.errors == []
            assert old.stop() == 0
        finally:
            old.close()
            if new is not None:
                new.close()


def test_sigint_during_the_overlap_stops_a_supervisor_at_once(tmp_path, backends):
    """threads: 2: after handing over, the old supervisor keeps its workers accepting for a few
    seconds; a SIGINT in that time stops it at once (not when the overlap ends)."""
    from lbx.workers import UPGRADE_OVERLAP_SECONDS

    backend = backends.start("a")
    conf = write_conf(tmp_path, backend.address)
    conf.write_text("threads: 2\n" + conf.read_text())
    old = LbxProcess("-c", str(conf)).start()
    new = None
    try:
        new = LbxProcess("-c", str(conf), "-u").start_async()
        old.send_signal(signal.SIGQUIT)
        new.wait_for("lbx ready", timeout=30)
        old.wait_for("listeners handed over")
        started = time.monotonic()
        old.send_signal(signal.SIGINT)
        assert old.wait(timeout=30) == 0
        stopped_after = time.monotonic() - started
        print(f"\nold supervisor stopped {stopped_after:.2f}s after SIGINT")
        assert stopped_after < UPGRADE_OVERLAP_SECONDS / 2
        assert "SIGINT received, stopping workers at once" in old.output
    finally:
        old.close()
        if new is not None:
            assert new.stop() == 0
            new.close()


@pytest.mark.parametrize("threads", [1, 2])
def test_sigint_while_waiting_for_the_new_process_stops_at_once(tmp_path, backends, threads):
    """After SIGQUIT, the old process waits up to ``receive_timeout_seconds`` for the new one to
    say it serves; a SIGINT in that wait stops it at once, not when the wait ends (a supervisor
    too, although it blocks its signals while it runs no event loop)."""
    backend = backends.start("a")
    served = tmp_path / "lbx.sock"
    conf = tmp_path / "conf.yaml"
    conf.write_text(
        f"threads: {threads}\nupgrade_sock: {tmp_path / 'upgrade.sock'}\n"
        "upgrade: {receive_timeout_seconds: 60}\nplugins: [roundrobin]\nservices:\n"
        f"  - listen: ['127.0.0.1:0', 'unix:{served}']\n    upstreams: ['{backend.address}']\n"
    )
    old = LbxProcess("-c", str(conf)).start()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as new:  # takes them, never serves
        new.bind(str(tmp_path / "upgrade.sock"))
        new.listen(1)
        new.settimeout(30)
        try:
            old.send_signal(signal.SIGQUIT)
            conn, _ = new.accept()
            with conn:
                _, fds, _, _ = socket.recv_fds(conn, 4096, 64)
                for fd in fds:
                    os.close(fd)
                old.send_signal(signal.SIGINT)
                assert old.wait(timeout=10) == 0, old.output
            if threads == 1:
                assert "SIGINT received, exiting" in old.output
            else:
                assert "SIGINT received while upgrading, stopping workers at once" in old.output
            # The new process may serve the Unix socket already: its file stays.
            assert served.exists()
        finally:
            old.close()


def test_a_handover_without_listeners_fails_clearly(tmp_path):
    """Something connects to ``upgrade_sock`` and closes without sending: ``-u`` exits 1 with
    one line saying so, at once."""
    conf = tmp_path / "conf.yaml"
    conf.write_text(
        f"upgrade_sock: {tmp_path / 'upgrade.sock'}\nupgrade: {{receive_timeout_seconds: 60}}\n"
        "plugins: [roundrobin]\nservices: [{listen: '127.0.0.1:0', upstreams: '127.0.0.1:9'}]\n"
    )
    new = LbxProcess("-c", str(conf), "-u").start_async()
    try:
        new.wait_for("-u: waiting up to 60s")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as old:
            old.connect(str(tmp_path / "upgrade.sock"))
        assert new.wait(timeout=30) == 1
    finally:
        new.close()
    assert "closed the connection without sending listeners" in new.output
    assert "Traceback" not in new.output
