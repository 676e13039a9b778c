"""lbx-accesslog: the lines themselves (escaping, fields, JSON) and the batched writes."""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from lbx import ErrorSource, ErrorType, Headers, ProxyError, RequestHeader
from lbx_accesslog import AccessLog
from lbx_accesslog.lines import (
    FIELDS,
    CombinedFormat,
    JsonFormat,
    escape,
    field_values,
    request_fields,
)

STAMP = re.compile(r"^127\.0\.0\.1 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\] ")


def session(
    uri: str = "/index.html",
    headers: list[tuple[bytes, bytes]] | None = None,
    status: int | None = 200,
    upstream: str | None = "127.0.0.1:8001",
    answered: bool = True,
) -> Any:
    """What the formats read of a ``Session``, for a request that took 2 ms."""
    now = time.monotonic()
    raw = [(b"Host", b"example.com"), (b"User-Agent", b"curl/8.5")] if headers is None else headers
    return SimpleNamespace(
        req_header=RequestHeader("GET", uri, Headers(raw)),
        client_ip="127.0.0.1",
        service=SimpleNamespace(name="demo"),
        peer=None if upstream is None else SimpleNamespace(addr=upstream),
        response_status=status,
        body_bytes_sent=612,
        body_bytes_read=0,
        start_time=now - 0.002,
        head_time=now - 0.001 if answered else None,
        tries=1,
    )


def combined_tail(line: str) -> str:
    """The combined line after the client and time stamp (checked here)."""
    assert line.endswith("\n") and line.count("\n") == 1, line
    assert STAMP.match(line), line
    return STAMP.sub("", line)[:-1]


@pytest.mark.parametrize(
    ("text", "escaped"),
    [
        ("/plain?a=1&b=two", "/plain?a=1&b=two"),
        ('say "hi"', r"say \"hi\""),
        ("back\\slash", r"back\\slash"),
        ("tab\tnl\ncr\r", r"tab\tnl\ncr\r"),
        ("nul\x00bell\x07del\x7f", r"nul\x00bell\x07del\x7f"),
        ("caf\xc3\xa9", r"caf\xc3\xa9"),  # UTF-8 bytes as the head decodes them (latin-1)
        ("\x85\xa0", r"\x85\xa0"),
        ("snow\u2603", r"snow\xe2\x98\x83"),  # set by a hook beyond latin-1: its UTF-8 bytes
        ("", ""),
    ],
)
def test_escape_is_apaches(text: str, escaped: str) -> None:
    """Quotes and backslashes get a backslash, tab/CR/LF their C escape, other bytes \\xHH."""
    assert escape(text) == escaped
    assert escaped.isascii() and escaped.isprintable()


def test_combined_escapes_every_quoted_field() -> None:
    """Request line, Referer and User-Agent are escaped; a line stays one ASCII line."""
    raw = [
        (b"Host", b"example.com"),
        (b"Referer", b"http://example.com/caf\xc3\xa9"),
        (b"User-Agent", b'evil"\n127.0.0.1 - - [forged] \\'),
    ]
    line = CombinedFormat([])(session('/a"b\tc', raw), None)
    assert line.isascii()
    assert combined_tail(line) == (
        r'"GET /a\"b\tc HTTP/1.1" 200 612 "http://example.com/caf\xc3\xa9" '
        r'"evil\"\n127.0.0.1 - - [forged] \\"'
    )


def test_combined_without_referer_or_user_agent() -> None:
    """Missing (or empty) Referer and User-Agent are "-"; no status sent (the client went away
    first) is nginx's 499."""
    line = CombinedFormat([])(session(headers=[(b"Referer", b"")], status=None), None)
    assert combined_tail(line) == '"GET /index.html HTTP/1.1" 499 612 "-" "-"'


@pytest.mark.parametrize(
    ("method", "uri", "version", "shown"),
    [
        ("", "", "", '"-"'),
        ("GET", "/aaaa", "", '"GET /aaaa"'),
        ("GET", '/"x"', "1.0", r'"GET /\"x\" HTTP/1.0"'),
    ],
)
def test_combined_request_of_a_refused_request(
    method: str, uri: str, version: str, shown: str
) -> None:
    """A request lbx refused shows what was read of its line, ``-`` when nothing was."""
    refused = session(status=400, upstream=None, answered=False)
    refused.req_header = RequestHeader(method, uri, Headers([]), version)
    line = CombinedFormat([])(refused, None)
    assert combined_tail(line) == f'{shown} 400 612 "-" "-"'


