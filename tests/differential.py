"""The machinery of the differential test against nginx (tests/test_nginx_differential.py).

- ``Nginx``: nginx 1.x as a plain reverse proxy (``proxy_pass``, HTTP/1.1 and keep-alive to the
  upstream, defaults otherwise) started on 127.0.0.1 with its prefix under a temporary directory.
- ``Side``: one proxy (nginx or lbx) with its own capture upstream, so every byte an upstream
  receives is attributed to one proxy.
- ``Side.observe(data)``: send ``data`` over a new connection and return an ``Outcome``: what the
  client read (responses, whether the proxy closed), what the upstream received (the exact bytes,
  parsed strictly with httptools), and the classification ``refused`` / ``forwarded`` /
  ``closed``.
- ``contract(data, reference, nginx, lbx)``: the rules lbx breaks on one input (with
  ``canonical_problems``: what is wrong with a request lbx forwarded).
- ``differences(category, data, nginx, lbx)``: the classes where nginx and lbx differ.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httptools
from tests.http_helpers import Request, Upstream, UpstreamConn
from tests.request_gen import Reference

from lbx.http import HOP_BY_HOP

NGINX = shutil.which("nginx") or next(
    (path for path in ("/usr/sbin/nginx", "/usr/local/nginx/sbin/nginx") if Path(path).exists()),
    None,
)
NGINX_MISSING = "nginx is not installed (apt-get install nginx): there is nothing to compare with"

# The marker of an answer that came from a capture upstream (anything else is the proxy's own).
MARKER = b"X-Capture"

NGINX_CONFIG = """
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    upstream capture {{
        server {upstream};
        keepalive 16;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://capture;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Nginx:
    """nginx in front of ``upstream`` (``host:port``), on 127.0.0.1:<a free port>."""

    def __init__(self, prefix: Path, upstream: str) -> None:
        assert NGINX is not None, NGINX_MISSING
        (prefix / "tmp").mkdir(parents=True)
        self.prefix = prefix
        port = free_port()
        self.address = f"127.0.0.1:{port}"
        conf = NGINX_CONFIG.format(prefix=prefix, upstream=upstream, port=port)
        (prefix / "nginx.conf").write_text(conf)
        self.proc = subprocess.Popen(
            [NGINX, "-e", "stderr", "-p", str(prefix), "-c", "nginx.conf", "-g", "daemon off;"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        while True:
            if self.proc.poll() is not None:
                stderr = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"nginx exited with {self.proc.returncode}: {stderr}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise
                time.sleep(0.02)  # nginx gives no readiness signal: poll its port, bounded

    def log_tail(self, offset: int = 0) -> str:
        """nginx's error log from byte ``offset`` (why it refused a request, at level info)."""
        with contextlib.suppress(OSError), (self.prefix / "error.log").open("rb") as log:
            log.seek(offset)
            return log.read().decode("latin-1")
        return ""

    def log_size(self) -> int:
        try:
            return (self.prefix / "error.log").stat().st_size
        except OSError:
            return 0

    def stop(self) -> None:
        """Stop this nginx by its pid (SIGTERM, then SIGKILL) and reap it."""
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


# -- the client side ------------------------------------------------------------------------------


@dataclass
class Answer:
    """One response as the client read it."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    complete: bool

    def get(self, name: str) -> bytes | None:
        key = name.lower().encode()
        for n, v in self.headers:
            if n.lower() == key:
                return v
        return None

    @property
    def own(self) -> bool:
        """Answered by the proxy itself (no capture upstream marker)."""
        return self.get(MARKER.decode()) is None

    @property
    def closes(self) -> bool:
        value = self.get("Connection")
        return value is not None and b"close" in value.lower()


def parse_answers(data: bytes, method: bytes) -> tuple[list[Answer], bytes]:
    """The responses in ``data`` (1xx skipped), and the bytes that are not a response."""
    answers = []
    while data:
        if not data.startswith(b"HTTP/"):
            return answers, data
        head, sep, rest = data.partition(b"\r\n\r\n")
        if not sep:
            return answers, data
        lines = head.split(b"\r\n")
        try:
            status = int(lines[0].split(b" ")[1])
        except (IndexError, ValueError):
            return answers, data
        headers = [
            (n.strip(), v.strip()) for n, _, v in (line.partition(b":") for line in lines[1:])
        ]
        answer = Answer(status, headers, b"", True)
        if 100 <= status < 200:
            data = rest
            continue
        length = answer.get("Content-Length")
        chunked = b"chunked" in (answer.get("Transfer-Encoding") or b"").lower()
        if method == b"HEAD" or status in (204, 304):
            data = rest
        elif length is not None and length.isdigit():
            size = int(length)
            answer.body, data = rest[:size], rest[size:]
            answer.complete = len(answer.body) == size
        elif chunked:
            body = b""
            while True:
                line, sep, rest = rest.partition(b"\r\n")
                try:
                    size = int(line.split(b";")[0], 16)
                except ValueError:
                    size = -1
                if not sep or size < 0 or len(rest) < size + 2:
                    answer.complete = False
                    rest = b""
                    break
                body, rest = body + rest[:size], rest[size + 2 :]
                if size == 0:
                    break
            answer.body, data = body, rest
        else:
            answer.body, data = rest, b""
        answers.append(answer)
    return answers, b""


@dataclass
class Outcome:
    """What one proxy did with one input."""

    system: str
    answers: list[Answer]
    raw: bytes  # every byte the client read
    closed: bool  # the proxy closed (EOF or reset) without the client closing first
    reset: bool
    half_closed: bool  # the client had to half-close to get to an end
    requests: list[Request]  # as the upstream parsed them (heads; ``complete`` for whole ones)
    upstream_raw: bytes
    upstream_error: str | None  # the strict parser's error on the upstream's bytes
    log: str = ""  # the proxy's log lines for this input (nginx's error log, lbx's output)

    @property
    def first(self) -> Answer | None:
        return self.answers[0] if self.answers else None

    @property
    def complete_requests(self) -> list[Request]:
        return [r for r in self.requests if r.complete]

    @property
    def kind(self) -> str:
        """``refused``: the proxy answered 4xx/5xx itself and no whole request reached its
        upstream; ``forwarded``: a whole request reached the upstream; else ``closed`` (no
        answer, nothing whole upstream) or ``other``."""
        if self.complete_requests or self.upstream_error not in (None, "upgrade"):
            return "forwarded"
        first = self.first
        if first is not None and first.own and first.status >= 400:
            return "refused"
        if first is None:
            return "closed"
        return "other"

    def summary(self) -> str:
        first = self.first
        answer = (
            f"{first.status}{'' if first.own else ' (upstream)'}"
            f"{' Connection: close' if first.closes else ''}"
            if first is not None
            else (f"non-HTTP bytes {self.raw[:60]!r}" if self.raw else "no answer")
        )
        error = f", parse error {self.upstream_error}" if self.upstream_error else ""
        closing = "closed" if self.closed else ("half-closed by us" if self.half_closed else "open")
        return (
            f"{self.system}: {self.kind}: {answer}, {closing}, "
            f"{len(self.complete_requests)} whole request(s) upstream "
            f"({len(self.requests)} heads{error}), upstream bytes {self.upstream_raw!r}"
        )


def capture_answer(conn: UpstreamConn, request: Request) -> None:
    """The capture upstream's answer: ``200 ok`` with the marker. An Upgrade request (which
    leaves httptools in upgrade mode) gets ``Connection: close`` and the connection closes."""
    upgrade = request.get("Upgrade") is not None
    conn.send(
        b"HTTP/1.1 200 OK\r\n%s: yes\r\nContent-Length: 2\r\n%s\r\n%s"
        % (
            MARKER,
            b"Connection: close\r\n" if upgrade else b"",
            b"" if request.method == b"HEAD" else b"ok",
        )
    )
    if upgrade:
        conn.close()


class Side:
    """One proxy in front of its own capture upstream; ``log`` returns the proxy's log size and
    its text from an offset (nginx's error log, lbx's output), for the reason of a refusal."""

    def __init__(
        self,
        system: str,
        address: str,
        upstream: Upstream,
        log_size: Callable[[], int] = lambda: 0,
        log_since: Callable[[int], str] = lambda at: "",
    ) -> None:
        self.system = system
        self.address = address
        self.upstream = upstream
        self.log_size = log_size
        self.log_since = log_since
        upstream.handler = capture_answer

    def observe(self, data: bytes, *, patience: float = 0.3) -> Outcome:
        """``data`` over a new connection (see ``_exchange``), then what the upstream got."""
        upstream = self.upstream
        upstream.reset()
        upstream.handler = capture_answer
        log_at = self.log_size()
        method = data.split(b" ", 1)[0]
        raw, closed, reset, half_closed = _exchange(self.address, data, method, patience)
        # Whatever the proxy sent upstream for this input has arrived once every request begun
        # there is whole or its connection ended (the proxy answered or closed before).
        upstream.wait(
            lambda: all(
                r.complete or c.closed_by_peer.is_set() for c in upstream.conns for r in c.requests
            ),
            0.5,
        )
        time.sleep(0.01)
        conns = list(upstream.conns)
        errors = [c.error for c in conns if c.error]
        return Outcome(
            self.system,
            parse_answers(raw, method)[0],
            raw,
            closed,
            reset,
            half_closed,
            list(upstream.requests),
            upstream.raw,
            errors[0] if errors else None,
            self.log_since(log_at),
        )


def _exchange(
    address: str, data: bytes, method: bytes, patience: float
) -> tuple[bytes, bool, bool, bool]:
    """(bytes read, closed by the proxy, reset, half-closed by us).

    Waits ``patience`` seconds for the first byte of an answer; without one, half-closes and
    reads to the end. After a whole answer with ``Connection: close`` it waits for the close;
    after a keep-alive answer it waits 0.1 s (for more answers or a close), then half-closes.
    """
    host, port = address.rsplit(":", 1)
    raw = b""
    closed = reset = half_closed = False
    deadline = time.monotonic() + 5
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            reset = True
        wait = patience
        while not reset:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            sock.settimeout(min(wait, left))
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                if half_closed:
                    break
                answers, _ = parse_answers(raw, method)
                whole = bool(answers) and answers[0].complete
                if (raw and not whole) or (whole and answers[0].closes):
                    wait = 5.0  # an answer on its way, or its close
                    continue
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_WR)
                half_closed = True
                continue
            except ConnectionResetError:
                reset = True
                break
            if not chunk:
                closed = not half_closed
                break
            raw += chunk
            answers, _ = parse_answers(raw, method)
            if answers and answers[0].complete and not answers[0].closes:
                wait = 0.1
        if reset and not half_closed:
            closed = True
    return raw, closed, reset, half_closed


# -- the contract -------------------------------------------------------------------------------

# Framing, routing and forwarding fields: no field whose name folds to one of these (``_`` read as
# ``-``, leading and trailing ``_``/``-`` stripped, any case) may reach an upstream under another
# spelling, since many backends fold them (CGI/WSGI environ).
SENSITIVE_NAMES = frozenset(
    {
        b"content-length",
        b"transfer-encoding",
        b"host",
        b"connection",
        b"upgrade",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"expect",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-forwarded-port",
        b"forwarded",
        b"via",
        b"http2-settings",
        b"proxy-authorization",
    }
)
_PROTOCOL = re.compile(rb"^[^ \r\n]+ [^ \r\n]*( +)([^ /\r\n]+)/[^\r\n]*?\r?$")


def fold(name: bytes) -> bytes:
    return name.lower().replace(b"_", b"-").strip(b"-")


def lookalike(name: bytes) -> bool:
    """A name that is not a framing, routing or forwarding field but folds to one."""
    folded = fold(name)
    return folded in SENSITIVE_NAMES and folded != name.lower()


def request_line_protocol(data: bytes) -> bytes | None:
    """The protocol name the request line names (``HTTP``, ``RTSP``...), or None."""
    match = _PROTOCOL.match(data.split(b"\n", 1)[0])
    return match.group(2) if match else None


def origin_form(target: bytes) -> bytes:
    """The target lbx forwards for ``target`` (absolute-form becomes origin-form)."""
    if target[:7].lower() == b"http://" or target[:8].lower() == b"https://":
        parts = httptools.parse_url(target)
        return (parts.path or b"/") + (b"?" + parts.query if parts.query is not None else b"")
    return target


def canonical_problems(outcome: Outcome, reference: Reference) -> list[str]:
    """What is wrong with the (first) request lbx forwarded: the rules of docs/http.md and issue
    14. (How many requests went upstream is the rule on smuggling, in ``contract``.)"""
    problems = []
    if outcome.upstream_error not in (None, "upgrade"):
        problems.append(f"the upstream cannot parse it: {outcome.upstream_error}")
    if not outcome.requests:
        return problems
    request = outcome.requests[0]
    names = request.names()
    if not request.complete:
        problems.append("an incomplete request upstream")
    if names.count(b"host") != 1:
        problems.append(f"{names.count(b'host')} Host fields")
    if names.count(b"content-length") + names.count(b"transfer-encoding") > 1:
        problems.append("two framing fields")
    upgrade = request.get_all("Upgrade")
    tokens = [t.strip().lower().split(b"/")[0] for v in upgrade for t in v.split(b",")]
    if any(t != b"websocket" for t in tokens):
        problems.append(f"Upgrade names more than websocket: {upgrade}")
    allowed = {b"transfer-encoding"} | ({b"connection", b"upgrade"} if upgrade else set())
    hop = [n for n in names if (n in HOP_BY_HOP or n == b"expect") and n not in allowed]
    if hop:
        problems.append(f"hop-by-hop fields {hop}")
    alikes = [n for n, _ in request.headers if lookalike(n)]
    if alikes:
        problems.append(f"look-alike fields {alikes}")
    if request.version != "1.1":
        problems.append(f"version {request.version}")
    if reference.complete:
        if request.method != reference.method:
            problems.append(f"method {request.method!r}, the client sent {reference.method!r}")
        if request.target != origin_form(reference.url):
            problems.append(f"target {request.target!r}, the client sent {reference.url!r}")
        if request.body != reference.body:
            problems.append(f"body {request.body!r}, a strict parser reads {reference.body!r}")
    else:
        problems.append("forwarded, but a strict parser reads no whole request")
    return problems


def contract(data: bytes, reference: Reference, nginx: Outcome, lbx: Outcome) -> dict[str, str]:
    """The contract of lbx against nginx on one input: {rule: what broke it}."""
    broken = {}
    first = lbx.first
    refused_by_nginx = nginx.kind == "refused"
    # (A request a strict parser reads as incomplete, a body cut short by our half-close, is
    # neither refused nor forwarded: nginx closes such a connection without an answer too.)
    incomplete = not reference.complete and not reference.error
    if refused_by_nginx and lbx.kind not in ("refused", "forwarded") and not incomplete:
        broken["nginx refuses, lbx neither refuses nor forwards"] = f"lbx {lbx.kind}"
    if lbx.kind == "forwarded":
        problems = canonical_problems(lbx, reference)
        if problems:
            rule = "nginx refuses, lbx forwards" if refused_by_nginx else "lbx forwards"
            for problem in problems:
                key = re.sub(r"[\[:].*", "", problem).strip()
                broken[f"{rule}: {key}"] = problem
    if len(lbx.requests) > max(1, reference.heads):
        broken["lbx forwards more requests than the client sent"] = (
            f"{len(lbx.requests)} upstream, a strict parser reads {reference.heads}"
        )
    protocol = request_line_protocol(data)
    if protocol is not None and protocol != b"HTTP" and (lbx.requests or lbx.upstream_raw):
        broken["lbx forwards a request line naming another protocol"] = protocol.decode("latin-1")
    for answer in lbx.answers:
        if answer.own and answer.status >= 400 and not (answer.closes and lbx.closed):
            broken["lbx refuses without Connection: close and closing"] = (
                f"{answer.status}, Connection: {answer.get('Connection')!r}, closed {lbx.closed}"
            )
        elif answer.own and answer.status < 400:
            broken["lbx answers itself with a status below 400"] = str(answer.status)
    # A malformed chunked body (the strict parser fails in it) before any response byte (a 100
    # Continue of lbx's own is one) is answered 400 (413 for a size over the limit), not a
    # silent close. A request refused for its version (505, ``HTTP/2.0``: nginx too) never
    # reaches its body: that refusal is the answer.
    refusals = (400, 413, 505)
    answered = first is not None and first.own and first.status in refusals and first.closes
    malformed = reference.chunked and reference.body_error
    if malformed and not answered and not lbx.raw.startswith(b"HTTP/1.1 1"):
        broken["a malformed chunked body is not answered 400 with Connection: close"] = "lbx " + (
            f"answers {first.status}" if first else "closes without an answer"
        )
    return broken


# -- differences ----------------------------------------------------------------------------------

_REWRITTEN = frozenset(
    {b"host", b"content-length", b"transfer-encoding", b"x-forwarded-for", b"x-forwarded-proto"}
)


def reason(outcome: Outcome) -> str:
    """Why the proxy refused, from its log (nginx at level info, lbx at info), without the
    variable parts: the last reason logged (nginx logs each field it ignores, then what made it
    refuse, if anything)."""
    for line in reversed(outcome.log.splitlines()):
        match = re.search(r"(client sent .*?|client prematurely .*?)(?: while |, client:|$)", line)
        if match is None:
            match = re.search(r"lbx\.proxy\[\d+\]: (.*) from \S+(?: \S+)?: \d{3}$", line)
        if match is not None:
            return re.sub(r'"[^"]*"', '"..."', match.group(1))
    return ""


def coarse(outcome: Outcome) -> str:
    """What the proxy did, as compared between nginx and lbx."""
    first = outcome.first
    kind = outcome.kind
    if kind == "refused":
        assert first is not None
        return f"refuses {first.status}"
    if kind == "forwarded":
        count = len(outcome.requests)
        text = "forwards" + (f" {count} requests" if count > 1 else "")
        if outcome.upstream_error not in (None, "upgrade"):
            text += " what the upstream cannot parse"
        if first is None and outcome.raw:
            text += ", answers without a status line (HTTP/0.9)"
        return text
    if kind == "closed":
        if outcome.raw:
            return "answers without a status line (HTTP/0.9), forwards nothing"
        return "closes without an answer" + (" (once we half-close)" if outcome.half_closed else "")
    return f"answers {first.status if first else '?'} itself, forwards nothing"


def describe(outcome: Outcome) -> str:
    why = reason(outcome)
    return coarse(outcome) + (f" ({why})" if why else "")


def tags(data: bytes) -> list[str]:
    """Features of an input that explain a different outcome (besides its class)."""
    line, _, rest = data.partition(b"\n")
    head = rest.partition(b"\r\n\r\n")[0].lower()
    parts = line.rstrip(b"\r").split(b" ")
    target = parts[1] if len(parts) > 1 else b""
    found = []
    if re.search(rb"%(?![0-9A-Fa-f]{2})", target):
        found.append("bad %-escape in the target")
    if b"#" in target:
        found.append("fragment in the target")
    if parts[0] == b"TRACE":
        found.append("TRACE")
    if re.search(rb"(^|\n)host:[ \t]*\r?(\n|$)", head):
        found.append("empty Host")
    if line.endswith(b" \r") or line.endswith(b" "):
        found.append("space after the version")
    if re.search(rb"[^\r]\n", data.partition(b"\r\n\r\n")[0]):
        found.append("bare LF in the head")
    return found


def differences(category: str, data: bytes, nginx: Outcome, lbx: Outcome) -> list[str]:
    """The classes of difference between nginx and lbx on one input."""
    found = []
    labels = tags(data)
    if category == "protocol":
        line = data.split(b"\n", 1)[0].rstrip(b"\r")
        words = [word for word in line.split(b" ") if word]
        protocol = words[-1].decode("latin-1") if len(words) > 2 else "no protocol"
        labels.insert(0, protocol + (", two spaces" if b"  " in line.rstrip(b" ") else ""))
    feature = f" [{'; '.join(labels)}]" if labels else ""
    if coarse(lbx) != coarse(nginx):
        found.append(f"{category}{feature}: nginx {describe(nginx)}; lbx {describe(lbx)}")
    if nginx.kind == lbx.kind == "forwarded" and nginx.requests and lbx.requests:
        mine = {n.lower(): n for n, _ in lbx.requests[0].headers}
        its = {n.lower(): n for n, _ in nginx.requests[0].headers}
        for lower, name in sorted(mine.items()):
            if lower in its or lower in _REWRITTEN:
                continue
            if b"_" in name:
                found.append("nginx drops fields whose name has `_`; lbx forwards them")
            elif lower == b"upgrade" or lower == b"connection":
                value = lbx.requests[0].get(lower.decode())
                found.append(f"nginx never forwards {name.decode()}; lbx forwards it ({value!r})")
            elif re.search(rb"[^A-Za-z0-9-]", name):
                found.append(
                    "nginx drops names with characters other than [A-Za-z0-9-]; lbx forwards them"
                )
            else:
                found.append(f"nginx drops {name.decode()}; lbx forwards it")
        for lower, name in sorted(its.items()):
            if lower not in mine and lower not in _REWRITTEN:
                found.append(f"nginx forwards {name.decode()}; lbx drops it")
        if nginx.requests[0].body != lbx.requests[0].body:
            found.append(f"{category}: the bodies forwarded differ")
    return found
