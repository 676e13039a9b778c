#!/usr/bin/env python3
"""Atheris fuzz target: arbitrary client bytes (and upstream answers) through lbx's request path.

Run from the repository root (see README.md):
``.venv/bin/python tests/fuzz/fuzz_request.py tests/fuzz/corpus -max_total_time=600``
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent))

with atheris.instrument_imports():
    import httptools  # noqa: F401

    import lbx.connections
    import lbx.h1
    import lbx.http
    import lbx.proxy
    import lbx.request_rules
    import lbx.session
    import lbx.upstream  # noqa: F401

from harness import Harness

logging.disable(logging.CRITICAL)
HARNESS = Harness(max_request_line=256, max_header_size=1024, max_headers=16, max_body_size=4096)
SEPARATOR = b"\x00--response--\x00"


def test_one_input(data: bytes) -> None:
    if len(data) < 2:
        return
    request, _, response = data[2:].partition(SEPARATOR)
    if not response:
        response = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    # The first two bytes choose where the request is cut into reads.
    splits = [data[0] % (len(request) + 1), data[1] % (len(request) + 1)]
    HARNESS.run(request, response, splits)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
