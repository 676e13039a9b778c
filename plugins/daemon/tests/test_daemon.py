"""lbx-daemon: -d returns once the daemon listens, writes the pid file, reports failures."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lbx.testing import BackendThread


@pytest.fixture
def backend():
    thread = BackendThread()
    yield thread.start("a")
    thread.close()


def write_conf(tmp_path: Path, listen: str, upstream: str, **extra: str) -> Path:
    lines = [
        "version: 1",
        f"pid_file: {tmp_path / 'lbx.pid'}",
        f"error_log: {tmp_path / 'error.log'}",
        f"upgrade_sock: {tmp_path / 'upgrade.sock'}",
        *(f"{key}: {value}" for key, value in extra.items()),
        "plugins: [roundrobin]",
        "services:",
        f"  - listen: ['{listen}']",
        f"    upstreams: ['{upstream}']",
    ]
    path = tmp_path / "conf.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lbx", "serve", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "LBX_LOG": "info"},
    )


def unix_get(path: Path) -> bytes:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


def stop_daemon(pid: int) -> None:
    """SIGTERM the daemon we started and wait until it is gone (it is not our child)."""
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    raise AssertionError(f"daemon {pid} did not exit on SIGTERM")


def test_daemon_returns_once_listening(tmp_path, backend):
    """`lbx serve -c conf -d` exits 0 with the daemon already serving, its pid in pid_file."""
    sock = tmp_path / "lbx.sock"
    conf = write_conf(tmp_path, f"unix:{sock}", backend.address)
    result = serve("-c", str(conf), "-d")
    assert result.returncode == 0, result.stderr
    pid = int((tmp_path / "lbx.pid").read_text())
    try:
        assert pid != os.getpid()
        assert unix_get(sock).startswith(b"HTTP/1.1 200")  # listening already, no wait needed
        assert "lbx ready" in (tmp_path / "error.log").read_text()
    finally:
        stop_daemon(pid)
    assert not (tmp_path / "lbx.pid").exists()


def test_existing_pid_file_is_renamed_old(tmp_path, backend):
    """An existing pid file is kept as <pid_file>.old, as Pingora does."""
    (tmp_path / "lbx.pid").write_text("12345\n")
    conf = write_conf(tmp_path, f"unix:{tmp_path / 'lbx.sock'}", backend.address)
    result = serve("-c", str(conf), "-d")
    assert result.returncode == 0, result.stderr
    pid = int((tmp_path / "lbx.pid").read_text())
    stop_daemon(pid)
    assert (tmp_path / "lbx.pid.old").read_text() == "12345\n"


def test_daemon_start_failure_is_reported(tmp_path, backend):
    """A daemon that cannot listen makes `-d` exit 1 and print why."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        conf = write_conf(tmp_path, f"127.0.0.1:{port}", backend.address)
        result = serve("-c", str(conf), "-d")
    assert result.returncode == 1
    assert "the daemon did not start" in result.stderr
    assert "cannot listen on" in result.stderr
    assert "Traceback" not in result.stderr


def test_daemon_without_error_log_still_reports_failures(tmp_path, backend):
    """With no error_log the start-up output is captured anyway and shown on failure."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        conf = tmp_path / "conf.yaml"
        conf.write_text(
            f"pid_file: {tmp_path / 'lbx.pid'}\nplugins: [roundrobin]\nservices:\n"
            f"  - listen: ['127.0.0.1:{port}']\n    upstreams: ['{backend.address}']\n"
        )
        result = serve("-c", str(conf), "-d")
    assert result.returncode == 1
    assert "cannot listen on" in result.stderr


def test_quick_start_upgrade_sequence(tmp_path, backend):
    """`kill -QUIT $(cat pid_file) && lbx serve -c conf -d -u`: new pid in the file, old gone."""
    sock = tmp_path / "lbx.sock"
    conf = write_conf(tmp_path, f"unix:{sock}", backend.address)
    assert serve("-c", str(conf), "-d").returncode == 0
    old_pid = int((tmp_path / "lbx.pid").read_text())
    os.kill(old_pid, signal.SIGQUIT)
    result = serve("-c", str(conf), "-d", "-u")
    assert result.returncode == 0, result.stderr
    new_pid = int((tmp_path / "lbx.pid").read_text())
    try:
        assert new_pid != old_pid
        assert unix_get(sock).startswith(b"HTTP/1.1 200")
        deadline = time.monotonic() + 30  # the old one accepts 5 s more, then drains and exits
        while time.monotonic() < deadline:
            try:
                os.kill(old_pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            raise AssertionError("the old process is still running")
        assert unix_get(sock).startswith(b"HTTP/1.1 200")  # the socket file survived the old one
        log = (tmp_path / "error.log").read_text()
        assert "listeners handed over" in log
    finally:
        stop_daemon(new_pid)
