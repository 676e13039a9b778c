"""``threads: N``: a supervisor process and N worker processes sharing the listeners.

Under the GIL, processes are the unit of parallelism. The supervisor never runs an event loop
while it forks (forking under a running loop is unsafe): it binds the listeners, forks one process
for the background services (health checks run once, not once per worker) and N request workers,
then waits for signals and children, replacing a worker that dies.

Backend health lives in an anonymous shared mapping created before the forks, so the background
process's health checks and any worker's passive checks are seen by every worker at once.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import select
import signal
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio

from lbx import discovery, notify, reload
from lbx.errors import StartupError, describe

if TYPE_CHECKING:
    from lbx.server import Server

log = logging.getLogger("lbx.workers")

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>

UPGRADE_OVERLAP_SECONDS = 5.0
"""After handing the listeners over, keep accepting this long (Pingora's CLOSE_TIMEOUT)."""
SIGINT_POLL_SECONDS = 0.1
"""While handing the listeners over, how often the supervisor looks for a pending SIGINT."""

SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGCHLD, signal.SIGHUP}
READY_TIMEOUT_SECONDS = 60.0
READY = b"ready\n"
FAILED = b"failed: "
"""What a child writes to the supervisor's pipe: ``ready``, or ``failed: <why>`` (one line)."""
RESPAWN_BACKOFF_SECONDS = 1.0
"""A worker that dies within this long after starting is replaced only after this delay."""


@dataclass
class Child:
    """One forked process: a request worker (``index`` >= 0) or the background process (-1)."""

    index: int
    pid: int
    started: float
    generation: int = 0
    """Which configuration it serves: a reload starts a new generation and drains the old."""

    @property
    def name(self) -> str:
        return "background services" if self.index < 0 else f"worker {self.index}"


