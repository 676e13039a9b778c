"""lbx-daemon: -d returns once the daemon serves, writes the pid file then (and only then, so a
failed start never touches it), and the pid file follows an upgrade in both documented orders."""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lbx.testing import BackendThread, ClientLoad, http_get


@pytest.fixture
def backend():
    thread = BackendThread()
    yield thread.start("a")
    thread.close()


def write_conf(
    tmp_path: Path, listen: str, upstream: str, name: str = "conf.yaml", **extra: str
) -> Path:
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
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "lbx", "serve", *args]


ENV = {**os.environ, "LBX_LOG": "info"}


def serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command(*args), capture_output=True, text=True, timeout=90, env=ENV)


def unix_get(path: Path) -> bytes:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


def wait_exit(pid: int, timeout: float = 30) -> bool:
    """Wait until a process that is not our child exits (pidfd); False on timeout."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)


def stop_daemon(pid: int) -> None:
    """SIGTERM a daemon we started and wait until it is gone (SIGKILL if it does not go)."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    if not wait_exit(pid):
        os.kill(pid, signal.SIGKILL)
        raise AssertionError(f"daemon {pid} did not exit on SIGTERM")


def wait_log(path: Path, pattern: str, start: int = 0, timeout: float = 30) -> re.Match[str]:
    """Wait until the daemon's log, from byte ``start``, has a line matching ``pattern``."""
    regex = re.compile(pattern, re.M)
    deadline = time.monotonic() + timeout
    while True:
        text = path.read_bytes()[start:].decode(errors="replace") if path.exists() else ""
        if match := regex.search(text):
            return match
        assert time.monotonic() < deadline, f"no line matching {pattern!r} in:\n{text}"
        time.sleep(0.02)  # a file that grows gives no event to wait for


def wait_path(path: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.02)  # no event tells another process's bind()


class PidFileReader(threading.Thread):
    """Reads the pid file over and over while an upgrade runs: what did a reader ever see?"""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.seen: set[str] = set()
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.seen.add(self.path.read_text())
            except FileNotFoundError:
                self.seen.add("<missing>")
            self.stop.wait(0.001)

    def __enter__(self) -> PidFileReader:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.join(10)


@contextlib.contextmanager
def started_daemon(conf: Path) -> Iterator[int]:
    """``lbx serve -c conf -d``; yields the daemon's pid and stops it afterwards."""
    result = serve("-c", str(conf), "-d")
    assert result.returncode == 0, result.stderr
    pid = int((conf.parent / "lbx.pid").read_text())
    try:
        yield pid
    finally:
        stop_daemon(pid)


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
        assert (tmp_path / "lbx.pid").stat().st_mode & 0o777 == 0o644
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
    """A daemon that cannot listen makes `-d` exit 1 and say that it exited, and why. (The pipe
    to the daemon closes a moment before the process is gone: the message used to say "did not
    report ready within 120s" about a daemon that had just exited, 4 times in 5.)"""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        conf = write_conf(tmp_path, f"127.0.0.1:{port}", backend.address)
        for _ in range(3):
            result = serve("-c", str(conf), "-d")
            assert result.returncode == 1
            assert result.stderr.startswith(
                "lbx: error: the daemon did not start (it exited during start-up, exit code 1): "
                f"cannot listen on 127.0.0.1:{port}: Address already in use"
            ), result.stderr
            assert len(result.stderr.splitlines()) == 1
    assert not (tmp_path / "lbx.pid").exists()


def test_pid_file_that_cannot_be_written_fails_the_start(tmp_path, backend):
    """The pid file is written once the daemon serves; whether it can be is found out before,
    while failing is still a failed start with one clear line."""
    conf = write_conf(tmp_path, "127.0.0.1:0", backend.address)
    missing = tmp_path / "missing"
    conf.write_text(conf.read_text().replace(f"{tmp_path / 'lbx.pid'}", f"{missing / 'lbx.pid'}"))
    result = serve("-c", str(conf), "-d")
    assert result.returncode == 1
    assert result.stderr == (
        "lbx: error: the daemon did not start (it exited during start-up, exit code 1): "
        f"cannot write pid_file {missing / 'lbx.pid'}: {missing} does not exist\n"
    )


