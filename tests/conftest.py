"""Fixtures of the modules that put one lbx in front of a capture upstream: such a module
defines ``shared`` (module scope, usually ``yield from lbx_in_front(...)``), and its tests take
``upstream`` and ``proxy``."""

from __future__ import annotations

import pytest
from tests.http_helpers import Upstream

from lbx.testing import LbxProcess


@pytest.fixture
def upstream(shared: tuple[Upstream, LbxProcess]) -> Upstream:
    """The module's capture upstream, idle (no earlier request still arriving), with what it
    received so far forgotten."""
    server, _ = shared
    server.settle()
    return server


@pytest.fixture
def proxy(shared: tuple[Upstream, LbxProcess], upstream: Upstream) -> LbxProcess:
    """lbx in front of the capture upstream; ``proxy.address`` is where clients connect."""
    return shared[1]
