"""lbx-status end to end: a real lbx, the admin endpoint, and ``lbx status`` in a real terminal.

The terminal test is issue #8's "done means": ``lbx status --watch`` in a pty shows a backend
turning unhealthy within a health-check period after it stops.
"""

from __future__ import annotations

import fcntl
import http.client
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

from lbx.testing import BackendThread, LbxProcess

TIMEOUT = 10.0
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def start(
    lbx: type[LbxProcess], backends: BackendThread, tmp_path: Path, *args: str, threads: int = 1
) -> tuple[LbxProcess, str, list[str]]:
    """lbx with the demo config (two backends, round robin) and the status plugin."""
    addresses = [backends.start("one").address, backends.start("two").address]
    sock = str(tmp_path / "status.sock")
    proc = lbx(
        "--plugin", "roundrobin", "--plugin", "status", "--listen", "127.0.0.1:0",
        *(arg for address in addresses for arg in ("--upstream", address)),
        "-c", str(write(tmp_path, f"threads: {threads}\nstatus: {{listen: 'unix:{sock}'}}\n")),
        *args,
    )  # fmt: skip
    return proc, sock, addresses


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "lbx.yaml"
    path.write_text(text)
    return path


def lbx_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lbx", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env={**os.environ, "COLUMNS": "200"},
    )


def backend_of(address: str) -> str | None:
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=TIMEOUT)
    try:
        conn.request("GET", "/")
        response = conn.getresponse()
        response.read()
        return response.headers.get("X-Backend")
    finally:
        conn.close()


def test_status_json_and_drain(
    lbx: type[LbxProcess], backends: BackendThread, tmp_path: Path
) -> None:
    """``lbx backend disable`` drains a backend in every worker and ``enable`` brings it back."""
    proc, sock, (one, two) = start(lbx, backends, tmp_path, threads=2)
    for _ in range(4):
        backend_of(proc.address)
    result = lbx_cli("status", "--socket", sock, "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    service = document["services"][0]
    assert service["requests"] == 4
    assert service["listen"] == [proc.address]  # the bound port, not the configured 0
    # Round robin runs in each worker, so the split depends on which worker took each request.
    assert {b["addr"]: b["ready"] for b in service["backends"]} == {one: True, two: True}
    assert sum(b["requests"] for b in service["backends"]) == 4
    mark = len(proc.lines)
    result = lbx_cli("backend", "disable", one, "--socket", sock)
    assert result.returncode == 0, result.stderr
    assert {backend_of(proc.address) for _ in range(6)} == {"two"}
    proc.wait_for(rf"INFO .*: {one} disabled by an operator: no new requests", start=mark)
    assert not [line for line in proc.lines[mark:] if "unhealthy" in line]  # a drain, no fault
    state = json.loads(lbx_cli("status", "--socket", sock, "--json").stdout)
    assert {b["addr"]: b["enabled"] for b in state["services"][0]["backends"]} == {
        one: False,
        two: True,
    }
    assert lbx_cli("backend", "enable", one, "--socket", sock).returncode == 0
    assert {backend_of(proc.address) for _ in range(4)} == {"one", "two"}
    unknown = lbx_cli("backend", "disable", "127.0.0.1:1", "--socket", sock)
    assert unknown.returncode == 1 and "no backend 127.0.0.1:1" in unknown.stderr
    table = lbx_cli("status", "--socket", sock)
    assert table.returncode == 0 and one in table.stdout and "up" in table.stdout
    assert proc.stop() == 0
    assert not os.path.exists(sock)


def test_watch_shows_backend_turning_unhealthy_in_a_terminal(
    lbx: type[LbxProcess], backends: BackendThread, tmp_path: Path
) -> None:
    """``lbx status --watch`` in a pty shows a stopped backend as unhealthy within a period."""
    frequency = 0.5
    proc, sock, (one, _two) = start(
        lbx, backends, tmp_path, "--plugin", "healthcheck", "--health-check", "tcp",
        "--health-check-frequency", str(frequency),
    )  # fmt: skip
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child becomes `lbx status --watch`
        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 140, 0, 0))
        os.execve(
            sys.executable,
            [sys.executable, "-m", "lbx", "status", "--socket", sock, "--watch",
             "--interval", "0.1"],
            {**os.environ, "COLUMNS": "140", "LINES": "40", "TERM": "xterm-256color"},
        )  # fmt: skip
    try:
        screen = Screen(fd)
        screen.read_until(rf"{re.escape(one)}\s.*\bup\b")
        backends.stop(backends.backends[0])
        stopped = time.monotonic()
        screen.read_until(rf"{re.escape(one)}\s.*\bunhealthy\b.*tcp check failed")
        elapsed = time.monotonic() - stopped
        print(f"\nlbx status showed {one} unhealthy {elapsed:.2f}s after it stopped")
        # One check period, plus a check's own time and one refresh of the screen.
        assert elapsed < frequency + 1.0
    finally:
        os.kill(pid, signal.SIGINT)
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0
    assert proc.stop() == 0


class Screen:
    """The output of a program in a pty, read line by line with the ANSI codes removed."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.text = ""

    def read_until(self, pattern: str, timeout: float = TIMEOUT) -> str:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            lines = ANSI.sub("", self.text).replace("\r", "\n").split("\n")
            for line in lines:
                if regex.search(line):
                    self.text = ""
                    return line
            left = deadline - time.monotonic()
            assert left > 0, f"the terminal never showed {pattern!r}:\n" + "\n".join(lines[-30:])
            readable, _, _ = select.select([self.fd], [], [], left)
            if readable:
                try:
                    self.text += os.read(self.fd, 65536).decode(errors="replace")
                except OSError:  # the child closed the terminal
                    raise AssertionError("lbx status exited:\n" + self.text) from None
