"""lbx-etcd: a service's backends under an etcd key prefix, followed with a watch.

```yaml
discovery: {source: etcd, endpoints: [http://127.0.0.1:2379], prefix: /services/web/}
```

Every key under ``prefix`` is a backend; its value is ``ip:port`` (``name:port``,
``[v6]:port``, ``unix:/path``) or JSON ``{"address": ..., "weight": N, "enabled": false}``.
lbx reads the prefix (``/v3/kv/range``) at start, then keeps a watch on it (``/v3/watch``, a
stream that etcd pushes each change on, from the revision it read): a change reaches every lbx
watching the prefix within a round trip. The prefix is read again after each change, and every
``update_frequency`` seconds (60 by default) as a safety net. It talks to etcd's v3 JSON gateway
over httpcore (see the README for why); ``endpoints`` are tried in turn. See docs/discovery.md.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpcore

from lbx import (
    Backend,
    Config,
    Discovered,
    DiscoveryError,
    Field,
    ServiceConfig,
    backend_entry,
    hookimpl,
)

SOURCE = "etcd"
DEFAULT_UPDATE_FREQUENCY = 60.0


def _check_endpoints(value: Any) -> str | None:
    for item in value:
        parts = urlsplit(item)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return f"{item!r}: expected http://host:port or https://host:port"
    return None


KEYS = {
    "endpoints": Field(
        "str_list", ["http://127.0.0.1:2379"], "etcd's client URLs", check=_check_endpoints
    ),
    "prefix": Field("str", None, "the key prefix the backends are under (e.g. /services/web/)"),
    "timeout": Field("number", 5, "seconds a read may take", minimum=0.001),
}


HTTP_ERRORS = (httpcore.NetworkError, httpcore.TimeoutException, httpcore.ProtocolError, OSError)
"""What a request to an endpoint may raise when the endpoint is down or misbehaves."""


class EtcdError(DiscoveryError):
    """etcd could not be read, or answered something lbx cannot use."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _text(encoded: str) -> str:
    """A key or value of an etcd answer (base64; binascii.Error is a ValueError)."""
    return base64.b64decode(encoded, validate=True).decode("utf-8", "replace")


def prefix_end(prefix: bytes) -> bytes:
    """The end of the key range of ``prefix`` (etcd's ``--prefix``: the last byte plus one)."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


class EtcdDiscovery:
    """The backends under one key prefix."""

    def __init__(self, endpoints: list[str], prefix: str, timeout: float) -> None:
        self.endpoints = [endpoint.rstrip("/") for endpoint in endpoints]
        self.prefix = prefix.encode("utf-8")
        self.timeout = timeout
        self.revision = 0
        """The etcd revision of the last read: the watch starts after it."""
        self.watch_events = 0
        self._pool: httpcore.AsyncConnectionPool | None = None
        self._range = {"key": _b64(self.prefix), "range_end": _b64(prefix_end(self.prefix))}

    @property
    def pool(self) -> httpcore.AsyncConnectionPool:
        if self._pool is None:
            self._pool = httpcore.AsyncConnectionPool(max_connections=4)
        return self._pool

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        problems = []
        for endpoint in self.endpoints:
            try:
                response = await self.pool.request(
                    "POST",
                    endpoint + path,
                    content=json.dumps(body).encode(),
                    extensions={
                        "timeout": {
                            key: self.timeout for key in ("connect", "read", "write", "pool")
                        }
                    },
                )
            except HTTP_ERRORS as exc:  # the next endpoint may answer
                problems.append(f"{endpoint}: {exc!r}")
                continue
            if response.status != 200:
                problems.append(f"{endpoint}: status {response.status} {response.content[:200]!r}")
                continue
            try:
                answer: dict[str, Any] = json.loads(response.content)
            except ValueError:
                problems.append(f"{endpoint}: not JSON: {response.content[:200]!r}")
                continue
            return answer
        raise EtcdError("; ".join(problems))

    async def discover(self) -> Discovered:
        answer = await self._post("/v3/kv/range", self._range)
        try:
            revision = int(answer.get("header", {}).get("revision", 0))
            entries = [
                (_text(kv["key"]), _text(kv.get("value", ""))) for kv in answer.get("kvs", [])
            ]
        except (AttributeError, KeyError, TypeError, ValueError) as exc:  # not etcd's v3 answer
            raise EtcdError(f"a range answer lbx cannot read: {exc!r}") from None
        self.revision = revision
        backends: list[Backend] = []
        enabled: dict[str, bool] = {}
        problems = []
        for key, value in entries:
            try:
                address, weight, on = parse_value(value)
                parsed = Backend.parse(address, weight)
            except ValueError as exc:
                problems.append(f"{key}: {exc}")
                continue
            for backend in parsed:
                backends.append(backend)
                enabled[backend.addr] = on
        if problems:  # one bad key must not drop the service's backends: keep the last set
            raise EtcdError(f"revision {self.revision}: {'; '.join(problems)}")
        return Discovered(tuple(backends), enabled)

    async def watch(self, changed: Callable[[], None]) -> None:
        """Follow the prefix from the revision last read; call ``changed()`` for every change.
        Returns when the stream ends (lbx reads the prefix and watches again)."""
        request = {"create_request": {**self._range, "start_revision": str(self.revision + 1)}}
        last_error: Exception | None = None
        for endpoint in self.endpoints:
            try:
                async with self.pool.stream(
                    "POST",
                    endpoint + "/v3/watch",
                    content=json.dumps(request).encode(),
                    extensions={
                        "timeout": {
                            "connect": self.timeout,
                            "read": None,
                            "write": self.timeout,
                            "pool": self.timeout,
                        }
                    },
                ) as response:
                    if response.status != 200:
                        raise EtcdError(f"{endpoint}: watch answered {response.status}")
                    await self._follow(response, changed)
                    return
            except (*HTTP_ERRORS, EtcdError) as exc:
                last_error = exc
        raise EtcdError(f"watch: {last_error!r}")

    async def _follow(self, response: httpcore.Response, changed: Callable[[], None]) -> None:
        buffer = b""
        async for chunk in response.aiter_stream():
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                if not line.strip():
                    continue
                result = json.loads(line).get("result", {})
                if result.get("canceled") or result.get("compact_revision"):
                    changed()  # history was compacted: read everything again, watch anew
                    raise EtcdError(f"watch canceled: {result.get('cancel_reason', 'compacted')}")
                if result.get("events"):
                    self.watch_events += 1
                    changed()

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()
            self._pool = None


def parse_value(value: str) -> tuple[str, int, bool]:
    """``ip:port`` or ``{"address": ..., "weight": N, "enabled": bool}``."""
    text = value.strip()
    if not text.startswith("{"):
        return text, 1, True
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"invalid JSON: {exc}") from None
    return backend_entry(data)


def build(options: dict[str, Any], service: ServiceConfig, config: Config) -> EtcdDiscovery:
    if not options["prefix"]:
        raise ValueError("the etcd source needs a prefix (the backends' keys start with it)")
    return EtcdDiscovery(list(options["endpoints"]), options["prefix"], float(options["timeout"]))


@hookimpl
def register_discovery(register: Callable[..., None]) -> None:
    register(SOURCE, build, KEYS, DEFAULT_UPDATE_FREQUENCY)
