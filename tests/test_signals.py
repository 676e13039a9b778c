"""Processes started with SIGINT and SIGQUIT ignored, as a non-interactive shell starts its
background jobs (``( make test & )``) and some CI runners start everything, still stop on the
signals lbx and its tools rely on (lbx.signals)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from lbx.testing import LbxProcess

IGNORING = (
    "import os, signal, sys; "
    "signal.signal(signal.SIGINT, signal.SIG_IGN); signal.signal(signal.SIGQUIT, signal.SIG_IGN); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
)
"""Runs ``python ARGS`` with SIGINT and SIGQUIT ignored, inherited across exec like a shell's."""


class IgnoringSignals(LbxProcess):
    """``python -m lbx ARGS`` (or ``-m MODULE``) started with SIGINT and SIGQUIT ignored."""

    def __init__(self, *argv: str) -> None:
        super().__init__()
        self.argv = argv

    def command(self) -> list[str]:
        return [sys.executable, "-c", IGNORING, *self.argv]


def test_demo_backends_stop_on_ctrl_c() -> None:
    """``python -m lbx.testing`` (the docs' demo backends) exits 0 on SIGINT."""
    backends = IgnoringSignals("-m", "lbx.testing", "--listen", "127.0.0.1:0").start_async()
    try:
        backends.wait_for(r"^backend 1 listening on ")
        assert backends.stop(signal.SIGINT, timeout=10) == 0
    finally:
        backends.close()


def test_lbx_serve_stops_on_ctrl_c_while_starting(tmp_path: Path) -> None:
    """An ``lbx serve -u`` still waiting for its listeners is interrupted by SIGINT (exit 130),
    instead of waiting out its 60 s."""
    conf = tmp_path / "conf.yaml"
    conf.write_text(
        f"upgrade_sock: {tmp_path / 'upgrade.sock'}\n"
        "upgrade: {receive_timeout_seconds: 60}\n"
        "plugins: [roundrobin]\n"
        "services: [{listen: '127.0.0.1:0', upstreams: '127.0.0.1:9'}]\n"
    )
    lbx = IgnoringSignals("-m", "lbx", "serve", "-c", str(conf), "-u").start_async()
    try:
        lbx.wait_for(r"-u: waiting up to 60s")
        assert lbx.stop(signal.SIGINT, timeout=10) == 130, lbx.output
    finally:
        lbx.close()


def test_ignored_signals_are_inherited() -> None:
    """The premise: without lbx.signals a Python child keeps SIGINT ignored (so the two tests
    above test something)."""
    probe = "import signal; print(signal.getsignal(signal.SIGINT) is signal.SIG_IGN)"
    result = subprocess.run(
        [sys.executable, "-c", IGNORING, "-c", probe], capture_output=True, text=True, timeout=30
    )
    assert result.stdout.strip() == "True", result.stderr
