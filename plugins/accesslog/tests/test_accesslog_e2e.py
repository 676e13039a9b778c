"""lbx-accesslog: the combined and JSON lines of a real lbx."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from tests.over_both import get as get_over

from lbx.testing import BackendThread, LbxProcess, http_get

TIMEOUT = 10.0
COMBINED = re.compile(
    r"^127\.0\.0\.1 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\] "
    r'"GET /hello\?x=1 HTTP/(?P<version>1\.1|2)" '
    r'200 \d+ "-" "lbx-test" upstream=127\.0\.0\.1:\d+ upstream_time=[\d.e-]+ '
    r"total_time=[\d.e-]+ retries=0$"
)


def get(address: str, path: str) -> int:
    return http_get(address, path, {"User-Agent": "lbx-test"}, timeout=TIMEOUT).status


def run(lbx: Any, backends: BackendThread, tmp_path: Path, section: str) -> tuple[list[str], str]:
    """The lines of one GET /hello?x=1, and the HTTP version it was asked in."""
    backend = backends.start("one")
    conf = tmp_path / "lbx.yaml"
    conf.write_text(f"plugins: [roundrobin, accesslog]\naccesslog: {section}\n")
    proc: LbxProcess = lbx(
        "-c", str(conf), "--listen", "127.0.0.1:0", "--upstream", backend.address
    )
    answer = get_over(proc.address, "/hello?x=1", headers={"User-Agent": "lbx-test"})
    assert answer.status == 200
    assert proc.stop() == 0  # the buffer is written at shutdown
    return (tmp_path / "access.log").read_text().splitlines(), answer.http_version


@pytest.mark.over_both
def test_combined_line_with_extra_fields(lbx: Any, backends: BackendThread, tmp_path: Path) -> None:
    """The combined format is Apache's, followed by the chosen extra fields as key=value."""
    section = (
        f"{{path: '{tmp_path / 'access.log'}', "
        "fields: [upstream, upstream_time, total_time, retries]}"
    )
    [line], version = run(lbx, backends, tmp_path, section)
    match = COMBINED.match(line)
    assert match and match["version"] == version, line


@pytest.mark.over_both
def test_json_line_has_every_field(lbx: Any, backends: BackendThread, tmp_path: Path) -> None:
    """A JSON line is one object with every field: status, upstream, times, bytes, retries."""
    [line], version = run(
        lbx, backends, tmp_path, f"{{path: '{tmp_path / 'access.log'}', format: json}}"
    )
    record = json.loads(line)
    assert record["status"] == 200 and record["method"] == "GET"
    assert record["version"] == version
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


def test_lbx_t_finds_a_path_that_cannot_be_opened(tmp_path: Path) -> None:
    """``-t`` says what a start would (as ``nginx -t`` opens its logs), without creating the
    file: a directory that does not exist is one line, exit 2; a good path is valid."""
    conf = tmp_path / "lbx.yaml"

    def check(path: Path) -> subprocess.CompletedProcess[str]:
        conf.write_text(f"plugins: [roundrobin, accesslog]\naccesslog: {{path: '{path}'}}\n")
        command = ["serve", "-t", "-c", str(conf), "--upstream", "127.0.0.1:1"]
        return subprocess.run(
            [sys.executable, "-m", "lbx", *command], capture_output=True, text=True, timeout=30
        )

    (tmp_path / "a_file").write_text("")
    for path, reason in (
        (tmp_path / "missing" / "access.log", "No such file or directory"),
        (tmp_path / "a_file" / "access.log", "Not a directory"),
        (tmp_path, "Is a directory"),
    ):
        refused = check(path)
        assert (refused.returncode, refused.stderr) == (
            2,
            f"lbx: error: accesslog.path: cannot open '{path}': {reason}\n",
        )
    valid = check(tmp_path / "access.log")
    assert valid.returncode == 0 and not (tmp_path / "access.log").exists(), valid.stderr