class Supervisor:
    """Runs ``server`` as N worker processes plus one background-services process."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.children: dict[int, Child] = {}
        self.stopping = False
        self.supervisor_pid = os.getpid()
        self.generation = 0
        self.previous_listeners: list[socket.socket] = []
        """During a reload, the running generation's listeners: a child of the new one closes
        its copies at once, or a drained worker would keep the address accepting into a
        backlog nobody reads (the kernel closes a listener with its last descriptor)."""

    # -- start-up ------------------------------------------------------------------------------
    def run(self) -> int:
        server = self.server
        server.run_loop(server.acquire_sockets)
        discovery.share(server)
        signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
        try:
            if server.has_background_services:
                self._start(-1)
            for index in range(server.config.threads):
                self._start(index)
            server.run_loop(functools.partial(server.pm.ahook.server_started, server=server))
            log.info(
                "lbx ready (pid %d, %d workers: %s)",
                os.getpid(),
                server.config.threads,
                ", ".join(str(c.pid) for c in self.children.values() if c.index >= 0),
            )
            server.announce_ready()
            return self._supervise()
        except BaseException:
            self.stopping = True  # a failed start: reap the children, start no new ones
            self._signal_all(signal.SIGKILL)
            self._reap(block=True)
            raise

    def _start(self, index: int) -> Child:
        """Fork a worker (or the background process) and wait until it reports ready."""
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child; covered by the e2e tests
            os.close(read_fd)
            os._exit(self._child_main(index, write_fd))
        os.close(write_fd)
        child = Child(index, pid, time.monotonic(), self.generation)
        self.children[pid] = child
        try:
            failure = _wait_ready(read_fd, READY_TIMEOUT_SECONDS)
        finally:
            os.close(read_fd)
        if failure is not None:
            raise StartupError(f"{child.name} (pid {pid}) failed to start: {failure}")
        log.info("%s started (pid %d)", child.name, pid)
        return child

    def _child_main(self, index: int, ready_fd: int) -> int:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the supervisor reloads, not its children
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
        _die_with(self.supervisor_pid)
        server = self.server
        server.forget_unix_paths()  # the supervisor removes socket files, not its children
        for sock in self.previous_listeners:
            sock.close()

        reported = False

        def report(message: bytes) -> None:
            nonlocal reported
            reported = True
            os.write(ready_fd, message)
            os.close(ready_fd)

        try:
            if index < 0:
                server.close_listeners()
                server.run_loop(server.serve_background, lambda: report(READY))
            else:
                server.run_loop(server.serve_worker, dict(server.listeners), lambda: report(READY))
        except Exception as exc:
            if reported:  # it served: a crash, whose traceback is what to look at
                log.exception(
                    "%s failed", "background services" if index < 0 else f"worker {index}"
                )
            else:  # a failed start: the supervisor says why, in one line
                log.debug("start-up failed", exc_info=True)
                report(FAILED + describe(exc).encode(errors="replace").replace(b"\n", b" ") + b"\n")
            return 1
        return 0

    # -- running -------------------------------------------------------------------------------
    def _supervise(self) -> int:
        deadline: float | None = None
        while self.children:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            info = (
                signal.sigtimedwait(SIGNALS, timeout)
                if timeout is not None
                else (signal.sigwaitinfo(SIGNALS))
            )
            if info is None:  # the drain deadline passed
                log.warning("workers still running after the grace period; killing them")
                self._signal_all(signal.SIGKILL)
                deadline = None
                continue
            signum = info.si_signo
            if signum == signal.SIGCHLD:
                self._reap(block=False)
                continue
            if signum == signal.SIGINT:
                log.info("SIGINT received, stopping workers at once")
                self._stop(signal.SIGINT)
                continue
            if self.stopping:
                log.info("%s received while draining", signal.Signals(signum).name)
                continue
            if signum == signal.SIGHUP:
                self._reload()
                continue
            if signum == signal.SIGQUIT:
                log.info("SIGQUIT received, handing the listeners over")
                handed_over, interrupted = self.server.run_loop(self._hand_over)
                if interrupted:
                    log.info("SIGINT received while upgrading, stopping workers at once")
                    self.server.forget_unix_paths()  # the new process may serve them already
                    self._stop(signal.SIGINT)
                    continue
                if handed_over is False:
                    continue  # the new process did not take over: keep serving
                if handed_over and self._overlap() == signal.SIGINT:
                    log.info("SIGINT received, stopping workers at once")
                    self._stop(signal.SIGINT)
                    continue
            else:
                log.info("SIGTERM received, draining workers")
            self._stop(signal.SIGTERM)
            config = self.server.config
            deadline = (
                time.monotonic()
                + config.grace_period_seconds
                + config.graceful_shutdown_timeout_seconds
                + 5
            )
        log.info("lbx stopped")
        return 0

    # -- reload ----------------------------------------------------------------------------------
    def _reload(self) -> None:
        """SIGHUP: start a generation of processes with the configuration file as it is now,
        then drain the old workers (nginx's reload); a refused file changes nothing."""
        log.info("SIGHUP received, reloading the configuration")
        notify.reloading()
        old = self.server
        for found in old.discovery.values():  # the current set and flags, from shared memory
            if found.table is not None:
                found.table.seen = -1
                found.refresh()
        new = reload.rebuild(old)
        if new is None:
            notify.ready(main_pid=False)
            return
        try:
            new.listeners = reload.bind_listeners(old, new)
        except StartupError as exc:
            log.error("reload refused, the running configuration stays: %s", exc)
            notify.ready(main_pid=False)
            return
        new.bound = {key: old.bound.get(key) or key for key in new.listeners}
        reload.carry_over(old, new)
        discovery.share(new)
        previous = [c for c in self.children.values() if c.generation == self.generation]
        # The new admin endpoints may listen where the old ones do: the old background
        # process goes first (health verdicts stay as they are meanwhile).
        for child in [c for c in previous if c.index < 0]:
            self._end(child)
        self.generation += 1
        self.server = new
        self.previous_listeners = list(old.listeners.values())
        try:
            if new.has_background_services:
                self._start(-1)
            for index in range(new.config.threads):
                self._start(index)
        except StartupError as exc:
            log.error("reload failed, the running configuration stays: %s", exc)
            for child in [c for c in self.children.values() if c.generation == self.generation]:
                self._end(child, signal.SIGKILL, "of the configuration that failed")
            self.generation -= 1
            self.server = old
            new.abandon_listeners()
            if any(c.index < 0 for c in previous):
                self._start(-1)
            notify.ready(main_pid=False)
            return
        finally:
            self.previous_listeners = []  # (the background process respawned above closes all)
        for child in previous:
            if child.index >= 0:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGTERM)  # drains: requests in flight finish
        for sock in old.listeners.values():
            sock.close()
        log.info(
            "configuration reloaded from %s (pid %d, %d workers: %s); draining the previous ones",
            old.config.path or "the command line",
            os.getpid(),
            new.config.threads,
            ", ".join(
                str(c.pid)
                for c in self.children.values()
                if c.index >= 0 and c.generation == self.generation
            ),
        )
        notify.ready(main_pid=False)

    def _end(
        self, child: Child, signum: int = signal.SIGTERM, of: str = "of the previous configuration"
    ) -> None:
        """Stop one child now and reap it (SIGKILL if it takes more than a few seconds)."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signum)
        deadline = time.monotonic() + 10
        while True:
            try:
                pid, _ = os.waitpid(child.pid, os.WNOHANG)
            except ChildProcessError:
                break
            if pid:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGKILL)
                deadline = time.monotonic() + 10
                continue
            signal.sigtimedwait({signal.SIGCHLD}, min(left, 0.1))
        self.children.pop(child.pid, None)
        log.info("%s (pid %d) %s stopped", child.name, child.pid, of)

    async def _hand_over(self) -> tuple[bool | None, bool]:
        """``Server.hand_over``, unless SIGINT comes first: returns its result and whether
        SIGINT cut it short (waiting for the new process can take a while: its start, then its
        ``ready``). The supervisor's signals stay blocked, so none is lost when the handover
        ends: a pending SIGINT is looked for ten times a second, the others wait their turn."""
        result: bool | None = None
        interrupted = False
        async with anyio.create_task_group() as tasks:

            async def hand_over() -> None:
                nonlocal result
                result = await self.server.hand_over()
                tasks.cancel_scope.cancel()

            tasks.start_soon(hand_over)
            while signal.sigtimedwait({signal.SIGINT}, 0) is None:
                await anyio.sleep(SIGINT_POLL_SECONDS)
            interrupted = True
            tasks.cancel_scope.cancel()
        return result, interrupted

    def _overlap(self) -> int | None:
        """Keep the workers accepting a little longer while still replacing dead ones.

        SIGTERM or SIGINT cut the overlap short (returned: the caller drains or stops at once).
        """
        end = time.monotonic() + UPGRADE_OVERLAP_SECONDS
        while (left := end - time.monotonic()) > 0:
            info = signal.sigtimedwait(SIGNALS, left)
            if info is None:
                break
            if info.si_signo == signal.SIGCHLD:
                self._reap(block=False)
            elif info.si_signo == signal.SIGQUIT:
                log.info("SIGQUIT received while upgrading")
            else:
                return info.si_signo
        return None

    def _stop(self, signum: int) -> None:
        self.stopping = True
        self.server.announce_stopping()
        # The supervisor's copies of the listening sockets must go too, or the kernel would
        # keep queueing connections nobody accepts instead of refusing them.
        self.server.close_listeners()
        self._signal_all(signum)

    def _signal_all(self, signum: int) -> None:
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def _reap(self, *, block: bool) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, 0 if block else os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            if pid == 0:
                return
            child = self.children.pop(pid, None)
            if child is None:
                continue
            if self.stopping:
                log.info("%s (pid %d) exited", child.name, pid)
                continue
            if child.generation != self.generation:
                log.info("%s (pid %d) of the previous configuration exited", child.name, pid)
                continue
            log.warning(
                "%s (pid %d) exited unexpectedly (%s); starting a new one",
                child.name,
                pid,
                _describe_status(status),
            )
            if time.monotonic() - child.started < RESPAWN_BACKOFF_SECONDS:
                time.sleep(RESPAWN_BACKOFF_SECONDS)
            self._start(child.index)


def _die_with(supervisor_pid: int) -> None:
    """Drain and exit (SIGTERM) if the supervisor dies, even by SIGKILL (Linux prctl)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # pragma: no cover - not Linux: nothing to arm
        return
    if os.getppid() != supervisor_pid:  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _wait_ready(fd: int, timeout: float) -> str | None:
    """Wait for a child's report: None once it is ready, else why it is not."""
    deadline = time.monotonic() + timeout
    received = b""
    while (left := deadline - time.monotonic()) > 0:
        if not select.select([fd], [], [], left)[0]:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            if received.startswith(FAILED):
                return received[len(FAILED) :].decode(errors="replace").strip()
            return "it exited; see the log above"
        received += chunk
        if received.startswith(READY):
            return None
    return f"not ready within {timeout:g}s"


def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit code {os.waitstatus_to_exitcode(status)}"
