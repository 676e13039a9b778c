"""The access-control example of docs/hooks.md blocks every spelling of ``/admin`` (issue 14,
class 5): the hook module is the documented block itself, run in a real lbx in front of the
capture upstream. The raw target still goes upstream unchanged for requests that pass.
Each spelling is asked over HTTP/1.1 and over HTTP/2 (``:path``; the listener is ``h2c``): the
hook, written for HTTP/1.1, decides the same.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.docrun import read_blocks
from tests.h2_helpers import H2Client
from tests.http_helpers import Client, Upstream, exchange, write_conf

from lbx.testing import LbxProcess

HOOKS_MD = Path(__file__).parent.parent / "docs" / "hooks.md"


def documented_guard() -> str:
    """The docs' access-control example: the block that uses ``normalized_path``."""
    (block,) = [
        b for b in read_blocks(HOOKS_MD) if "normalized_path" in b.text and "@hookimpl" in b.text
    ]
    assert "early_request_filter" in block.text
    return block.text


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    directory = tmp_path_factory.mktemp("guard")
    guard = directory / "guard.py"
    guard.write_text(documented_guard())
    server = Upstream()
    conf = write_conf(directory, [server.address], h2c=True)
    with LbxProcess("-c", conf, "--plugin", str(guard)) as process:
        yield server, process
    server.close()


@pytest.fixture(params=["1.1", "2"])
def version(request) -> str:
    """The HTTP version ``get`` speaks."""
    return request.param


def get(proxy, target: bytes, version: str = "1.1"):
    """One GET of ``target``; the answer has ``status``."""
    if version == "2":
        with H2Client(proxy.address) as client:
            return client.get(target.decode())
    with Client(proxy.address) as client:
        client.send(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        return client.read_response()


@pytest.mark.parametrize(
    "target",
    [
        b"/admin",
        b"/admin/keys",
        b"/%61dmin",
        b"/%61%64%6d%69%6e/keys",
        b"//admin",
        b"///admin/keys",
        b"/./admin",
        b"/x/../admin",
        b"/x/y/../../admin/keys",
        b"/x/y/%2E%2E/%2e%2e/admin",
        b"/x/%2e%2e/admin/",
        b"/admin%2Fkeys",
        b"/x%2F..%2Fadmin",
        b"/admin?x=1",
        b"/x//../admin",
        b"/admin;jsessionid=1",
        b"/x/..;/admin",
        b"/x%5c..%5cadmin",
    ],
)
def test_every_spelling_of_admin_is_refused(proxy, upstream, target, version):
    response = get(proxy, target, version)
    assert response.status == 403, (target, response)
    assert upstream.requests == []


@pytest.mark.parametrize(
    "target",
    [
        b"/administrator",
        b"/x/admin",
        b"/public/%61dmin",
        b"/a%20b/../ok",
        b"/Admin2",
        b"/%2561dmin",
        b"/ad;min",
    ],
)
def test_other_paths_pass_with_the_raw_target(proxy, upstream, target, version):
    """Normalisation is for the decision only: what goes upstream is the client's target."""
    response = get(proxy, target, version)
    assert response.status == 200, (target, response)
    (request,) = upstream.wait_requests(1)
    assert request.target == target


@pytest.mark.parametrize("target", [b"/../admin", b"/%2E%2E/admin", b"/x/..%2f..%2fadmin"])
def test_a_path_above_the_root_is_refused_before_any_hook(proxy, upstream, target, version):
    """Dot segments that climb above ``/`` (``%2e`` a dot, ``%2f`` a slash, as nginx reads
    them): lbx itself answers 400, as nginx does, whatever the hooks decide."""
    assert get(proxy, target, version).status == 400
    assert upstream.requests == []


@pytest.mark.parametrize("target", [b"/admin%00", b"/a%00/b", b"/%00"])
def test_nul_in_the_path_is_refused(proxy, upstream, target):
    """``%00`` in the path is refused by lbx itself (400), as nginx does; in the query: data."""
    response, closed = exchange(proxy.address, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert response.status == 400 and closed
    assert upstream.requests == []
    assert get(proxy, b"/ok?q=%00").status == 200


@pytest.mark.parametrize("target", [b"/admin%00", b"/a%00/b", b"/%00"])
def test_nul_in_the_path_is_refused_over_http2(proxy, upstream, target):
    """Over HTTP/2 the 400 answers the stream; the connection goes on."""
    with H2Client(proxy.address) as client:
        assert client.get(target.decode()).status == 400
        assert upstream.requests == []
        assert client.get("/ok?q=%00").status == 200
