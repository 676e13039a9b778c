"""lbx-accesslog: the combined and JSON lines of a real lbx."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from lbx.testing import BackendThread, LbxProcess, http_get

TIMEOUT = 10.0
COMBINED = re.compile(
    r'^127\.0\.0\.1 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\] "GET /hello\?x=1 HTTP/1\.1" '
    r'200 \d+ "-" "lbx-test" upstream=127\.0\.0\.1:\d+ upstream_time=[\d.e-]+ '
    r"total_time=[\d.e-]+ retries=0$"
)


def get(address: str, path: str) -> int:
    return http_get(address, path, {"User-Agent": "lbx-test"}, timeout=TIMEOUT).status


def run(lbx: Any, backends: BackendThread, tmp_path: Path, section: str) -> list[str]:
    backend = backends.start("one")
    conf = tmp_path / "lbx.yaml"
    conf.write_text(f"plugins: [roundrobin, accesslog]\naccesslog: {section}\n")
    proc: LbxProcess = lbx(
        "-c", str(conf), "--listen", "127.0.0.1:0", "--upstream", backend.address
    )
    assert get(proc.address, "/hello?x=1") == 200
    assert proc.stop() == 0  # the buffer is written at shutdown
    return (tmp_path / "access.log").read_text().splitlines()


def test_combined_line_with_extra_fields(lbx: Any, backends: BackendThread, tmp_path: Path) -> None:
    """The combined format is Apache's, followed by the chosen extra fields as key=value."""
    section = (
        f"{{path: '{tmp_path / 'access.log'}', "
        "fields: [upstream, upstream_time, total_time, retries]}"
    )
    [line] = run(lbx, backends, tmp_path, section)
    assert COMBINED.match(line), line


def test_json_line_has_every_field(lbx: Any, backends: BackendThread, tmp_path: Path) -> None:
    """A JSON line is one object with every field: status, upstream, times, bytes, retries."""
    [line] = run(lbx, backends, tmp_path, f"{{path: '{tmp_path / 'access.log'}', format: json}}")
    record = json.loads(line)
    assert record["status"] == 200 and record["method"] == "GET"
    assert record["uri"] == "/hello?x=1" and record["user_agent"] == "lbx-test"
    assert record["upstream"].startswith("127.0.0.1:") and record["retries"] == 0
    assert 0 < record["upstream_time"] <= record["total_time"] < TIMEOUT
    assert record["bytes_sent"] > 0 and record["error"] is None


def test_unknown_field_is_a_config_error(lbx: Any, backends: BackendThread, tmp_path: Path) -> None:
    """A typo in ``fields`` stops lbx at start-up with the file and the known fields."""
    conf = tmp_path / "lbx.yaml"
    conf.write_text("plugins: [roundrobin, accesslog]\naccesslog: {fields: [upstrem]}\n")
    proc = lbx("-c", str(conf), "--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:1", ready=False)
    proc.start_async()
    assert proc.wait() == 2
    assert "unknown field 'upstrem'" in proc.output
