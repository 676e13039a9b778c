"""lbx-daemon: ``lbx serve -d`` detaches and runs in the background, as Pingora's ``-d`` does.

The command returns only once the daemon serves (exit 0), or prints why it failed (exit 1).
The daemon writes ``pid_file`` only then, once it holds its listeners and every other
``server_started`` hook ran (as nginx does), atomically: a temporary file in the same directory,
renamed over the old one, whose pid is kept in ``<pid_file>.old``. So a start that fails (an
address in use) never touches the pid file of the daemon that runs, and during an upgrade
(``-u``) the file names the new process only once the sockets were handed over and it serves.
The daemon logs to ``error_log`` and honours ``working_directory``, ``user`` and ``group``.
"""

from __future__ import annotations

import atexit
import contextlib
import grp
import logging
import os
import pwd
import select
import signal
import sys
import tempfile
import time

from lbx import Config, PluginManager, Server, StartupError, hookimpl

__all__ = ["READY_TIMEOUT_SECONDS", "Daemon", "write_atomically"]

READY_TIMEOUT_SECONDS = 120.0
"""How long ``lbx serve -d`` waits for the daemon to serve before giving up (exit 1)."""

EXIT_WAIT_SECONDS = 5.0
"""How long the waiting command gives a daemon that closed its end of the pipe to exit."""

_READY = b"ready\n"
_ERROR = "lbx: error: "
"""How lbx prints a failure, in the log of a daemon too."""

log = logging.getLogger("lbx.daemon")


@hookimpl
def configure(config: Config, plugin_manager: PluginManager) -> None:
    """With ``-d`` (``daemon: true``), take part: the ``Daemon`` holds the state of this run.
    ``-t`` checks the directories of ``error_log`` and ``pid_file`` (as ``nginx -t`` opens its
    logs): a start would fail on them."""
    if config.daemon:
        if config.test:
            _check_error_log_directory(config)
            _check_directory("pid_file", config.pid_file)
        plugin_manager.register(Daemon(config), "daemon.process")


class Daemon:
    """One ``lbx serve -d``: the fork, the daemon's start-up log and its pid file."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.ready_fd: int | None = None
        """In the daemon until it serves: the pipe to the waiting command."""
        self.startup_log: str | None = None
        """Where the daemon's output goes until it serves: ``error_log`` or a scratch file."""
        self.startup_log_is_temporary = False

    @hookimpl
    def daemonize(self, config: Config) -> bool:
        """Fork; the parent waits until the daemon serves and exits, the daemon carries on."""
        _check_error_log_directory(config)
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
        self.ready_fd, self.startup_log = write_fd, log_path
        self.startup_log_is_temporary = temporary
        _detach(config, log_path)
        _drop_privileges(config)
        _check_pid_file_directory(config)
        return True

    @hookimpl(trylast=True)
    async def server_started(self, server: Server) -> None:
        """The daemon serves (every other ``server_started`` impl ran: after an upgrade, the old
        process was told): write the pid file, then let the waiting command return."""
        if self.ready_fd is None:
            return
        try:
            write_pid_file(self.config.pid_file)
        except OSError as exc:  # it serves already (and may have taken over): keep serving
            log.error("cannot write pid_file %s: %s", self.config.pid_file, exc)
        os.write(self.ready_fd, _READY)
        os.close(self.ready_fd)
        self.ready_fd = None
        if self.startup_log_is_temporary and self.startup_log is not None:
            # No error_log configured: from now on the output goes nowhere, as Pingora's does.
            with open(os.devnull, "wb") as devnull:
                os.dup2(devnull.fileno(), 1)
                os.dup2(devnull.fileno(), 2)
            with contextlib.suppress(OSError):
                os.unlink(self.startup_log)


