"""lbx-daemon: ``lbx serve -d`` detaches and runs in the background, as Pingora's ``-d`` does.

The command returns only once the daemon listens (exit 0), or prints why it failed (exit 1), so
``systemd`` units with ``Type=forking`` work. The daemon writes ``pid_file`` (an existing one is
renamed ``<pid_file>.old`` first), logs to ``error_log``, and honours ``working_directory``,
``user`` and ``group``.
"""

from __future__ import annotations

import atexit
import contextlib
import grp
import os
import pwd
import select
import sys
import tempfile
import time

from lbx import Config, hookimpl
from lbx.server import Server

__all__ = ["READY_TIMEOUT_SECONDS"]

READY_TIMEOUT_SECONDS = 120.0
"""How long ``lbx serve -d`` waits for the daemon to listen before giving up (exit 1)."""

_READY = b"ready\n"

# Set in the daemon between fork and readiness: where to report that it listens.
_ready_fd: int | None = None
# Where the daemon's output goes before it is ready, and whether that is a scratch file.
_startup_log: str | None = None
_startup_log_is_temporary = False


@hookimpl
def daemonize(config: Config) -> bool:
    """Fork; the parent waits for the child to listen and exits, the child carries on."""
    global _ready_fd, _startup_log, _startup_log_is_temporary
    if config.error_log:
        log_path = os.path.abspath(config.error_log)
        temporary = False
    else:
        handle, log_path = tempfile.mkstemp(prefix="lbx-daemon-", suffix=".log")
        os.close(handle)
        temporary = True
    offset = os.path.getsize(log_path) if os.path.exists(log_path) else 0
    read_fd, write_fd = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid > 0:
        os.close(write_fd)
        _wait_for_daemon(read_fd, pid, log_path, offset, temporary)  # never returns
    os.close(read_fd)
    os.setsid()
    _ready_fd, _startup_log, _startup_log_is_temporary = write_fd, log_path, temporary
    _detach(config, log_path)
    _write_pid_file(config)
    _drop_privileges(config)
    return True


@hookimpl
async def server_started(server: Server) -> None:
    """Tell the waiting parent that the daemon listens."""
    global _ready_fd
    if _ready_fd is None:
        return
    os.write(_ready_fd, _READY)
    os.close(_ready_fd)
    _ready_fd = None
    if _startup_log_is_temporary and _startup_log is not None:
        # No error_log configured: from now on the output goes nowhere, as Pingora's does.
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 1)
            os.dup2(devnull.fileno(), 2)
        with contextlib.suppress(OSError):
            os.unlink(_startup_log)


def _wait_for_daemon(read_fd: int, pid: int, log_path: str, offset: int, temporary: bool) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    received = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([read_fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        chunk = os.read(read_fd, 64)
        if not chunk:
            break
        received += chunk
        if received.startswith(_READY):
            os._exit(0)
    reason = f"it did not report ready within {READY_TIMEOUT_SECONDS:g}s"
    if not received and not _alive(pid):
        reason = "it exited during start-up"
    lines = _tail(log_path, offset)
    if temporary:
        with contextlib.suppress(OSError):
            os.unlink(log_path)
    detail = f": {lines[-1]}" if lines else ""
    sys.stderr.write(f"lbx: error: the daemon did not start ({reason}){detail}\n")
    sys.stderr.flush()
    os._exit(1)


def _alive(pid: int) -> bool:
    try:
        finished, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return False
    return finished == 0


def _tail(path: str, offset: int) -> list[str]:
    try:
        with open(path, "rb") as log:
            log.seek(offset)
            text = log.read().decode("utf-8", "replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if line.strip()]


def _detach(config: Config, log_path: str) -> None:
    if config.working_directory:
        os.chdir(config.working_directory)
    os.umask(0o007)
    with open(os.devnull, "rb") as devnull:
        os.dup2(devnull.fileno(), 0)
    log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)


def _write_pid_file(config: Config) -> None:
    path = config.pid_file
    if os.path.exists(path):
        os.replace(path, path + ".old")
    with open(path, "w") as pid_file:
        pid_file.write(f"{os.getpid()}\n")
    pid = os.getpid()

    def remove_own_pid_file() -> None:
        # After an upgrade the new process owns the pid file: leave it alone then.
        with contextlib.suppress(OSError), open(path) as current:
            if current.read().strip() == str(pid):
                os.unlink(path)

    atexit.register(remove_own_pid_file)


def _drop_privileges(config: Config) -> None:
    if config.group is not None:
        os.setgid(grp.getgrnam(config.group).gr_gid)
    if config.user is not None:
        user = pwd.getpwnam(config.user)
        if config.group is None:
            os.initgroups(config.user, user.pw_gid)
            os.setgid(user.pw_gid)
        with contextlib.suppress(OSError):
            os.chown(config.pid_file, user.pw_uid, -1)
        os.setuid(user.pw_uid)
