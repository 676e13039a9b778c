"""sd_notify (lbx.notify): what a service manager with ``Type=notify`` receives, read from a
real Unix datagram socket bound as systemd binds its notify socket, with each sender's pid
(``SO_PASSCRED``, as systemd checks it)."""

from __future__ import annotations

import os
import select
import signal
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from lbx.testing import BackendThread, LbxProcess, http_get

UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class NotifySocket:
    """The service manager's side: a datagram socket at ``address`` (a path or ``@name``)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)

    def receive(self, timeout: float = 30) -> tuple[int, list[str]]:
        """The next message: (sender pid, its ``KEY=VALUE`` lines)."""
        assert select.select([self.sock], [], [], timeout)[0], "no notification"
        data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(UCRED.size))
        pids = [
            UCRED.unpack(payload[: UCRED.size])[0]
            for level, kind, payload in ancillary
            if (level, kind) == (socket.SOL_SOCKET, socket.SCM_CREDENTIALS)
        ]
        return pids[0], data.decode().splitlines()

    def pending(self) -> list[tuple[int, list[str]]]:
        """Every message already received and not read (call once the senders exited)."""
        found = []
        while select.select([self.sock], [], [], 0)[0]:
            found.append(self.receive())
        return found

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    receiver = NotifySocket(str(tmp_path / "notify.sock"))
    yield receiver
    receiver.close()


def started(*args: str, notify: NotifySocket) -> LbxProcess:
    return LbxProcess(*args, env={"NOTIFY_SOCKET": notify.address}).start_async()


def fields(lines: list[str]) -> list[str]:
    """The keys of the lines, with the values of those whose value is known."""
    return [line if not line.startswith("MONOTONIC_USEC=") else "MONOTONIC_USEC" for line in lines]


def test_ready_once_listening_then_stopping(notify_socket: NotifySocket, backends: BackendThread):
    """READY=1 from lbx itself once it serves; STOPPING=1 when SIGTERM starts the drain."""
    backend = backends.start("a")
    lbx = started(
        "--plugin", "roundrobin", "--listen", "127.0.0.1:0", "--upstream", backend.address,
        notify=notify_socket,
    )  # fmt: skip
    try:
        assert notify_socket.receive() == (lbx.pid, ["READY=1"])
        lbx.wait_for("lbx ready")  # (the log is read by a thread: wait for its address)
        assert http_get(lbx.address).status == 200  # it serves when it says so
        lbx.send_signal(signal.SIGTERM)
        assert notify_socket.receive() == (lbx.pid, ["STOPPING=1"])
        assert lbx.wait() == 0
        assert notify_socket.pending() == []
    finally:
        lbx.close()


def test_abstract_socket_name(backends: BackendThread):
    """``NOTIFY_SOCKET=@name``: the abstract namespace, as systemd sets it."""
    receiver = NotifySocket(f"@lbx-test-notify-{os.getpid()}")
    backend = backends.start("a")
    lbx = started(
        "--plugin", "roundrobin", "--listen", "127.0.0.1:0", "--upstream", backend.address,
        notify=receiver,
    )  # fmt: skip
    try:
        assert receiver.receive() == (lbx.pid, ["READY=1"])
        assert lbx.stop(signal.SIGINT) == 0
        assert receiver.receive() == (lbx.pid, ["STOPPING=1"])
    finally:
        lbx.close()
        receiver.close()


def test_worker_processes_notify_through_the_supervisor(
    notify_socket: NotifySocket, backends: BackendThread, tmp_path: Path
):
    """``threads: 2``: only the supervisor speaks, once every worker is ready."""
    backend = backends.start("a")
    conf = tmp_path / "conf.yaml"
    conf.write_text("threads: 2\n")
    lbx = started(
        "-c", str(conf), "--plugin", "roundrobin", "--listen", "127.0.0.1:0",
        "--upstream", backend.address, notify=notify_socket,
    )  # fmt: skip
    try:
        assert notify_socket.receive() == (lbx.pid, ["READY=1"])
        lbx.wait_for("lbx ready")
        assert lbx.stop() == 0
        assert notify_socket.pending() == [(lbx.pid, ["STOPPING=1"])]
    finally:
        lbx.close()


def write_upgrade_conf(tmp_path: Path, upstream: str, send_timeout: float = 15) -> Path:
    conf = tmp_path / "conf.yaml"
    conf.write_text(
        f"upgrade_sock: {tmp_path / 'upgrade.sock'}\n"
        f"upgrade: {{send_timeout_seconds: {send_timeout}}}\n"
        "plugins: [roundrobin]\n"
        f"services: [{{listen: '127.0.0.1:0', upstreams: '{upstream}'}}]\n"
    )
    return conf


def test_upgrade_hands_the_service_to_the_new_process(
    notify_socket: NotifySocket, backends: BackendThread, tmp_path: Path
):
    """SIGQUIT: the old process says RELOADING=1; the new one names itself the main process and
    says READY=1; the old one then exits without STOPPING=1 (the service goes on)."""
    conf = write_upgrade_conf(tmp_path, backends.start("a").address)
    old = started("-c", str(conf), notify=notify_socket)
    new = None
    try:
        assert notify_socket.receive() == (old.pid, ["READY=1"])
        new = started("-c", str(conf), "-u", notify=notify_socket)
        old.send_signal(signal.SIGQUIT)
        pid, lines = notify_socket.receive()
        assert (pid, fields(lines)) == (old.pid, ["RELOADING=1", "MONOTONIC_USEC"])
        assert notify_socket.receive() == (new.pid, [f"MAINPID={new.pid}", "READY=1"])
        assert old.wait() == 0
        assert notify_socket.pending() == []  # no STOPPING=1 from the old process
        assert new.stop() == 0
        assert notify_socket.receive() == (new.pid, ["STOPPING=1"])
    finally:
        old.close()
        if new is not None:
            new.close()


def test_failed_upgrade_is_ready_again(
    notify_socket: NotifySocket, backends: BackendThread, tmp_path: Path
):
    """No new process takes the listeners: RELOADING=1, then READY=1 again from the old one."""
    conf = write_upgrade_conf(tmp_path, backends.start("a").address, send_timeout=0.5)
    lbx = started("-c", str(conf), notify=notify_socket)
    try:
        assert notify_socket.receive() == (lbx.pid, ["READY=1"])
        lbx.send_signal(signal.SIGQUIT)
        assert fields(notify_socket.receive()[1]) == ["RELOADING=1", "MONOTONIC_USEC"]
        assert notify_socket.receive() == (lbx.pid, ["READY=1"])
        assert lbx.stop() == 0
    finally:
        lbx.close()
