"""lbx-hashing end to end: real ``lbx serve`` processes in front of real demo backends."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from tests.over_both import get

from lbx import Backend
from lbx.testing import BackendThread, DemoBackend, LbxProcess
from lbx_hashing import Consistent, FnvHash

pytestmark = pytest.mark.over_both  # the hash key is read from an HTTP/2 request's fields too

ROOT = Path(__file__).resolve().parents[3]


def served_by(address: str, path: str = "/", headers: dict[str, str] | None = None) -> str:
    """The name of the backend that answered one GET through lbx."""
    reply = get(address, path, headers=headers)
    assert reply.status == 200
    return reply.backend


def names(demos: list[DemoBackend], weights: list[int] | None = None) -> dict[Backend, str]:
    weights = weights or [1] * len(demos)
    return {Backend(d.host, d.port, w): d.name for d, w in zip(demos, weights, strict=True)}


def write_config(tmp_path: Path, plugins: str, service: str, demos: list[DemoBackend]) -> str:
    upstreams = "".join(f"\n      - {{address: '{d.address}', weight: 1}}" for d in demos)
    path = tmp_path / "lbx.yaml"
    path.write_text(
        f"version: 1\nplugins: {plugins}\nservices:\n  - name: web\n"
        f"    listen: ['127.0.0.1:0']\n{service}    upstreams:{upstreams}\n"
    )
    return str(path)


def test_plugin_consistent_on_the_command_line_just_works(
    lbx: Callable[..., LbxProcess], backends: BackendThread
) -> None:
    """``--plugin consistent`` alone is enough; with no hash_key every request hashes b""."""
    demos = [backends.start(name) for name in ("a", "b", "c")]
    args = ["--plugin", "consistent", "--listen", "127.0.0.1:0"]
    for demo in demos:
        args += ["--upstream", demo.address]
    proc = lbx(*args)
    mapping = names(demos)
    expected = mapping[next(Consistent(sorted(mapping, key=Backend.sort_key), {}).iter(b""))]
    assert {served_by(proc.address, f"/p{i}") for i in range(20)} == {expected}


def test_sticky_sessions_by_cookie(
    tmp_path: Path, lbx: Callable[..., LbxProcess], backends: BackendThread
) -> None:
    """With ``hash_key: cookie:session`` every session sticks to the backend the ring gives it."""
    demos = [backends.start(name) for name in ("a", "b", "c", "d")]
    conf = write_config(tmp_path, "[consistent]", "    hash_key: cookie:session\n", demos)
    proc = lbx("-c", conf)
    mapping = names(demos)
    ring = Consistent(sorted(mapping, key=Backend.sort_key), {})
    used = set()
    for session in range(60):
        cookie = {"Cookie": f"theme=dark; session=s{session}"}
        seen = {served_by(proc.address, f"/page/{n}", cookie) for n in range(3)}
        assert seen == {mapping[next(ring.iter(b"s%d" % session))]}
        used |= seen
    assert len(used) >= 3  # sessions spread over the backends, each one sticky


def test_fnv_chosen_by_selection_when_both_are_enabled(
    tmp_path: Path, lbx: Callable[..., LbxProcess], backends: BackendThread
) -> None:
    """With fnv and consistent enabled, ``selection: fnv`` with ``hash_key: header:X-User`` wins."""
    demos = [backends.start(name) for name in ("a", "b", "c")]
    service = "    selection: fnv\n    hash_key: header:X-User\n"
    proc = lbx("-c", write_config(tmp_path, "[fnv, consistent]", service, demos))
    mapping = names(demos)
    fnv = FnvHash(sorted(mapping, key=Backend.sort_key), {})
    for user in range(30):
        chosen = served_by(proc.address, "/", {"X-User": f"user{user}"})
        assert chosen == mapping[next(fnv.iter(b"user%d" % user))]
