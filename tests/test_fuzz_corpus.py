"""Every input of the fuzzing corpus still holds the harness's invariants (tests/fuzz/README.md).

The corpus is what earlier fuzz runs found interesting, plus seeds for each class of hostile
input (smuggling, Upgrade lists, look-alike fields, non-HTTP request lines, malformed chunks);
replaying it in-process on each run keeps what the fuzzer once checked checked.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

FUZZ = Path(__file__).parent / "fuzz"
SEPARATOR = b"\x00--response--\x00"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@pytest.fixture(scope="module")
def harness() -> Iterator[object]:
    sys.path.insert(0, str(FUZZ))
    try:
        from harness import Harness
    finally:
        sys.path.remove(str(FUZZ))
    # The limits of fuzz_request.py.
    runner = Harness(max_request_line=256, max_header_size=1024, max_headers=16, max_body_size=4096)
    yield runner
    runner.close()


@pytest.mark.parametrize("path", sorted((FUZZ / "corpus").iterdir()), ids=lambda p: p.name[:10])
def test_corpus_input(harness, path: Path) -> None:
    data = path.read_bytes()
    if len(data) < 2:
        return
    request, _, response = data[2:].partition(SEPARATOR)
    splits = [data[0] % (len(request) + 1), data[1] % (len(request) + 1)]
    harness.run(request, response or OK, splits)
