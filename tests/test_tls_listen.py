"""TLS termination: certificates by SNI, modern defaults, mTLS, reload without a restart."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest
import trustme


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


def write_pair(ca: trustme.CA, directory: Path, stem: str, *names: str) -> tuple[Path, Path]:
    cert = ca.issue_cert(*names)
    cert_file, key_file = directory / f"{stem}.pem", directory / f"{stem}.key"
    cert.private_key_pem.write_to_path(str(key_file))
    cert_file.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    return cert_file, key_file


def write_conf(tmp_path: Path, upstream: str, pairs: list[tuple[Path, Path]], **extra: str) -> Path:
    certificates = "".join(f"      - {{cert: {c}, key: {k}}}\n" for c, k in pairs)
    extras = "".join(f"    {key}: {value}\n" for key, value in extra.items())
    path = tmp_path / "conf.yaml"
    path.write_text(
        "plugins: [roundrobin]\nservices:\n"
        "  - listen: ['127.0.0.1:0']\n"
        "    tls_listen: ['127.0.0.1:0']\n"
        f"    upstreams: ['{upstream}']\n"
        f"    certificates:\n{certificates}{extras}"
    )
    return path


def handshake(
    address: str, ca: trustme.CA, name: str | None, client_cert: Path | None = None
) -> tuple[str, list[str], bytes]:
    """TLS-connect as ``name``; returns (TLS version, certificate DNS names, response)."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    context.check_hostname = False  # the test looks at which certificate came back itself
    if client_cert is not None:
        context.load_cert_chain(str(client_cert))
    host, port = address.rsplit(":", 1)
    with (
        socket.create_connection((host, int(port)), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=name) as tls,
    ):
        names = [value for kind, value in tls.getpeercert().get("subjectAltName", ())]
        tls.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
        return tls.version() or "", names, data


def test_each_sni_name_gets_its_certificate_over_tls13(lbx, backends, ca, tmp_path):
    """Two SNI names get their own certificate over TLS 1.3; an unknown name the default one."""
    a = backends.start("a")
    pairs = [write_pair(ca, tmp_path, "a", "a.test"), write_pair(ca, tmp_path, "b", "b.test")]
    proc = lbx("-c", str(write_conf(tmp_path, a.address, pairs)))
    _, tls_address = proc.addresses
    for name in ("a.test", "b.test"):
        version, names, response = handshake(tls_address, ca, name)
        assert version == "TLSv1.3"
        assert names == [name]
        assert response.startswith(b"HTTP/1.1 200") and b"Hello from backend a" in response
    assert handshake(tls_address, ca, "other.test")[1] == ["a.test"]  # the default certificate
    assert handshake(tls_address, ca, None)[1] == ["a.test"]


