"""Upstream TLS end to end: lbx in front of a local TLS backend whose certificate comes from a
test CA (trustme).

It works with ``ca_file`` (the server key); without it, or with an SNI the certificate does not
name, the handshake fails and the client gets a 502 (empty body, ``Cache-Control: private,
no-store``) while lbx keeps serving. ``verify_cert: false`` is the documented escape hatch.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import ssl
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest
import trustme

from lbx.testing import BackendThread, DemoBackend, LbxProcess, pattern_bytes

TIMEOUT = 20.0
SERVER_NAME = "backend.test"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    """A test certificate authority, unknown to the system trust store."""
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> Path:
    """The test CA's certificate as a PEM file."""
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture
def tls_backend(ca: trustme.CA, backends: BackendThread) -> DemoBackend:
    """A DemoBackend speaking TLS with a certificate for backend.test (and 127.0.0.1)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(SERVER_NAME, "127.0.0.1").configure_cert(context)
    return backends.start("tls", ssl_context=context)


def write_config(
    tmp_path: Path, backend: DemoBackend, ca_file: Path | None, **service: object
) -> Path:
    """A YAML config with one TLS service in front of ``backend``; ``service`` overrides keys."""
    keys: dict[str, object] = {"tls": "true", "sni": SERVER_NAME, **service}
    lines = ["version: 1"]
    if ca_file is not None:
        lines.append(f"ca_file: {json.dumps(str(ca_file))}")
    lines += [
        "plugins: [roundrobin]",
        "services:",
        "  - name: tls",
        "    listen: 127.0.0.1:0",
        f"    upstreams: [{json.dumps(backend.address)}]",
    ]
    lines += [f"    {key}: {value}" for key, value in keys.items()]
    path = tmp_path / "lbx.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def connect(process: LbxProcess) -> http.client.HTTPConnection:
    host, _, port = process.address.rpartition(":")
    return http.client.HTTPConnection(host, int(port), timeout=TIMEOUT)


def get(conn: http.client.HTTPConnection, path: str) -> tuple[int, http.client.HTTPMessage, bytes]:
    conn.request("GET", path, headers={"Host": "front.test"})
    response = conn.getresponse()
    return response.status, response.headers, response.read()


def assert_echo_arrived(process: LbxProcess, backend: DemoBackend) -> None:
    """GET /echo through lbx is answered by the TLS backend, which saw the request."""
    before = backend.requests
    with closing(connect(process)) as conn:
        status, headers, body = get(conn, "/echo?via=tls")
    assert status == 200, process.output
    assert headers["X-Backend"] == "tls"
    echo = json.loads(body)
    assert echo["method"] == "GET"
    assert echo["target"] == "/echo?via=tls"
    assert ["Host", "front.test"] in echo["headers"]
    assert backend.requests == before + 1


def assert_502_and_alive(process: LbxProcess, backend: DemoBackend, sni: str) -> None:
    """The handshake fails: a bare 502, logged, and lbx answers the next requests too."""
    start = len(process.lines)
    with closing(connect(process)) as conn:
        status, headers, body = get(conn, "/")
        assert status == 502, process.output
        assert body == b""
        assert headers["Content-Length"] == "0"
        assert headers["Cache-Control"] == "private, no-store"
        process.wait_for(
            rf"Fail to proxy: upstream TLSHandshakeFailure .*\(sni '{sni}'\) failed.*status: 502",
            start=start,
        )
        # An upstream failure does not cost the client its connection: it is answered again.
        status, headers, body = get(conn, "/echo")
        assert (status, body) == (502, b"")
    with closing(connect(process)) as conn:
        status, headers, body = get(conn, "/status/204")
        assert (status, body) == (502, b"")
        assert headers["Cache-Control"] == "private, no-store"
    assert backend.requests == 0, "no request may reach an unverified backend"
    assert process.proc is not None and process.proc.poll() is None


def test_tls_upstream_with_ca_file(
    tmp_path: Path, ca_file: Path, tls_backend: DemoBackend, lbx: Callable[..., LbxProcess]
) -> None:
    """With the test CA as ca_file and sni backend.test, requests reach the TLS backend."""
    process = lbx("-c", str(write_config(tmp_path, tls_backend, ca_file)))
    assert_echo_arrived(process, tls_backend)
    with closing(connect(process)) as conn:
        status, headers, body = get(conn, "/")
        assert (status, body) == (200, b"Hello from backend tls\n")
        assert headers["X-Backend"] == "tls"
        status, _, body = get(conn, "/bytes/100000")
        assert status == 200
        assert body == pattern_bytes(100000)
    # One verified TLS connection, kept in lbx's pool, carried all three requests.
    assert len(tls_backend.connections) == 1


def test_tls_upstream_from_command_line(
    tmp_path: Path, ca_file: Path, tls_backend: DemoBackend, lbx: Callable[..., LbxProcess]
) -> None:
    """--upstream-tls --sni with ca_file from the config reach the TLS backend."""
    conf = tmp_path / "ca-only.yaml"
    conf.write_text(f"version: 1\nca_file: {json.dumps(str(ca_file))}\n")
    process = lbx(
        "-c", str(conf),
        "--plugin", "roundrobin",
        "--listen", "127.0.0.1:0",
        "--upstream", tls_backend.address,
        "--upstream-tls",
        "--sni", SERVER_NAME,
    )  # fmt: skip
    assert_echo_arrived(process, tls_backend)


def test_tls_upstream_without_ca_file_is_502(
    tmp_path: Path, tls_backend: DemoBackend, lbx: Callable[..., LbxProcess]
) -> None:
    """Without ca_file the test CA is not trusted: 502, and lbx keeps answering."""
    process = lbx("-c", str(write_config(tmp_path, tls_backend, None)))
    assert_502_and_alive(process, tls_backend, SERVER_NAME)


def test_tls_upstream_wrong_sni_is_502(
    tmp_path: Path, ca_file: Path, tls_backend: DemoBackend, lbx: Callable[..., LbxProcess]
) -> None:
    """An SNI the certificate does not name (other.test) fails verification: 502."""
    process = lbx("-c", str(write_config(tmp_path, tls_backend, ca_file, sni="other.test")))
    assert_502_and_alive(process, tls_backend, "other.test")


def test_tls_upstream_wrong_sni_without_hostname_check(
    tmp_path: Path, ca_file: Path, tls_backend: DemoBackend, lbx: Callable[..., LbxProcess]
) -> None:
    """verify_hostname: false accepts a CA-signed certificate that does not name the SNI."""
    path = write_config(tmp_path, tls_backend, ca_file, sni="other.test", verify_hostname="false")
    process = lbx("-c", str(path))
    assert_echo_arrived(process, tls_backend)


def test_tls_upstream_verify_cert_false_without_ca_file(
    tmp_path: Path, tls_backend: DemoBackend, lbx: Callable[..., LbxProcess]
) -> None:
    """verify_cert: false, the documented escape hatch, connects without ca_file: 200."""
    process = lbx("-c", str(write_config(tmp_path, tls_backend, None, verify_cert="false")))
    assert_echo_arrived(process, tls_backend)


def test_tls_upstream_streams_bodies(
    tmp_path: Path, ca_file: Path, tls_backend: DemoBackend, lbx: Callable[..., LbxProcess]
) -> None:
    """Over verified TLS, a close-delimited 10 MiB download and a chunked upload pass intact."""
    size = 10 * 1024 * 1024
    expected = pattern_bytes(size)
    process = lbx("-c", str(write_config(tmp_path, tls_backend, ca_file)))
    with closing(connect(process)) as conn:
        # The end of a close-delimited body is the upstream's TLS close; lbx re-frames it chunked.
        conn.request("GET", f"/bytes/{size}?close=1")
        response = conn.getresponse()
        assert response.status == 200
        assert response.getheader("Transfer-Encoding") == "chunked"
        assert response.read() == expected
        pieces = (expected[i : i + 256 * 1024] for i in range(0, size, 256 * 1024))
        conn.request("POST", "/echo", body=pieces, encode_chunked=True)
        response = conn.getresponse()
        assert response.status == 200
        echo = json.loads(response.read())
    assert echo["body_size"] == size
    assert echo["body_sha256"] == hashlib.sha256(expected).hexdigest()
    assert ["Transfer-Encoding", "chunked"] in echo["headers"]