def write_atomically(path: str, text: str) -> None:
    """Replace ``path`` with ``text`` in one step: a reader sees the old content or the new."""
    directory = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=directory)
    try:
        with os.fdopen(handle, "w") as file:
            file.write(text)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def write_pid_file(path: str) -> None:
    """Name this process in ``path`` (the previous pid goes to ``<path>.old``, as Pingora keeps
    it) and remove the file at exit, unless a newer process (after an upgrade) owns it then."""
    pid = str(os.getpid())
    with contextlib.suppress(FileNotFoundError), open(path) as previous:
        write_atomically(path + ".old", previous.read())
    write_atomically(path, pid + "\n")

    def remove_own_pid_file() -> None:
        with contextlib.suppress(OSError), open(path) as current:
            if current.read().strip() == pid:
                os.unlink(path)

    atexit.register(remove_own_pid_file)


def _wait_for_daemon(read_fd: int, pid: int, log_path: str, offset: int, temporary: bool) -> None:
    """In the command that forked: exit 0 once the daemon reports that it serves, else print
    why it did not (the daemon's last log line) and exit 1."""
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    received = b""
    reason = f"it did not report ready within {READY_TIMEOUT_SECONDS:g}s"
    while (left := deadline - time.monotonic()) > 0:
        if not select.select([read_fd], [], [], left)[0]:
            continue
        chunk = os.read(read_fd, 64)
        if not chunk:
            # The daemon closes its end only by reporting ready or by exiting; the pipe can
            # close a moment before the process is gone, so wait for it rather than probe it.
            reason = f"it exited during start-up{_exit_status(pid)}"
            break
        received += chunk
        if received.startswith(_READY):
            os._exit(0)
    lines = _tail(log_path, offset)
    if temporary:
        with contextlib.suppress(OSError):
            os.unlink(log_path)
    # The log may be shared with a running lbx (an upgrade): the daemon's own lines say why.
    own = [line for line in lines if line.startswith(_ERROR) or f"[{pid}]" in line]
    detail = f": {(own or lines)[-1].removeprefix(_ERROR)}" if lines else ""
    sys.stderr.write(f"lbx: error: the daemon did not start ({reason}){detail}\n")
    sys.stderr.flush()
    os._exit(1)


def _exit_status(pid: int) -> str:
    """``, exit code N`` (or ``, killed by SIG...``) once the daemon is gone; "" if it is not
    gone within ``EXIT_WAIT_SECONDS``."""
    with contextlib.suppress(OSError):  # no pidfd (not Linux), or the process is gone already
        pidfd = os.pidfd_open(pid)
        try:
            select.select([pidfd], [], [], EXIT_WAIT_SECONDS)  # readable once it exited
        finally:
            os.close(pidfd)
    try:
        finished, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return ""
    if not finished:
        return ""
    if os.WIFSIGNALED(status):
        return f", killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f", exit code {os.waitstatus_to_exitcode(status)}"


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


def _drop_privileges(config: Config) -> None:
    if config.group is not None:
        os.setgid(grp.getgrnam(config.group).gr_gid)
    if config.user is not None:
        user = pwd.getpwnam(config.user)
        if config.group is None:
            os.initgroups(config.user, user.pw_gid)
            os.setgid(user.pw_gid)
        os.setuid(user.pw_uid)


def _check_directory(key: str, path: str) -> str:
    """The directory of a file lbx writes, which must exist (and the path not be a directory
    itself): one line naming the key if not."""
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise StartupError(f"cannot write {key} {path}: it is a directory")
    if not os.path.isdir(directory):
        problem = "is not a directory" if os.path.exists(directory) else "does not exist"
        raise StartupError(f"cannot write {key} {path}: {directory} {problem}")
    return directory


def _check_error_log_directory(config: Config) -> None:
    if config.error_log:
        _check_directory("error_log", config.error_log)


def _check_pid_file_directory(config: Config) -> None:
    """The pid file is written once the daemon serves, as the user it runs as: find out now,
    while failing is still only a failed start, whether that will work."""
    directory = _check_directory("pid_file", config.pid_file)
    if not os.access(directory, os.W_OK | os.X_OK):
        who = f" by user {config.user}" if config.user is not None else ""
        raise StartupError(
            f"cannot write pid_file {config.pid_file}: {directory} is not writable{who}"
        )
