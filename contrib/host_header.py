"""Set the upstream Host header, as the Pingora quick start's ``upstream_request_filter`` does.

    lbx serve --plugin roundrobin --plugin contrib/host_header.py \
        --upstream 1.1.1.1:443 --upstream 1.0.0.1:443 --upstream-tls --sni one.one.one.one

The name comes from the environment variable ``LBX_UPSTREAM_HOST`` (default
``one.one.one.one``). For a fixed name, the service key ``host:`` does the same without a hook.
"""

from __future__ import annotations

import os
from typing import Any

from lbx import RequestHeader, Session, hookimpl

HOST = os.environ.get("LBX_UPSTREAM_HOST", "one.one.one.one")


@hookimpl
async def upstream_request_filter(
    session: Session, upstream_request: RequestHeader, ctx: dict[str, Any]
) -> None:
    upstream_request.insert_header("Host", HOST)