def test_missing_log_and_pid_directories_are_found_by_t_and_by_the_start(tmp_path, backend):
    """``-t -d`` checks the directories of ``error_log`` and ``pid_file``, as a start would
    need them; a start with a missing ``error_log`` directory fails with the same one line
    (it was a traceback's last line from the forked daemon, then a second line)."""
    conf = write_conf(tmp_path, "127.0.0.1:0", backend.address)
    good = conf.read_text()
    (tmp_path / "a_file").write_text("")
    for key, name in (("error_log", "error.log"), ("pid_file", "lbx.pid")):
        for path, problem in (
            (tmp_path / "missing" / name, f"{tmp_path / 'missing'} does not exist"),
            (tmp_path / "a_file" / name, f"{tmp_path / 'a_file'} is not a directory"),
            (tmp_path, "it is a directory"),
        ):
            conf.write_text(good.replace(f"{key}: {tmp_path / name}", f"{key}: {path}"))
            expected = f"lbx: error: cannot write {key} {path}: {problem}\n"
            tested = serve("-c", str(conf), "-d", "-t")
            assert (tested.returncode, tested.stderr) == (1, expected)
            if key == "error_log":
                started = serve("-c", str(conf), "-d")
                assert (started.returncode, started.stderr) == (1, expected)
    conf.write_text(good)
    assert serve("-c", str(conf), "-d", "-t").returncode == 0


def test_failed_start_leaves_the_running_daemon_and_its_pid_file(tmp_path, backend):
    """A second `-d` that cannot bind (address in use) does not touch the running daemon's pid
    file: `kill -QUIT $(cat pid_file)` still reaches the daemon that serves."""
    conf = write_conf(tmp_path, "127.0.0.1:0", backend.address)
    with started_daemon(conf) as pid:
        address = wait_log(tmp_path / "error.log", r"listening on (\S+)$")[1]
        second = write_conf(tmp_path, address, backend.address, name="second.yaml")
        result = serve("-c", str(second), "-d")
        assert result.returncode == 1
        assert "cannot listen on" in result.stderr
        assert (tmp_path / "lbx.pid").read_text() == f"{pid}\n"
        assert not (tmp_path / "lbx.pid.old").exists()
        assert http_get(address).status == 200


@pytest.mark.parametrize("order", ["quit-first", "new-first"])
def test_upgrade_moves_the_pid_file_under_load(tmp_path, backend, order):
    """Both documented orders, under load: `kill -QUIT $(cat pid_file); lbx serve -d -u`, and
    `lbx serve -d -u &` then `kill -QUIT $(cat pid_file)` (the pid file still names the old
    process while the new one waits for the sockets). No request fails; afterwards the pid file
    names the new process, and a reader never saw it missing or naming anything else."""
    conf = write_conf(tmp_path, "127.0.0.1:0", backend.address)
    pid_file = tmp_path / "lbx.pid"
    log = tmp_path / "error.log"
    upgrade = None
    new = None
    with started_daemon(conf) as old:
        address = wait_log(log, r"listening on (\S+)$")[1]
        try:
            with PidFileReader(pid_file) as reader, ClientLoad(address, 8, 60) as load:
                while load.ok < 100 and not load.errors:
                    time.sleep(0.01)
                if order == "quit-first":
                    os.kill(int(pid_file.read_text()), signal.SIGQUIT)
                    result = serve("-c", str(conf), "-d", "-u")
                    code, stderr = result.returncode, result.stderr
                else:
                    upgrade = subprocess.Popen(
                        command("-c", str(conf), "-d", "-u"),
                        stderr=subprocess.PIPE,
                        text=True,
                        env=ENV,
                    )
                    wait_path(tmp_path / "upgrade.sock")  # it waits for the sockets there
                    target = int(pid_file.read_text())
                    assert target == old
                    os.kill(target, signal.SIGQUIT)
                    stderr = upgrade.communicate(timeout=60)[1]
                    code = upgrade.returncode
                assert code == 0, stderr
                new = int(pid_file.read_text())
                assert new != old
                assert wait_exit(old, 60), "the old process did not exit"
                served = load.ok
                while load.ok < served + 100 and not load.errors:  # through the new one
                    time.sleep(0.01)
            print(f"{order}: {load.ok} requests ok, {len(load.errors)} errors")
            assert load.errors == []
            assert reader.seen == {f"{old}\n", f"{new}\n"}
            assert (tmp_path / "lbx.pid.old").read_text() == f"{old}\n"
        finally:
            if upgrade is not None and upgrade.poll() is None:
                upgrade.kill()
                upgrade.communicate(timeout=10)
            if new is not None:
                stop_daemon(new)
    assert not pid_file.exists()  # the new daemon removed its own pid file when it stopped


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
        assert wait_exit(old_pid, 30), "the old process is still running"
        assert unix_get(sock).startswith(b"HTTP/1.1 200")  # the socket file survived the old one
        log = (tmp_path / "error.log").read_text()
        assert "listeners handed over" in log
    finally:
        stop_daemon(new_pid)