def test_a_client_gone_before_its_response_is_499(
    lbx: Any, backends: BackendThread, tmp_path: Path
) -> None:
    """A client that closes while its request waits on the upstream: the combined line says
    499, as nginx's does (json: a null status and the downstream error)."""
    backend = backends.start("one")
    log_path = tmp_path / "access.log"
    conf = tmp_path / "lbx.yaml"
    conf.write_text(f"plugins: [roundrobin, accesslog]\naccesslog: {{path: '{log_path}'}}\n")
    proc = lbx("-c", str(conf), "--listen", "127.0.0.1:0", "--upstream", backend.address)
    host, port = proc.address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=TIMEOUT) as client:
        client.sendall(b"GET /sleep/1 HTTP/1.1\r\nHost: x\r\n\r\n")
        deadline = time.monotonic() + TIMEOUT
        while backend.sleeping < 1:  # the request waits on the backend
            assert time.monotonic() < deadline
            time.sleep(0.01)
    assert proc.stop() == 0
    [line] = log_path.read_text().splitlines()
    assert '"GET /sleep/1 HTTP/1.1" 499 0 ' in line, line


REFUSED = [
    # (what the client sends, status, method, uri) - one connection each, in this order
    (b"GET /a HTTP/1.1\r\nHost: x\r\nBad Field\r\n\r\n", 400, "GET", "/a"),
    (b"GET /rtsp RTSP/1.0\r\nHost: x\r\n\r\n", 400, "GET", "/rtsp"),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400, "", ""),
    (b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 101\r\n\r\n", 413, "POST", "/up"),
    (b"GET /" + b"a" * 100 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "GET", "/" + "a" * 100),
    (b"GET /h HTTP/1.1\r\nHost: x\r\n" + b"X-A: 1\r\n" * 6 + b"\r\n", 431, "GET", "/h"),
    (b"POST /z HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501, "POST", "/z"),
    (b"GET /v HTTP/1.2\r\nHost: x\r\n\r\n", 505, "GET", "/v"),
    (b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400, "POST", "/c"),
    (b"GET /slow HTTP/1.1\r\nHost: x\r\n", 408, "GET", "/slow"),
]


def test_refused_requests_are_logged(lbx: Any, backends: BackendThread, tmp_path: Path) -> None:
    """Requests lbx refuses while reading them get a line like any other, as nginx logs them:
    the status sent, what was read of the request line (cut at 1024 bytes), the client, and a
    downstream error; the combined format shows ``-`` when no request line was read."""
    import socket

    backend = backends.start("one")
    conf = tmp_path / "lbx.yaml"
    conf.write_text(
        "plugins: [roundrobin, accesslog]\n"
        f"accesslog: {{path: '{tmp_path / 'access.log'}', format: json}}\n"
        "services:\n"
        "  - listen: ['127.0.0.1:0']\n"
        f"    upstreams: ['{backend.address}']\n"
        "    max_request_line: 64\n    max_headers: 6\n    max_body_size: 100\n"
        "    header_timeout: 0.5\n"
    )
    proc: LbxProcess = lbx("-c", str(conf))
    host, port = proc.address.rsplit(":", 1)
    for data, status, _, _ in REFUSED:
        with socket.create_connection((host, int(port)), timeout=TIMEOUT) as sock:
            sock.sendall(data)
            answer = b""
            while b"\r\n\r\n" not in answer:
                chunk = sock.recv(65536)
                assert chunk, (data, answer)
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 %d " % status), (data, answer)
    assert get(proc.address, "/after") == 200
    assert proc.stop() == 0
    records = [json.loads(line) for line in (tmp_path / "access.log").read_text().splitlines()]
    assert len(records) == len(REFUSED) + 1
    for record, (data, status, method, uri) in zip(records, REFUSED, strict=False):
        assert (record["status"], record["method"], record["uri"]) == (status, method, uri), data
        assert record["client"] == "127.0.0.1", record
        # Refused before any phase ran, except the malformed chunk: its head went upstream.
        assert (record["upstream"] is None) is (uri != "/c"), record
        assert record["error"].startswith("downstream"), record
    assert records[-1]["status"] == 200 and records[-1]["uri"] == "/after"
