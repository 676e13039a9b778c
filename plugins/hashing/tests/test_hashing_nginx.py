"""lbx-hashing ``consistent`` against the judge: nginx's ``hash $arg_k consistent``.

nginx runs as a child process with a config in ``tmp_path`` in front of demo backends that name
themselves in ``X-Backend``; for thousands of keys, the backend nginx picks must be the first
candidate of lbx's ``Consistent`` built over the same backends.
"""

from __future__ import annotations

import http.client
import shutil
import socket
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from lbx import Backend
from lbx.testing import BackendThread, DemoBackend
from lbx_hashing.consistent import Consistent

NGINX = shutil.which("nginx") or next(
    (path for path in ("/usr/sbin/nginx", "/usr/local/nginx/sbin/nginx") if Path(path).exists()),
    None,
)
pytestmark = pytest.mark.skipif(
    NGINX is None, reason="nginx is not installed (apt-get install nginx) so there is no judge"
)
KEYS = 3000

CONFIG = """
worker_processes 1;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path tmp/body;
    proxy_temp_path tmp/proxy;
    fastcgi_temp_path tmp/fastcgi;
    uwsgi_temp_path tmp/uwsgi;
    scgi_temp_path tmp/scgi;
    upstream u {{
        hash $arg_k consistent;
{servers}
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{ proxy_pass http://u; }}
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def run_nginx(
    tmp_path: Path, upstreams: list[tuple[DemoBackend, int]]
) -> tuple[subprocess.Popen[bytes], int]:
    """Start nginx on a free port; returns it and the port once it accepts connections."""
    (tmp_path / "tmp").mkdir()
    servers = "\n".join(
        f"        server {demo.address} weight={weight};" for demo, weight in upstreams
    )
    port = free_port()
    (tmp_path / "nginx.conf").write_text(CONFIG.format(servers=servers, port=port))
    assert NGINX is not None
    proc = subprocess.Popen(
        [NGINX, "-e", "stderr", "-p", str(tmp_path), "-c", "nginx.conf", "-g",
         f"daemon off; pid {tmp_path / 'nginx.pid'};"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while True:
        if proc.poll() is not None:
            stderr = proc.stderr.read().decode() if proc.stderr else ""
            raise RuntimeError(f"nginx exited with {proc.returncode}: {stderr}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.02)  # nginx gives no readiness signal: poll its port, bounded


def stop_nginx(proc: subprocess.Popen[bytes]) -> None:
    """Stop this nginx by its pid (SIGTERM, then SIGKILL) and reap it."""
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
    if proc.stderr is not None:
        proc.stderr.close()


def nginx_choices(port: int, keys: list[str]) -> list[str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    names = []
    for key in keys:
        conn.request("GET", f"/?k={key}")
        response = conn.getresponse()
        response.read()
        assert response.status == 200
        names.append(response.headers["X-Backend"])
    conn.close()
    return names


@pytest.mark.parametrize(
    "weights", [(1, 1, 1, 1, 1), (1, 2, 3, 1, 5, 2, 1)], ids=["unweighted", "weighted"]
)
def test_consistent_agrees_with_nginx_on_every_key(
    tmp_path: Path, backends: BackendThread, weights: tuple[int, ...]
) -> None:
    """For 3000 keys nginx's consistent hash and lbx's ``consistent`` pick the same backend."""
    demos = [backends.start(f"b{index}") for index in range(len(weights))]
    lbx_backends = [Backend(d.host, d.port, w) for d, w in zip(demos, weights, strict=True)]
    # nginx breaks hash collisions by server order; list them in lbx's (address) order.
    order = sorted(range(len(demos)), key=lambda i: lbx_backends[i].sort_key())
    names = {lbx_backends[i]: demos[i].name for i in order}
    selector = Consistent([lbx_backends[i] for i in order], {})
    proc, port = run_nginx(tmp_path, [(demos[i], weights[i]) for i in order])
    try:
        keys = [f"key-{index}" for index in range(KEYS)]
        chosen = nginx_choices(port, keys)
    finally:
        stop_nginx(proc)
    ours = [names[next(selector.iter(key.encode()))] for key in keys]
    disagreements = [(k, n, o) for k, n, o in zip(keys, chosen, ours, strict=True) if n != o]
    assert disagreements == []
    assert len(Counter(chosen)) == len(weights)  # every backend got keys: a real comparison