def test_the_status_endpoint_names_tls_listeners_with_their_bound_ports(
    lbx, backends, ca, tmp_path
):
    """``/status`` lists a TLS listener under ``tls_listen`` at the port it was bound to, and
    ``lbx status`` shows it as ``(TLS)`` in the service's heading."""
    a = backends.start("a")
    sock = tmp_path / "status.sock"
    conf = write_conf(tmp_path, a.address, [write_pair(ca, tmp_path, "a", "a.test")])
    conf.write_text(
        conf.read_text().replace("plugins: [roundrobin]", "plugins: [roundrobin, status]")
        + f"status: {{listen: 'unix:{sock}'}}\n"
    )
    proc = lbx("-c", str(conf))
    plain, tls_address = proc.addresses
    status = subprocess.run(
        [sys.executable, "-m", "lbx", "status", "--socket", str(sock), "--json"],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    service = json.loads(status.stdout)["services"][0]
    assert (service["listen"], service["tls_listen"]) == ([plain], [tls_address])
    table = subprocess.run(
        [sys.executable, "-m", "lbx", "status", "--socket", str(sock)],
        capture_output=True, text=True, timeout=30, check=True,
        env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    assert f"listen {plain}, {tls_address} (TLS); roundrobin" in table.stdout


def test_unknown_name_can_be_rejected(lbx, backends, ca, tmp_path):
    """unknown_sni: reject fails the handshake for names no certificate carries."""
    a = backends.start("a")
    pairs = [write_pair(ca, tmp_path, "a", "a.test")]
    proc = lbx("-c", str(write_conf(tmp_path, a.address, pairs, unknown_sni="reject")))
    tls_address = proc.addresses[1]
    assert handshake(tls_address, ca, "a.test")[1] == ["a.test"]
    with pytest.raises(ssl.SSLError):
        handshake(tls_address, ca, "other.test")


def test_old_protocols_are_refused(lbx, backends, ca, tmp_path):
    """TLS 1.1 and older are refused (modern defaults: TLS 1.2+)."""
    a = backends.start("a")
    proc = lbx(
        "-c", str(write_conf(tmp_path, a.address, [write_pair(ca, tmp_path, "a", "a.test")]))
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(context)
    with warnings.catch_warnings():  # asking for TLS 1.1 is deprecated: that is the point
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    host, port = proc.addresses[1].rsplit(":", 1)
    with (
        socket.create_connection((host, int(port)), timeout=10) as raw,
        pytest.raises(ssl.SSLError),
    ):
        context.wrap_socket(raw, server_hostname="a.test")


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_negotiates_tls13_with_the_right_certificate(lbx, backends, ca, tmp_path):
    """curl, with the test CA, verifies each name's certificate and gets the backend's answer."""
    a = backends.start("a")
    pairs = [write_pair(ca, tmp_path, "a", "a.test"), write_pair(ca, tmp_path, "b", "b.test")]
    proc = lbx("-c", str(write_conf(tmp_path, a.address, pairs)))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    port = proc.addresses[1].rsplit(":", 1)[1]
    for name in ("a.test", "b.test"):
        result = subprocess.run(
            [
                "curl",
                "-sS",
                "--cacert",
                str(tmp_path / "ca.pem"),
                "--resolve",
                f"{name}:{port}:127.0.0.1",
                "-w",
                "\n%{ssl_verify_result}",
                "-v",
                f"https://{name}:{port}/",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("Hello from backend a")
        assert result.stdout.endswith("\n0")  # certificate verified
        assert "TLSv1.3" in result.stderr
        assert f'subjectAltName: host "{name}" matched' in result.stderr


def test_client_certificates_required(lbx, backends, ca, tmp_path):
    """client_cert: required refuses clients without a certificate from client_ca."""
    a = backends.start("a")
    pairs = [write_pair(ca, tmp_path, "a", "a.test")]
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    client = ca.issue_cert("client@example.test")
    client.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "client.pem"))
    conf = write_conf(
        tmp_path, a.address, pairs, client_ca=str(tmp_path / "ca.pem"), client_cert="required"
    )
    proc = lbx("-c", str(conf))
    tls_address = proc.addresses[1]
    assert handshake(tls_address, ca, "a.test", tmp_path / "client.pem")[2].startswith(
        b"HTTP/1.1 200"
    )
    try:  # TLS 1.3: the client learns of the refusal after its side of the handshake
        answer = handshake(tls_address, ca, "a.test")[2]
    except (ssl.SSLError, ConnectionResetError):
        answer = b""
    assert not answer.startswith(b"HTTP"), answer


def test_certificates_reload_without_failed_requests(lbx, backends, ca, tmp_path):
    """New certificate files on disk serve new connections within seconds; no request fails."""
    a = backends.start("a")
    cert_file, key_file = write_pair(ca, tmp_path, "a", "a.test", "old.a.test")
    proc = lbx("-c", str(write_conf(tmp_path, a.address, [(cert_file, key_file)])))
    tls_address = proc.addresses[1]
    assert handshake(tls_address, ca, "a.test")[1] == ["a.test", "old.a.test"]
    errors: list[str] = []
    served = 0
    stop = threading.Event()

    def load() -> None:
        nonlocal served
        context = ssl.create_default_context()
        ca.configure_trust(context)
        context.check_hostname = False
        host, port = tls_address.rsplit(":", 1)
        while not stop.is_set():
            conn = http.client.HTTPSConnection(host, int(port), timeout=10, context=context)
            try:
                conn.request("GET", "/")
                if conn.getresponse().status != 200:
                    errors.append("status")
                served += 1
            except Exception as exc:
                errors.append(repr(exc))
            finally:
                conn.close()

    worker = threading.Thread(target=load)
    worker.start()
    try:
        new_cert, new_key = write_pair(ca, tmp_path / "..", "a-new", "a.test", "new.a.test")
        # Replace both files atomically, as certificate managers do (rename over the old ones).
        shutil.copy(new_key, tmp_path / "key.tmp")
        shutil.copy(new_cert, tmp_path / "cert.tmp")
        (tmp_path / "key.tmp").replace(key_file)
        (tmp_path / "cert.tmp").replace(cert_file)
        started = time.monotonic()
        proc.wait_for("certificates reloaded", timeout=10)
        names = handshake(tls_address, ca, "a.test")[1]
        print(f"reload: new certificate served after {time.monotonic() - started:.2f}s")
        assert names == ["a.test", "new.a.test"]
    finally:
        stop.set()
        worker.join(30)
    assert errors == [] and served > 0


def test_mismatched_key_is_a_clear_config_error(ca, tmp_path):
    """A key that does not belong to the certificate: one line naming the files, exit 2."""
    cert_file, _ = write_pair(ca, tmp_path, "a", "a.test")
    _, other_key = write_pair(ca, tmp_path, "b", "b.test")
    conf = write_conf(tmp_path, "127.0.0.1:9", [(cert_file, other_key)])
    result = subprocess.run(
        [sys.executable, "-m", "lbx", "serve", "-t", "-c", str(conf)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert "certificates" in lines[0] and "does not belong" in lines[0] and "conf.yaml:" in lines[0]


def test_missing_certificate_file_is_a_clear_config_error(tmp_path):
    """A certificate file that does not exist: one line naming it, exit 2."""
    conf = write_conf(tmp_path, "127.0.0.1:9", [(tmp_path / "nope.pem", tmp_path / "nope.key")])
    result = subprocess.run(
        [sys.executable, "-m", "lbx", "serve", "-t", "-c", str(conf)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "nope.pem: no such file" in result.stderr


def test_upstream_learns_the_client_used_https(lbx, backends, ca, tmp_path):
    """Requests that came over TLS reach the upstream with X-Forwarded-Proto: https."""
    import json

    a = backends.start("a")
    proc = lbx(
        "-c", str(write_conf(tmp_path, a.address, [write_pair(ca, tmp_path, "a", "a.test")]))
    )
    plain, tls_address = proc.addresses
    context = ssl.create_default_context()
    ca.configure_trust(context)
    host, port = tls_address.rsplit(":", 1)
    conn = http.client.HTTPSConnection(host, int(port), timeout=10, context=context)
    context.check_hostname = False
    conn.request("GET", "/echo", headers={"X-Forwarded-Proto": "spoofed"})
    seen = json.loads(conn.getresponse().read())["headers"]
    conn.close()
    assert [v for k, v in seen if k.lower() == "x-forwarded-proto"] == ["https"]
    host, port = plain.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("GET", "/echo", headers={"X-Forwarded-Proto": "https"})
    seen = json.loads(conn.getresponse().read())["headers"]
    conn.close()
    assert [v for k, v in seen if k.lower() == "x-forwarded-proto"] == ["http"]


def test_a_silent_tls_client_does_not_hold_up_a_graceful_stop(lbx, backends, ca, tmp_path):
    """A client that opened a TLS connection and never sent its ClientHello: SIGTERM still
    stops lbx at once (its handshake is not waited for), well inside a 60 s grace period."""
    a = backends.start("a")
    pairs = [write_pair(ca, tmp_path, "a", "a.test")]
    conf = write_conf(tmp_path, a.address, pairs)
    conf.write_text("grace_period_seconds: 60\n" + conf.read_text())
    proc = lbx("-c", str(conf), env={"LBX_LOG": "debug"})
    _, tls_address = proc.addresses
    host, port = tls_address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as silent:
        assert handshake(tls_address, ca, "a.test")[2].startswith(b"HTTP/1.1 200")
        proc.send_signal(signal.SIGTERM)
        proc.wait_for(r"stopped accepting; waiting up to 60s for 0 open connections")
        assert proc.wait(timeout=30) == 0
        assert silent.recv(1) == b""  # closed with the process, never answered
