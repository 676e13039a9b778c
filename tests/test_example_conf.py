"""Every example_conf/*.yaml passes ``lbx serve -t -c FILE``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "example_conf").glob("*.yaml"))


def test_examples_exist() -> None:
    """example_conf/ has files (so the parametrized test really runs)."""
    assert EXAMPLES


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_config_is_valid(path: Path, tmp_path: Path) -> None:
    """``lbx serve -t -c FILE`` exits 0 (run from elsewhere: relative paths are the file's)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LBX_")}
    result = subprocess.run(
        [sys.executable, "-m", "lbx", "serve", "-t", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert f"configuration {path} is valid" in result.stdout
