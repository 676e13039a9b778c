"""Run an end-to-end test of hooks over HTTP/1.1, then again over HTTP/2, with the same body.

A test marked ``@pytest.mark.over_both`` runs twice (``[1.1]`` and ``[2]``): the ``lbx``
fixture (overridden in the repository's ``conftest.py``) starts lbx as the test says, and in the
``[2]`` run its services also have ``h2c: true`` (HTTP/2 by prior knowledge on the plaintext
listeners). ``get`` then speaks HTTP/2 (httpx) to such an lbx and HTTP/1.1 to any other, so a
test that asks with ``get`` is the same test over both versions: what it checks is what a hook
did, never how HTTP/1.1 frames it.
"""

from __future__ import annotations

import http.client
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from lbx.testing import LbxProcess, http_connection, http_get

VERSIONS = ["1.1", "2"]

HTTP2_ADDRESSES: set[str] = set()
"""Where an lbx started by an ``over_both`` test's ``[2]`` run listens."""


@dataclass
class Answer:
    """One response as ``get`` returns it (``headers`` looks names up in any case)."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    http_version: str

    @property
    def backend(self) -> str:
        """The name of the ``DemoBackend`` that answered (its ``X-Backend`` header)."""
        return str(self.headers.get("X-Backend", ""))

    def __iter__(self) -> Iterator[Any]:
        """``status, headers, body = get(...)``."""
        return iter((self.status, self.headers, self.body))

    def __getitem__(self, index: int) -> Any:
        """``get(...)[0]``: the status; 1, the headers; 2, the body."""
        return (self.status, self.headers, self.body)[index]


def get(
    address: str,
    path: str = "/",
    conn: http.client.HTTPConnection | None = None,
    headers: dict[str, str] | None = None,
) -> Answer:
    """One GET. Over HTTP/2 (httpx, prior knowledge, a new connection) where an ``over_both``
    test's ``[2]`` run started lbx; else HTTP/1.1 (on ``conn`` when given: keep-alive)."""
    if address in HTTP2_ADDRESSES:
        return ask(address, "GET", path, headers=headers)
    reply = http_get(address, path, headers, conn=conn)
    return Answer(reply.status, reply.headers, reply.body, "1.1")


def ask(
    address: str,
    method: str,
    path: str = "/",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Answer:
    """One request on a new connection: HTTP/2 where an ``over_both`` test's ``[2]`` run
    started lbx (httpx, prior knowledge), else HTTP/1.1 (a body goes with its length)."""
    if address in HTTP2_ADDRESSES:
        with httpx.Client(http1=False, http2=True, timeout=10) as client:
            response = client.request(
                method, f"http://{address}{path}", content=body, headers=headers
            )
        assert response.http_version == "HTTP/2"
        return Answer(response.status_code, response.headers, response.content, "2")
    conn = http_connection(address)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return Answer(response.status, response.headers, response.read(), "1.1")
    finally:
        conn.close()


def with_h2c(args: Sequence[str], directory: Path) -> list[str]:
    """``lbx serve`` arguments whose services all have ``h2c: true``: the ``-c`` file, copied
    with it, or (no file) a file of one service the command line's ``--listen`` fills in."""
    args = list(args)
    index = next((i for i, arg in enumerate(args) if arg in ("-c", "--conf")), None)
    document: dict[str, Any] = {}
    if index is not None:
        document = yaml.safe_load(Path(args[index + 1]).read_text()) or {}
        del args[index : index + 2]
    # named as the service the command line alone makes
    services = document.setdefault("services", [{"name": "default", "listen": ["127.0.0.1:0"]}])
    for service in services:
        service["h2c"] = True
    conf = directory / f"h2c-{len(list(directory.glob('h2c-*.yaml')))}.yaml"
    conf.write_text(yaml.safe_dump(document))
    return ["-c", str(conf), *args]


def lbx_over(
    start: Callable[..., LbxProcess], request: pytest.FixtureRequest
) -> Iterator[Callable[..., LbxProcess]]:
    """The ``lbx`` fixture as an ``over_both`` run needs it (see ``conftest.py``)."""
    if getattr(request, "param", "1.1") == "1.1":
        yield start
        return
    directory: Path = request.getfixturevalue("tmp_path")
    mine: list[str] = []

    def start_h2c(*args: str, **kwargs: Any) -> LbxProcess:
        proc = start(*with_h2c(args, directory), **kwargs)
        if kwargs.get("ready", True):
            HTTP2_ADDRESSES.add(proc.address)
            mine.append(proc.address)
        return proc

    yield start_h2c
    HTTP2_ADDRESSES.difference_update(mine)
