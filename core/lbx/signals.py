"""The signal dispositions lbx's commands rely on, restored when a process starts.

A process inherits ignored signals from whoever started it: ``( lbx serve & )`` and other
background jobs of a non-interactive shell start with SIGINT and SIGQUIT ignored, and some CI
runners ignore SIGINT. Python then installs no ``KeyboardInterrupt`` handler, and a signal that
arrives before the event loop handles it is lost: Ctrl-C no longer stops ``lbx status --watch``
or the demo backends, and SIGQUIT or SIGTERM sent to an ``lbx serve`` that is still starting do
nothing. SIGHUP is left as it is until ``lbx serve`` is ready: then it means "reload the
configuration" (``lbx.reload``), whatever disposition lbx was started with.
"""

from __future__ import annotations

import signal


def restore() -> None:
    """Give SIGINT, SIGTERM and SIGQUIT their usual meaning (call it in the main thread)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)  # KeyboardInterrupt, as Python's
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)
