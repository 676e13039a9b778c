"""Routes /pinned/* to the backend in LBX_TEST_PIN; returns None (defers) for anything else."""

import os

from lbx import Peer, hookimpl


@hookimpl
async def upstream_peer(session, ctx):
    if session.req_header.path.startswith("/pinned/"):
        return Peer(os.environ["LBX_TEST_PIN"])
    return None