def test_combined_extra_fields() -> None:
    """Extra fields are key=value: "-" when absent, quoted (and escaped) with a space."""
    error = ProxyError(ErrorType.CONNECT_REFUSED, ErrorSource.UPSTREAM, "nobody home")
    extra = ["upstream", "upstream_time", "total_time", "retries", "error", "host", "service"]
    line = CombinedFormat(extra)(session(upstream=None, answered=False), error)
    tail = combined_tail(line)
    assert tail.startswith('"GET /index.html HTTP/1.1" 200 612 "-" "curl/8.5" upstream=- ')
    fields = re.fullmatch(
        r'.* upstream=- upstream_time=- total_time=(\d+\.\d{6}) retries=0 error="(.*)" '
        r"host=example\.com service=demo",
        tail,
    )
    assert fields is not None, tail
    assert float(fields[1]) >= 0.002
    assert fields[2] == escape(str(error))


def test_request_fields_are_found_in_any_case_first_value_wins() -> None:
    raw = [
        (b"uSeR-aGeNt", b"first"),
        (b"Accept", b"*/*"),
        (b"User-Agent", b"second"),
        (b"REFERER", b"r"),
        (b"host", b"h"),
        (b"Referrer", b"misspelt, not Referer"),
    ]
    assert request_fields(raw) == (b"h", b"r", b"first")
    assert request_fields([]) == (None, None, None)


def test_json_line_escapes_as_json_dumps() -> None:
    """Every string is escaped as json.dumps does (ASCII only), so a line is one object."""
    uri = '/q?a="1"&b=\\&c=\x01\u2028'
    agent = b"caf\xc3\xa9\n\t"
    line = JsonFormat(list(FIELDS))(session(uri, [(b"User-Agent", agent)]), None)
    assert line.endswith("}\n") and line.count("\n") == 1 and line.isascii()
    record = json.loads(line)
    assert list(record) == list(FIELDS)
    assert record["uri"] == uri and record["user_agent"] == agent.decode("latin-1")
    assert f'"uri":{json.dumps(uri)},' in line
    assert f'"user_agent":{json.dumps(agent.decode("latin-1"))},' in line


def test_json_has_the_values_of_every_field() -> None:
    """JSON holds exactly field_values(): numbers as numbers, absent values as null."""
    error = ProxyError(ErrorType.READ_TIMEDOUT, ErrorSource.UPSTREAM, 'said "no"')
    for request in (session(), session(status=None, upstream=None, answered=False)):
        for failure in (None, error):
            record = json.loads(JsonFormat(list(FIELDS))(request, failure))
            values: dict[str, Any] = dict(
                zip(FIELDS, field_values(request, failure, record["time"]), strict=True)
            )
            # total_time goes on ticking between the two calls
            assert record.pop("total_time") >= 0.002 and values.pop("total_time")
            answered = values["upstream_time"]
            values["upstream_time"] = None if answered is None else float(answered)
            assert record == values
    record = json.loads(JsonFormat(list(FIELDS))(session(status=None, upstream=None), error))
    assert record["status"] is None and record["upstream"] is None
    assert record["error"] == str(error) and record["retries"] == 0


def test_json_fields_choose_the_keys_and_their_order() -> None:
    line = JsonFormat(["status", "uri", "status", "time"])(session(), None)
    record = json.loads(line)
    assert list(record) == ["status", "uri", "time"]
    assert record["status"] == 200 and record["uri"] == "/index.html"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4}", record["time"])


def counting_writes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Patch ``os.write``: the sizes of the writes, in order."""
    sizes: list[int] = []
    write: Callable[[int, Any], int] = os.write

    def counted(fd: int, data: Any) -> int:
        sizes.append(len(data))
        return write(fd, data)

    monkeypatch.setattr(os, "write", counted)
    return sizes


def test_lines_are_written_in_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """batch_lines lines make one write; the rest waits for the timer, which writes it."""
    path = tmp_path / "access.log"
    log = AccessLog(str(path), "combined", None, 256, 0.01)
    log.open()
    sizes = counting_writes(monkeypatch)

    async def main() -> None:
        flushed = asyncio.Event()

        def flush() -> None:
            AccessLog.flush(log)
            flushed.set()

        log.flush = flush  # type: ignore[method-assign]  # what add() and the timer call
        for _ in range(1000):
            log.add(log.format(session(), None))
        assert len(sizes) == 3 and log.lines_written == 768
        flushed.clear()  # set by the three full batches; next by the timer
        await asyncio.wait_for(flushed.wait(), 10)
        assert len(sizes) == 4 and log.lines_written == 1000

    asyncio.run(main())
    log.close()
    assert len(path.read_text().splitlines()) == 1000
