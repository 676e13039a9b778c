"""Readiness for service managers: systemd's ``sd_notify`` protocol, without a dependency.

When ``NOTIFY_SOCKET`` is set (systemd's ``Type=notify``), lbx sends one datagram per event to
that Unix socket (a path, or an abstract name written ``@name``):

- ``READY=1`` once it listens and every ``server_started`` hook ran (with ``MAINPID=<pid>``
  first when this process is not the one the manager started: a daemon, or the new process of an
  upgrade, which becomes the service's main process);
- ``RELOADING=1`` when SIGQUIT starts an upgrade (the new process's ``READY=1`` ends it; if no
  new process takes over, this one sends ``READY=1`` again), and when SIGHUP starts a reload
  (``READY=1`` once it is applied or refused);
- ``STOPPING=1`` when it starts to shut down, unless it handed its listeners over: the new
  process is the service then, and the old one's exit is not the service stopping.

Without ``NOTIFY_SOCKET`` nothing is sent. A failed send is logged, never fatal: the proxy runs
whether or not someone listens.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger("lbx.notify")

ENVIRONMENT = "NOTIFY_SOCKET"


def notify(*fields: str) -> bool:
    """Send ``fields`` (``"READY=1"``, ...) as one message; True when it was sent."""
    address = os.environ.get(ENVIRONMENT)
    if not address:
        return False
    if address.startswith("@"):  # the abstract namespace: a leading NUL byte, no file
        address = "\0" + address[1:]
    message = "".join(f"{field}\n" for field in fields).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message, address)
    except OSError as exc:
        log.warning("cannot notify the service manager on %s: %s", os.environ[ENVIRONMENT], exc)
        return False
    return True


def ready(*, main_pid: bool) -> bool:
    """``READY=1``; ``main_pid``: announce this process as the service's main process first."""
    if main_pid:
        return notify(f"MAINPID={os.getpid()}", "READY=1")
    return notify("READY=1")


def reloading() -> bool:
    """``RELOADING=1``, with the ``MONOTONIC_USEC`` that systemd 253 and later expect with it."""
    return notify(
        "RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"
    )


def stopping() -> bool:
    return notify("STOPPING=1")
