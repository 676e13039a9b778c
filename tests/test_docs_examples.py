"""Every example in the docs runs: each fenced block of docs/*.md and README.md is run for real,
or listed here as not runnable with the reason.

How a page is run (``test_page_examples``): its blocks are taken in order, each by the step of
the page's ``STEPS`` list that names its language and first line, in a fresh directory with real
processes on 127.0.0.1 (``tests/docrun.py`` has the runner and its conventions):

- ``sh`` blocks: every command runs (``lbx serve`` for real until the next one, demo backends,
  ``curl``, ``kill``, ``openssl``, ``lbx status``, ...). The docs' addresses and paths are
  replaced by an explicit substitution, set up by each page's ``setup_*`` function:

  - a documented port that a command listens on (``127.0.0.1:6188``, ``0.0.0.0:6188``, the demo
    backends' ``8001``/``8002``, ``8443``...) becomes port 0, and then, everywhere, the port the
    process reported;
  - addresses that stand for backends the reader has (``10.0.0.1:8080``, Pingora's
    ``1.1.1.1:443`` with TLS) become backends the test starts on port 0 (TLS ones with a
    throw-away CA in ``SSL_CERT_FILE`` and a certificate for the documented name);
  - paths outside the working directory (``/tmp/load_balancer.pid``, ``/run/lbx.sock``, ...)
    become files in it;
  - ``127.0.0.1:343``, the quick start's dead backend, stays: nothing listens there.

  A command a page cannot run is in its ``Hooks.skip`` with the reason; one run as another
  command is in ``Hooks.translate`` (``make demo``: the command ``make -n demo`` prints).
- output blocks (no language): compared with what the command before printed (``...`` matches
  anything, pids any number), or with the output of a command the step names (``produce``).
- ``yaml`` blocks: written where the page says, checked by ``lbx serve -t`` and, when complete,
  started for real; fragments are merged into the config they belong to.
- ``python`` blocks with ``@hookimpl``: loaded as plugins (hook names, colours, arguments); the
  others run (a validator, a plugin's tests, an ``lbx`` command).
- ``skip(lang, first_line, reason)``: not runnable, with the reason.

``test_every_block_is_run_or_listed`` fails when a page has a block no step takes (a new or
changed example), and when a page of docs/ has no entry in ``PAGES``.
"""

from __future__ import annotations

import itertools
import json
import os
import pty
import re
import select
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trustme
from plugins.dns.tests.test_dns_discovery import DNSMASQ, Dnsmasq
from plugins.etcd.tests.test_etcd_discovery import ETCD, ETCDCTL, Etcd
from tests.docrun import (
    REPO,
    TIMEOUT,
    Block,
    Child,
    Command,
    Hooks,
    Places,
    Result,
    Runner,
    free_port,
    read_blocks,
)
from tests.http_helpers import Upstream, respond_with

import lbx
from lbx.plugins import load_plugin_arg
from lbx.testing import BackendThread, DemoBackend, Reply, http_get

DOCS = REPO / "docs"


# -- what a step is --------------------------------------------------------------------------


@dataclass
class Page:
    """The running state of one page: the runner, backends, and whatever the steps keep."""

    runner: Runner
    backends: BackendThread
    workdir: Path
    block: Block | None = None
    ca: trustme.CA | None = None
    keep: dict[str, object] = field(default_factory=dict)

    @property
    def r(self) -> Runner:
        return self.runner


Action = Callable[[Page, Block], None]


@dataclass
class Step:
    """How one block of a page is run: its language, the start of its first line, the action;
    ``action`` None: not runnable, for ``reason``."""

    lang: str
    first: str
    action: Action | None
    reason: str = ""


def skip(lang: str, first: str, reason: str) -> Step:
    assert reason
    return Step(lang, first, None, reason)


def custom(lang: str, first: str, action: Action) -> Step:
    return Step(lang, first, action)


def sh(
    first: str,
    hooks: Hooks | None = None,
    before: Callable[[Page], object] | None = None,
    after: Callable[[Page], object] | None = None,
) -> Step:
    """A shell block: every command runs (``hooks``: per command; ``before``/``after``: the
    block)."""

    def action(page: Page, block: Block) -> None:
        if before is not None:
            before(page)
        page.r.sh(block.text, hooks, page)
        if after is not None:
            after(page)

    return Step("sh", first, action)


def out(
    first: str,
    produce: Callable[[Page], Result | Child | None] | None = None,
    exact: bool = True,
    fix: Callable[[str], str] | None = None,
) -> Step:
    """An output block: what the last command printed (or ``produce``), see ``Runner.expect``.
    ``fix`` adjusts the documented text for a difference the test itself causes (say which)."""

    def action(page: Page, block: Block) -> None:
        text = block.text
        of = produce(page) if produce is not None else None
        page.r.expect(fix(text) if fix is not None else text, exact, of)

    return Step("", first, action)


def plugin(first: str, save_as: str | None = None, lang: str = "python") -> Step:
    """A hook module: it loads as a plugin; ``save_as``: also written there for later steps."""

    def action(page: Page, block: Block) -> None:
        if save_as is not None:
            (page.workdir / save_as).write_text(block.text, encoding="utf-8")
        load_as_plugin(block, page.workdir)

    return Step(lang, first, action)


def config(
    first: str,
    save_as: str,
    then: Callable[[Page], None] | None = None,
    check: bool = True,
) -> Step:
    """A config file: written as ``save_as``, ``lbx serve -c FILE -t`` accepts it (``check``),
    then ``then``."""

    def action(page: Page, block: Block) -> None:
        (page.workdir / save_as).write_text(block.text, encoding="utf-8")
        if check:
            page.r.command(f"lbx serve -c {save_as} -t")
        if then is not None:
            then(page)

    return Step("yaml", first, action)


def load_as_plugin(block: Block, directory: Path) -> None:
    """Load a python block as a plugin file, as ``--plugin file.py`` does."""
    stem = f"doc_{block.page.removesuffix('.md').lower()}_{block.line}"
    path = directory / "plugins-loaded" / f"{stem}.py"
    path.parent.mkdir(exist_ok=True)
    path.write_text(block.text, encoding="utf-8")
    pm = lbx.get_plugin_manager(defaults=False)
    try:
        load_plugin_arg(pm, str(path))
        assert pm.has_plugin(stem), f"{block.where}: not registered"
    finally:
        sys.modules.pop(f"lbx_plugin_file.{stem}", None)


# -- helpers the pages share -------------------------------------------------------------------


def get(page: Page, documented: str, path: str = "/", **headers: str) -> Reply:
    """GET through the real address of a documented one."""
    return http_get(page.r.address(documented), path, headers or None)


def echo_headers(page: Page, documented: str) -> dict[str, str]:
    """The headers a DemoBackend received for ``GET /echo`` (lower-case names)."""
    reply = get(page, documented, "/echo")
    assert reply.status == 200, reply
    return {k.lower(): v for k, v in json.loads(reply.body)["headers"]}


def start_in_order(page: Page, count: int) -> list[DemoBackend]:
    """Backends ``a``, ``b``, ... on ports the system hands out (bound to port 0 together, then
    taken in ascending order): lbx sorts backends by address, and the docs' round-robin order
    holds only when the ports ascend like the documented ones."""
    reserved = [socket.socket() for _ in range(count)]
    try:
        for sock in reserved:
            sock.bind(("127.0.0.1", 0))
        ports = sorted(sock.getsockname()[1] for sock in reserved)
    finally:
        for sock in reserved:
            sock.close()
    return [page.backends.start(name, port) for name, port in zip("abcdefgh", ports, strict=False)]


def local_backends(page: Page, *ports: int) -> list[DemoBackend]:
    """Backends ``a``, ``b``, ... for the documented ports (``127.0.0.1:8001``, ...)."""
    started = start_in_order(page, len(ports))
    for port, backend in zip(ports, started, strict=True):
        page.r.places.ports[port] = backend.port
    return started


def start_external(page: Page, *addresses: str) -> list[DemoBackend]:
    """Backends ``a``, ``b``, ... for documented external addresses (``10.0.0.1:8080``)."""
    started = start_in_order(page, len(addresses))
    for address, backend in zip(addresses, started, strict=True):
        page.r.places.literal[address] = backend.address
    return started


def pingora_backends(page: Page) -> None:
    """Pingora's upstreams ``1.1.1.1:443`` and ``1.0.0.1:443``: TLS backends on 127.0.0.1 with a
    certificate for ``one.one.one.one`` from a throw-away CA, trusted through ``SSL_CERT_FILE``
    (lbx verifies upstream certificates against the default trust store)."""
    page.ca = page.ca or trustme.CA()
    cert = page.ca.issue_cert("one.one.one.one")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    bundle = page.workdir / "test-ca.pem"
    page.ca.cert_pem.write_to_path(str(bundle))
    page.r.env["SSL_CERT_FILE"] = str(bundle)
    for address in ("1.1.1.1:443", "1.0.0.1:443"):
        backend = page.backends.start(address, ssl_context=context)
        page.r.places.literal[address] = backend.address


def tmp_paths(page: Page, *paths: str) -> None:
    """Absolute paths of the docs (``/tmp/x.pid``) -> the same name in the page's directory."""
    for path in paths:
        page.r.places.literal[path] = str(page.workdir / Path(path).name)


def requests_answered(page: Page, count: int, documented: str = "127.0.0.1:6188") -> list[str]:
    """``count`` GET / that must all be answered 200; the backends that answered."""
    replies = [get(page, documented) for _ in range(count)]
    assert [r.status for r in replies] == [200] * count, replies
    return [r.backend for r in replies]


def answered(count: int) -> Callable[[Page], object]:
    """After a command: ``count`` requests to the documented listen address are answered."""
    return lambda page: requests_answered(page, count)


def foreground(page: Page) -> Child:
    assert page.r.foreground is not None, "no lbx runs in the foreground"
    return page.r.foreground


def wait_log(page: Page, pattern: str, start: int = 0) -> None:
    foreground(page).wait_for(pattern, TIMEOUT, start)


def transcript(
    code: int = 0,
    exact: bool = True,
    fix: Callable[[str], str] | None = None,
    table: bool = False,
) -> Action:
    """A ``$ command`` block with its output: the command runs (exit ``code``) and prints it
    (``fix``: see ``out``; ``table``: in a terminal as wide as the documented table)."""

    def action(page: Page, block: Block) -> None:
        command, *output = block.text.splitlines()
        assert command.startswith("$ "), block.where
        command = command[2:]
        verbatim = re.search(r"\s(-t|--test)\b", command) is not None  # as Runner.command does
        if not verbatim:
            command = page.r.subst_files(page.r.subst(command), [])
        env = dict(page.r.env)
        if table:
            env["COLUMNS"] = str(len(output[0]))
        page.r.last = page.r.run(command, env, code=code)
        page.r.last.verbatim = verbatim
        text = "\n".join(output)
        page.r.expect(fix(text) if fix is not None else text, exact)

    return action


def check_error(page: Page, files: dict[str, str], command: str, code: int = 2) -> Result:
    """Write ``files``, run ``command`` (exit ``code``): the output the next block documents."""
    for name, text in files.items():
        (page.workdir / name).write_text(text, encoding="utf-8")
    return page.r.run(command, code=code)


def same_as_file(path: str, start: str = "") -> Action:
    """The block is the repository file ``path`` (from its line ``start`` on)."""

    def action(page: Page, block: Block) -> None:
        text = (REPO / path).read_text(encoding="utf-8")
        if start:
            text = text[text.index(start) :]
        assert block.text == text, f"{block.where} is not {path}"

    return action


def end_daemon_after_upgrade(page: Page) -> None:
    """``kill -QUIT $(cat PIDFILE) && lbx serve ... -d -u``: a new daemon serves."""
    old = page.keep["daemon"]
    new = int(next(iter(page.r.pid_files)).read_text())
    assert new != old, "the pid file still names the old daemon"
    assert requests_answered(page, 2)
    page.r.daemons.add(new)


def remember_daemon(page: Page) -> None:
    page.keep["daemon"] = int(next(iter(page.r.pid_files)).read_text())
    assert requests_answered(page, 2)


# -- README.md -------------------------------------------------------------------------------


def make_demo(page: Page) -> str:
    """``make demo`` installs .venv (done), then runs one lbx command: the one ``make -n demo``
    prints. demo.yaml's backends run inside lbx, so their ports must be in the file before it
    starts: 8001 and 8002 are replaced by ports that were free a moment before (bound to port 0,
    read back, released)."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    printed = subprocess.run(
        ["make", "-s", "-n", "-C", str(REPO), "demo"],
        capture_output=True,
        text=True,
        check=True,
        timeout=TIMEOUT,
    ).stdout
    first, second = sorted(free_port() for _ in range(2))
    page.r.places.ports.update({8001: first, 8002: second})
    return next(line for line in printed.splitlines() if " serve " in line)


def demo_alternates(page: Page) -> None:
    """What ``make demo`` says to try: ``curl -i http://127.0.0.1:6188/`` twice."""
    for name in ("1", "2"):
        page.r.command(Command("curl -i http://127.0.0.1:6188/", f"Hello from backend {name}"))


def setup_readme(page: Page) -> None:
    tmp_paths(page, "/tmp/load_balancer.pid", "/tmp/load_balancer_err.log")
    tmp_paths(page, "/tmp/load_balancer.sock")
    page.r.pid_files.append(page.workdir / "load_balancer.pid")
    pingora_backends(page)


def check_host(page: Page) -> None:
    """The host_header hook (or ``host:``) sets the Host the upstream sees."""
    assert echo_headers(page, "127.0.0.1:6188")["host"] == "one.one.one.one"


README_USING = Hooks(
    before={
        "lbx serve --plugin roundrobin --plugin healthcheck": lambda p: local_backends(
            p, 8001, 8002
        ),
    },
    after={
        "lbx serve --plugin roundrobin --listen 0.0.0.0:6188": check_host,
        "lbx serve -c example_conf/conf.yaml -d": remember_daemon,
        "lbx serve -c example_conf/conf.yaml": answered(2),
        "lbx serve --plugin roundrobin --plugin healthcheck": answered(4),
        "kill -QUIT": end_daemon_after_upgrade,
    },
)


README_STEPS = [
    sh(
        "make demo",
        Hooks(
            skip={"make test": "runs the linters and the whole test suite, this test included"},
            translate={"make demo": make_demo},
            after={"make demo": demo_alternates},
        ),
    ),
    sh(". .venv/bin/activate", README_USING),
    plugin("from lbx import hookimpl"),
]


# -- docs/quickstart.md ----------------------------------------------------------------------


def setup_quickstart(page: Page) -> None:
    """As README.md, plus ``<pid>``: the pid of the lbx running in the foreground."""
    setup_readme(page)
    assert_refused("127.0.0.1:343")
    page.r.places.literal["<pid>"] = lambda: str(foreground(page).pid)


def assert_refused(address: str) -> None:
    """The docs' dead backend: nothing may listen there for the examples to mean anything."""
    host, port = address.rsplit(":", 1)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((host, int(port)), timeout=5).close()


def no_request_fails(page: Page) -> None:
    """Step 2: with the default retries no request fails, a and b answer in turn, and every
    second request first tried port 343 (the log says ``retry: true`` for each)."""
    assert requests_answered(page, 6) == ["a", "b"] * 3
    refused = r"Fail to proxy: .*127\.0\.0\.1:343 refused.*tries: 1, retry: true"
    start = 0
    for _ in range(3):
        start = (
            foreground(page).lines.index(
                foreground(page).wait_for(refused, TIMEOUT, start).string, start
            )
            + 1
        )
    assert sum(bool(re.search(refused, line)) for line in foreground(page).lines) == 3


def one_in_three_fails(page: Page) -> None:
    """``max_retries: 1``: one request in three is a 502."""
    statuses = [get(page, "127.0.0.1:6188").status for _ in range(3)]
    assert sorted(statuses) == [200, 200, 502], statuses


def stop_combined_backends(page: Page) -> None:
    """The page says to stop the combined backends first; the separate ones then take the same
    addresses again (lbx checks those)."""
    page.r.stop_backends()
    page.r.reuse_ports = True


def b_goes_out(page: Page) -> None:
    """Within a second of ``kill %2`` backend b is out and every request goes to a."""
    page.r.expect_log(
        foreground(page),
        [
            page.r.subst(
                "... 127.0.0.1:8002 becomes unhealthy, tcp check failed: connection refused"
            )
        ],
        page.keep["mark"],  # type: ignore[arg-type]
    )
    assert set(requests_answered(page, 4)) == {"a"}


def mark_log(page: Page) -> None:
    page.keep["mark"] = len(foreground(page).lines)


def b_back_in(page: Page, block: Block) -> None:
    """The lines come from lbx (the last command started backend b again)."""
    page.r.last = foreground(page)
    page.r.mark = page.keep["mark"]  # type: ignore[assignment]
    page.r.expect(block.text)


def treads_error(page: Page) -> Result:
    """A misspelt key in the quick start's conf.yaml (the block above, ``threads`` at line 3)."""
    conf = page.keep["conf.yaml"]
    assert isinstance(conf, str)
    return check_error(
        page, {"conf.yaml": conf.replace("threads:", "treads:")}, "lbx serve -c conf.yaml -t"
    )


def keep_block(name: str) -> Action:
    def action(page: Page, block: Block) -> None:
        same_as_file("example_conf/conf.yaml", start="---")(page, block)
        page.keep[name] = block.text

    return action


def terminated(page: Page) -> None:
    """``kill -TERM <pid>``: lbx drains and exits 0."""
    lbx_process = foreground(page)
    assert lbx_process.wait(TIMEOUT) == 0, lbx_process.output
    lbx_process.wait_for("lbx stopped")
    page.r.foreground = None


def no_daemon_plugin(page: Page) -> Result:
    return page.r.run("lbx serve --plugin no:daemon -c example_conf/conf.yaml -d", code=2)


QUICKSTART_STEPS = [
    sh("make demo", Hooks(translate={"make demo": make_demo})),
    sh("curl -i http://127.0.0.1:6188/"),
    sh("python -m lbx.testing --listen 127.0.0.1:8001 --name a --listen 127.0.0.1:8002"),
    sh("LBX_LOG=debug lbx serve --plugin roundrobin --upstream 127.0.0.1:8001"),
    # the log below shows three requests: two more after the curl
    sh("curl 127.0.0.1:6188 -svo /dev/null", after=answered(2)),
    out("... DEBUG lbx.proxy[4242]: upstream peer is: Backend { addr: 127.0.0.1:8001"),
    sh("lbx serve --plugin roundrobin --listen 0.0.0.0:6188", after=answered(2)),
    sh("lbx serve --plugin roundrobin", after=no_request_fails),
    sh("echo 'max_retries: 1' > one-try.yaml", after=one_in_three_fails),
    out("... ERROR lbx.proxy[9448]: Fail to proxy: upstream ConnectRefused context"),
    sh(
        "lbx serve -c one-try.yaml --plugin roundrobin --plugin healthcheck",
        after=answered(4),
    ),
    out("... WARNING lbx.server[9581]: service default: 127.0.0.1:343 becomes unhealthy"),
    sh(
        "python -m lbx.testing --listen 127.0.0.1:8001 --name a &",
        Hooks(before={"kill %2": mark_log}, after={"kill %2": b_goes_out}),
        before=stop_combined_backends,
    ),
    custom(
        "",
        "... WARNING lbx.server[9581]: service default: 127.0.0.1:8002 becomes unhealthy",
        b_back_in,
    ),
    plugin("from lbx import hookimpl", save_as="hooks.py"),
    sh("lbx serve --plugin roundrobin --plugin ./hooks.py", after=check_host),
    custom("yaml", "---", keep_block("conf.yaml")),
    sh("lbx serve -c example_conf/conf.yaml", after=answered(2)),
    out("... INFO lbx.server[9823]: service load_balancer listening on 0.0.0.0:6188"),
    out("lbx: error: conf.yaml:3: treads: unknown key", produce=treads_error),
    sh("lbx serve -h"),
    out("lbx: configuration example_conf/conf.yaml is valid"),
    sh("kill -TERM <pid>", after=terminated),
    sh("lbx serve -c example_conf/conf.yaml -d", after=remember_daemon),
    sh("kill -QUIT $(cat /tmp/load_balancer.pid)", after=end_daemon_after_upgrade),
    out("lbx: error: -d/--daemon needs the daemon plugin", produce=no_daemon_plugin),
]


# -- docs/cli.md -------------------------------------------------------------------------------


def synopsis(page: Page, block: Block) -> None:
    """Every option the synopsis shows is one the command's ``-h`` lists."""
    commands: list[tuple[str, str]] = []
    for line in block.text.splitlines():
        if line.startswith(" ") and commands:  # a continuation of the line above
            commands[-1] = (commands[-1][0], commands[-1][1] + line)
            continue
        words = line.split()
        name = (
            " ".join(words[:2]) if words[1:2] in (["serve"], ["plugins"], ["reload"]) else words[0]
        )
        commands.append((name, line))
    env = {**page.r.env, "COLUMNS": "200"}
    for name, text in commands:
        options = set(re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", text))
        listed = page.r.run(f"{name} -h", env).output
        missing = sorted(option for option in options if option not in listed)
        assert not missing, f"{name} -h does not list {missing}"


def setup_cli(page: Page) -> None:
    local_backends(page, 8001, 8002)


CLI_STEPS = [
    custom("", "lbx [--version] [-h] COMMAND", synopsis),
    custom(
        "",
        "$ lbx serve --plugin roundrobin --upstream 127.0.0.1:8001 --health-check tcp",
        transcript(code=2),
    ),
    custom(
        "",
        "$ lbx serve --plugin roundrobin --lisen 127.0.0.1:6188 --upstream 127.0.0.1:8001",
        transcript(code=2),
    ),
    custom(
        "",
        "$ lbx serve --plugin roundrobin --upstream 127.0.0.1:8001 --health-chek tcp",
        transcript(code=2),
    ),
    sh("lbx serve --plugin roundrobin --plugin healthcheck", after=answered(2)),
    custom(
        "",
        "$ lbx serve -c example_conf/demo.yaml -t",
        transcript(fix=lambda text: text.replace("/path/to/", ".../")),  # the reader's checkout
    ),
    # abridged: the rows shown, in order, among the others; as wide as the documented table
    custom("", "$ lbx plugins --all", transcript(exact=False, table=True)),
]


# -- docs/configuration.md ---------------------------------------------------------------------

HOOKS_PY = '''"""The reader's hook module: marks each response, to show the file was loaded."""

from lbx import hookimpl


@hookimpl
def response_filter(upstream_response):
    upstream_response.insert_header("X-Hooks", "hooks.py")
'''


def setup_configuration(page: Page) -> None:
    start_external(page, "10.0.0.1:8080", "10.0.0.2:8080")
    tmp_paths(page, "/run/lbx.sock")


def unix_get(path: str) -> bytes:
    """GET / over a Unix socket: the raw response."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(TIMEOUT)
        sock.connect(path)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


def configuration_example(page: Page, block: Block) -> None:
    """The example config, with ``./hooks.py`` beside it: valid, and it runs as written: both
    listeners, weights 1 and 3, the ``Host`` sent upstream."""
    (page.workdir / "hooks.py").write_text(HOOKS_PY, encoding="utf-8")
    (page.workdir / "conf.yaml").write_text(block.text, encoding="utf-8")
    page.r.command("lbx serve -c conf.yaml -t")
    page.r.command("lbx serve -c conf.yaml")
    served = requests_answered(page, 8, "0.0.0.0:6188")
    assert sorted(served) == ["a", "a"] + ["b"] * 6, served
    assert echo_headers(page, "0.0.0.0:6188")["host"] == "www.example.com"
    assert get(page, "0.0.0.0:6188").headers["X-Hooks"] == "hooks.py"
    assert b"Hello from backend" in unix_get(page.r.subst("/run/lbx.sock"))


def plugin_section(page: Page, block: Block) -> None:
    """The section is demo.yaml's, and valid with its plugin enabled."""
    assert block.text in (REPO / "example_conf/demo.yaml").read_text(encoding="utf-8")
    section = "plugins: [roundrobin, contrib/demo_backends.py]\n" + block.text
    (page.workdir / "section.yaml").write_text(section, encoding="utf-8")
    page.r.command("lbx serve -c section.yaml -t --upstream 127.0.0.1:8001")


ERRORS = {
    # the start of each documented message -> a conf.yaml that produces it
    "conf.yaml:2: treads:": "version: 1\ntreads: 2\n",
    "conf.yaml:5: services[0].upstream:": (
        "version: 1\nplugins: [roundrobin]\nservices:\n"
        "  - listen: 127.0.0.1:6188\n    upstream: [127.0.0.1:8001]\n"
    ),
    "conf.yaml:5: services[0].upstreams[1].weight:": (
        "services:\n  - listen: 127.0.0.1:6188\n    upstreams:\n"
        "      - 127.0.0.1:8001\n      - {address: 127.0.0.1:8002, weight: 0}\n"
    ),
    "conf.yaml:7: services[0].connect_timeout:": (
        "version: 1\nplugins: [roundrobin]\nservices:\n  - name: web\n"
        "    listen: 127.0.0.1:6188\n    upstreams: [127.0.0.1:8001]\n    connect_timeout: 0\n"
    ),
    "conf.yaml:3: demo_backends:": (
        "version: 1\nplugins: [roundrobin]\ndemo_backends:\n  listen: [127.0.0.1:8001]\n"
    ),
}


def error_examples(page: Page, block: Block) -> None:
    """Each example is what ``lbx serve -c conf.yaml -t`` prints for a file that has the fault."""
    for line in block.text.splitlines():
        message = line.removeprefix("lbx: error: ")
        key = next((k for k in ERRORS if message.startswith(k)), None)
        assert key is not None, f"no config in ERRORS produces {line!r}"
        page.r.last = check_error(page, {"conf.yaml": ERRORS[key]}, "lbx serve -c conf.yaml -t")
        page.r.expect(line)


CONFIGURATION_STEPS = [
    custom("yaml", "---", configuration_example),
    custom("yaml", "demo_backends:", plugin_section),
    skip("", "lbx: error: FILE:LINE: PATH: MESSAGE", "the messages' format; examples follow"),
    custom("", "lbx: error: conf.yaml:2: treads", error_examples),
]


# -- docs/operations.md ------------------------------------------------------------------------

OPERATIONS_CONF = """pid_file: /tmp/lbx.pid
upgrade_sock: /tmp/lbx_upgrade.sock
error_log: /tmp/lbx.log
plugins: [roundrobin]
services:
  - listen: 127.0.0.1:6188
    upstreams: [127.0.0.1:8001]
"""


def setup_operations(page: Page) -> None:
    """The page's ``conf.yaml`` (not shown: any config; lbx's defaults for the files, written
    out), running as a daemon as "Running in the background" says."""
    local_backends(page, 8001)
    tmp_paths(page, "/tmp/lbx.pid", "/tmp/lbx_upgrade.sock", "/tmp/lbx.log")
    page.r.pid_files.append(page.workdir / "lbx.pid")
    (page.workdir / "conf.yaml").write_text(OPERATIONS_CONF, encoding="utf-8")
    page.r.command("lbx serve -c conf.yaml -d")
    remember_daemon(page)


def next_upgrade(page: Page) -> None:
    """The new daemon serves, and is the one the next upgrade replaces."""
    end_daemon_after_upgrade(page)
    remember_daemon(page)


OPERATIONS_STEPS = [
    sh(
        "kill -QUIT $(cat /tmp/lbx.pid) && lbx serve -c conf.yaml -d -u",
        Hooks(after={"kill -QUIT": next_upgrade, "lbx serve -c conf.yaml -d -u &": next_upgrade}),
    ),
    skip(
        "ini", "[Unit]", "a systemd unit: needs systemd and root (/etc/lbx, /run, /usr/local/bin)"
    ),
]


# -- docs/status.md ----------------------------------------------------------------------------


def setup_status(page: Page) -> None:
    """The endpoint's configured and default sockets are both the page's socket."""
    start_external(page, "10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080")
    socket_path = str(page.workdir / "lbx-status.sock")
    page.r.places.literal["/run/lbx/lbx-status.sock"] = socket_path
    page.r.places.literal["/tmp/lbx-status.sock"] = socket_path


def status_running(page: Page) -> None:
    """The block is a fragment without a service: lbx runs it with the shortcuts for the
    backends the commands below name."""
    page.r.command("lbx serve -c conf.yaml -t --upstream 10.0.0.1:8080 --upstream 10.0.0.2:8080")
    page.r.command("lbx serve -c conf.yaml --upstream 10.0.0.1:8080 --upstream 10.0.0.2:8080")
    requests_answered(page, 4)


def watch_in_a_terminal(page: Page) -> Result:
    """``--watch`` redraws a terminal until Ctrl-C: run in a pty (with ``--interval 0.2``, the
    documented option, to draw twice sooner) until it drew twice; SIGINT must exit 0."""
    command = page.r.subst("lbx status --socket /tmp/lbx-status.sock --watch --interval 0.2")
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(
        ["bash", "-c", f"exec {command}"],
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        cwd=page.workdir,
        env={**page.r.env, "TERM": "xterm", "COLUMNS": "160", "LINES": "40"},
    )
    os.close(terminal)
    output = b""
    backend = page.r.subst("10.0.0.2:8080").encode()
    deadline = time.monotonic() + TIMEOUT
    try:
        while output.count(backend) < 2 and time.monotonic() < deadline:
            if select.select([controller], [], [], deadline - time.monotonic())[0]:
                output += os.read(controller, 65536)
        assert output.count(backend) >= 2, output
        proc.send_signal(signal.SIGINT)
        assert proc.wait(TIMEOUT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(TIMEOUT)
        os.close(controller)
    return Result(command, 0, output.decode(errors="replace"))


def status_json(page: Page) -> None:
    assert isinstance(page.r.last, Result)
    document = json.loads(page.r.last.output)
    backends = {b["addr"]: b for b in document["services"][0]["backends"]}
    assert set(backends) == {page.r.subst("10.0.0.1:8080"), page.r.subst("10.0.0.2:8080")}
    assert document["services"][0]["requests"] >= 4


def drained(page: Page) -> None:
    """A disabled backend gets no new request."""
    assert set(requests_answered(page, 4)) == {"b"}


def both_serve(page: Page) -> None:
    assert set(requests_answered(page, 4)) == {"a", "b"}


def third_serves(page: Page) -> None:
    """A backend added at run time takes requests."""
    assert "c" in requests_answered(page, 6)


def status_table(page: Page) -> None:
    assert isinstance(page.r.last, Result)
    assert page.r.subst("10.0.0.1:8080") in page.r.last.output, page.r.last.output


def status_sample(page: Page, block: Block) -> None:
    """The documented output has the shape of a real one: the same title, a service heading in
    the same form, the same columns (its service and numbers are an example's)."""
    result = page.r.command("lbx status -c conf.yaml")
    assert isinstance(result, Result) and result.code == 0, result

    def shape(text: str) -> list[str]:
        lines = [line for line in text.splitlines() if line.strip()]
        return [
            re.sub(r"\d+", "N", lines[0].split(" at ")[0]),
            re.sub(r":.*", ":", next(line for line in lines if ": listen " in line)),
            " ".join(next(line for line in lines if line.startswith("backend ")).split()),
        ]

    documented, real = shape(block.text), shape(result.output)
    assert documented[0] == real[0] and documented[2] == real[2], (documented, real)
    assert documented[1].endswith(":") and real[1] == "default:", (documented, real)


STATUS_STEPS = [
    config("plugins: [roundrobin, status]", "conf.yaml", check=False, then=status_running),
    sh(
        "lbx status -c conf.yaml",
        Hooks(
            instead={"lbx status --socket /tmp/lbx-status.sock --watch": watch_in_a_terminal},
            after={
                "lbx status -c conf.yaml": status_table,
                "lbx status -c conf.yaml --json": status_json,
                "lbx backend disable": drained,
                "lbx backend enable": both_serve,
                "lbx backend add": third_serves,
                "lbx backend remove": both_serve,
            },
        ),
    ),
    custom("text", "lbx pid 2448 (1 worker)", status_sample),
]


# -- docs/metrics.md ---------------------------------------------------------------------------


def setup_metrics(page: Page) -> None:
    local_backends(page, 8001)
    page.r.admin[9091] = r"prometheus: metrics on http://(\S+)/metrics"


def scrape(page: Page) -> None:
    """The block has no service: lbx runs it with a shortcut. Every metric of the page's table
    is exported, with the documented buckets."""
    page.r.command("lbx serve -c conf.yaml -t --upstream 127.0.0.1:8001")
    page.r.command("lbx serve -c conf.yaml --upstream 127.0.0.1:8001")
    requests_answered(page, 3)
    reply = http_get(page.r.address("127.0.0.1:9091"), "/metrics")
    assert reply.status == 200, reply
    text = reply.body.decode()
    table = re.findall(r"^\| `(lbx_\w+)`", (DOCS / "metrics.md").read_text(), re.MULTILINE)
    assert len(table) >= 9
    missing = [name for name in table if f"\n{name}" not in text]
    assert not missing, f"not exported: {missing}\n{text}"
    assert 'le="0.0025"' in text and 'lbx_requests_total{service="default"' in text


METRICS_STEPS = [config("plugins: [roundrobin, prometheus]", "conf.yaml", check=False, then=scrape)]


# -- docs/accesslog.md -------------------------------------------------------------------------


def setup_accesslog(page: Page) -> None:
    local_backends(page, 8001)
    tmp_paths(page, "/var/log/lbx/access.log")


def access_conf(page: Page, section: str) -> Path:
    """The block has no service: the test adds the one the sample lines name (``demo``). Returns
    the access log file, emptied."""
    conf = section + (
        "services:\n  - name: demo\n    listen: 127.0.0.1:6188\n    upstreams: [127.0.0.1:8001]\n"
    )
    (page.workdir / "access.yaml").write_text(conf, encoding="utf-8")
    log_file = Path(page.r.subst("/var/log/lbx/access.log"))
    log_file.unlink(missing_ok=True)
    return log_file


def access_lines(page: Page, section: str) -> str:
    """Sends ``GET /hello?x=1`` with curl, stops lbx (which writes the buffer) and reads the
    file."""
    log_file = access_conf(page, section)
    # (No `lbx serve -t`: it runs on the documented file as is, whose /var/log/lbx may not
    # exist here, and -t checks the log's directory as a start would.)
    page.r.command("lbx serve -c access.yaml")
    page.r.command(Command("curl -s 'http://127.0.0.1:6188/hello?x=1'", "Hello from backend a"))
    assert foreground(page).stop(signal.SIGTERM, TIMEOUT) == 0
    page.r.foreground = None
    return log_file.read_text()


def accesslog_config(page: Page, block: Block) -> None:
    page.keep["section"] = block.text
    page.keep["combined"] = access_lines(page, block.text)
    as_json = re.sub(r"format: combined.*", "format: json", block.text)
    page.keep["json"] = access_lines(page, re.sub(r"\n  fields: .*", "", as_json))


def sample_values(text: str) -> str:
    """The values of one request (time, sizes, durations, curl's version) differ per run."""
    text = re.sub(r"\[\d+/\w+/\d+:[\d:]+ \+0000\]", "[...]", text)
    text = re.sub(r'" 200 \d+ "-" "curl/[\d.]+"', '" 200 ... "-" "curl/..."', text)
    text = re.sub(r'"time":"[^"]+"', '"time":"..."', text)
    return re.sub(r"(upstream_time|total_time)(\"?[=:])[\d.]+", r"\1\2...", text)


def refused_line(page: Page) -> Result:
    """The combined line of a request lbx refuses: ``GET /x RTSP/1.0`` on a raw connection."""
    log_file = access_conf(page, page.keep["section"])
    page.r.command("lbx serve -c access.yaml")
    address = page.r.subst("127.0.0.1:6188")
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET /x RTSP/1.0\r\nHost: x\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 400 ")
    assert foreground(page).stop(signal.SIGTERM, TIMEOUT) == 0
    page.r.foreground = None
    return Result("lbx", 0, log_file.read_text())


ACCESSLOG_STEPS = [
    custom("yaml", "plugins: [roundrobin, accesslog]", accesslog_config),
    out(
        "127.0.0.1 - - [30/Nov/2025:21:01:11",
        produce=lambda p: Result("lbx", 0, f"{p.keep['combined']}{p.keep['json']}"),
        fix=sample_values,
    ),
    out("127.0.0.1 - - [30/Nov/2025:21:01:12", produce=refused_line, fix=sample_values),
]


# -- docs/healthcheck.md -----------------------------------------------------------------------


def alternating(page: Page) -> None:
    """Every request succeeds, alternating between 8001 and 8002."""
    served = requests_answered(page, 4)
    assert served in (["a", "b", "a", "b"], ["b", "a", "b", "a"]), served


def healthcheck_example(page: Page) -> None:
    """The example config runs as written: both backends pass the HTTP check on the other port
    (``port: 8081``, a third backend), requests are answered."""
    page.r.command("lbx serve -c healthcheck.yaml")
    requests_answered(page, 4)
    assert not [line for line in foreground(page).lines if "becomes unhealthy" in line]
    checker = page.keep["checked"]
    assert isinstance(checker, DemoBackend) and checker.requests >= 2


def setup_healthcheck(page: Page) -> None:
    local_backends(page, 8001, 8002)
    start_external(page, "10.0.0.1:8080", "10.0.0.2:8080")
    checked = page.backends.start("health")
    page.keep["checked"] = checked
    page.r.places.literal["port: 8081"] = f"port: {checked.port}"


VALIDATED = """plugins: [roundrobin, healthcheck]
services:
  - name: web
    listen: 127.0.0.1:6188
    upstreams: [READY, NOT_READY]
    health_check: {type: http, frequency: 0.2, validator: "mymodule:check"}
"""


def validator(page: Page, block: Block) -> None:
    """The validator, on PYTHONPATH: a backend that answers ``X-Ready: yes`` is healthy, one
    that does not is out with the validator's verdict."""
    (page.workdir / "mymodule.py").write_text(block.text, encoding="utf-8")
    ready = Upstream(
        respond_with(b"HTTP/1.1 200 OK\r\nX-Ready: yes\r\nContent-Length: 2\r\n\r\nok")
    )
    page.keep["ready"] = ready
    not_ready = page.backends.start("not-ready")
    conf = VALIDATED.replace("NOT_READY", not_ready.address).replace("READY", ready.address)
    (page.workdir / "validated.yaml").write_text(conf, encoding="utf-8")
    page.r.env["PYTHONPATH"] = os.pathsep.join(
        [str(page.workdir), page.r.env.get("PYTHONPATH", "")]
    )
    page.r.command("lbx serve -c validated.yaml -t")
    page.r.command("lbx serve -c validated.yaml")
    wait_log(page, rf"service web: {not_ready.address} becomes unhealthy, .*\(first check\)")
    replies = [get(page, "127.0.0.1:6188") for _ in range(3)]
    assert [(r.status, r.body) for r in replies] == [(200, b"ok")] * 3


def nothing_ready(page: Page) -> Child:
    """The validated service with its last ready backend gone: 503."""
    ready = page.keep["ready"]
    assert isinstance(ready, Upstream)
    start = len(foreground(page).lines)
    # The backend goes away: no more accepts (shutdown wakes the accepting thread), and its
    # open connections close too.
    ready.listener.shutdown(socket.SHUT_RDWR)
    ready.close()
    for conn in list(ready.conns):
        conn.close()
    wait_log(page, rf"{ready.address} becomes unhealthy", start)
    assert get(page, "127.0.0.1:6188").status == 503
    page.r.mark = start
    return foreground(page)


HEALTHCHECK_STEPS = [
    sh("lbx serve --plugin roundrobin --plugin healthcheck --health-check tcp", after=alternating),
    out(
        "... WARNING lbx.server[4242]: service default: 127.0.0.1:343 becomes unhealthy",
    ),
    config("plugins: [roundrobin, healthcheck]", "healthcheck.yaml", then=healthcheck_example),
    custom("python", "# mymodule.py", validator),
    out(
        "... ERROR lbx.proxy[4242]: Fail to proxy: internal HTTPStatus 503",
        produce=nothing_ready,
    ),
]


# -- docs/tls.md -------------------------------------------------------------------------------


def setup_tls(page: Page) -> None:
    local_backends(page, 8001, 8002)
    page.r.places.literal["/etc/lbx/"] = f"{page.workdir}/"


def add_client_ca(page: Page, block: Block) -> None:
    """The fragment goes into tls.yaml's service (the files it names come next)."""
    conf = page.workdir / "tls.yaml"
    conf.write_text(conf.read_text(encoding="utf-8") + block.text, encoding="utf-8")


def restart_with_client_ca(page: Page) -> None:
    """The reader restarts lbx with the new tls.yaml before trying it."""
    page.r.command("lbx serve -c tls.yaml -t")
    page.r.command("lbx serve -c tls.yaml")


def renew(page: Page) -> Child:
    """A new certificate for app.example.test, written beside and renamed over the old one."""
    start = len(foreground(page).lines)
    page.r.run(
        "openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj /CN=app.example.test"
        " -addext subjectAltName=DNS:app.example.test -keyout new.key -out new.pem"
        " 2>/dev/null && mv new.key app.key && mv new.pem app.pem"
    )
    page.r.mark = start
    return foreground(page)


def broken_key(page: Page) -> Child:
    """A key file that is not PEM."""
    start = len(foreground(page).lines)
    (page.workdir / "new.key").write_text("not a key\n")
    (page.workdir / "new.key").rename(page.workdir / "app.key")
    page.r.mark = start
    return foreground(page)


def any_ssl_line(text: str) -> str:
    """OpenSSL's message names a line of CPython's _ssl.c, which depends on the version."""
    return re.sub(r"_ssl\.c:\d+", "_ssl.c:...", text)


def mismatched_key(page: Page) -> Result:
    """tls.yaml with the first certificate's key swapped for api.key."""
    conf = page.workdir / "tls.yaml"
    text = conf.read_text(encoding="utf-8")
    conf.write_text(text.replace("{cert: app.pem, key: app.key}", "{cert: app.pem, key: api.key}"))
    return page.r.run("lbx serve -c tls.yaml -t", code=2)


TLS_STEPS = [
    sh("openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj /CN=app.example.test"),
    config("plugins: [roundrobin]", "tls.yaml", check=False),
    sh("lbx serve -c tls.yaml -t"),
    out("lbx: configuration tls.yaml is valid"),
    sh("lbx serve -c tls.yaml"),
    out("... INFO lbx.server[12598]: service web listening on 127.0.0.1:8080"),
    sh("curl --cacert app.pem --resolve app.example.test:8443:127.0.0.1"),
    custom("yaml", "client_ca: clients-ca.pem", add_client_ca),
    sh(
        'openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=Example clients CA"',
        Hooks(before={"curl --cacert app.pem --cert alice.pem": restart_with_client_ca}),
    ),
    out("... INFO lbx.tls[12667]: service web: certificates reloaded", produce=renew),
    out(
        "... ERROR lbx.tls[12667]: service web: new certificates not loaded",
        produce=broken_key,
        fix=any_ssl_line,
    ),
    out("lbx: error: tls.yaml:6: services[0].certificates", produce=mismatched_key),
]


# -- docs/http2.md -----------------------------------------------------------------------------


def setup_http2(page: Page) -> None:
    if shutil.which("h2load") is None:
        pytest.skip("h2load is not installed (Debian package nghttp2-client)")
    local_backends(page, 8001)


def grpc_server(page: Page) -> Result:
    """``python grpc_echo.py serve 127.0.0.1:50051 &``: on port 0 (the documented port is bound
    to the one it prints), as a job the page ends."""
    child = page.r.start(
        [sys.executable, "grpc_echo.py", "serve", "127.0.0.1:0"], page.r.env, r"serving on"
    )
    page.r.jobs.append(child)
    page.r.places.ports[50051] = int(child.wait_for(r"serving on \S+:(\d+)", TIMEOUT)[1])
    return Result("python grpc_echo.py serve", 0, "")


def save_block(name: str) -> Action:
    def action(page: Page, block: Block) -> None:
        (page.workdir / name).write_text(block.text, encoding="utf-8")

    return action


HTTP2_STEPS = [
    config("plugins: [roundrobin]", "h2.yaml"),
    sh("lbx serve -c h2.yaml"),
    sh("curl --http2-prior-knowledge -sS -w"),
    sh("h2load -n 1000 -c 10 -m 10 http://127.0.0.1:8080/"),
    out("..."),
    custom("python", '"""grpc_echo.py', save_block("grpc_echo.py")),
    config("plugins: [roundrobin]", "grpc.yaml"),
    sh(
        "python grpc_echo.py serve 127.0.0.1:50051 &",
        Hooks(instead={"python grpc_echo.py serve": grpc_server}),
    ),
    sh("python grpc_echo.py call 127.0.0.1:8080 hello"),
    out("echo: hello"),
]


# -- docs/workers.md ---------------------------------------------------------------------------


def setup_workers(page: Page) -> None:
    start_external(page, "10.0.0.1:8080", "10.0.0.2:8080")


def workers_example(page: Page) -> None:
    """``-t`` ends with ``4 worker processes``; the config runs as written."""
    assert page.r.last is not None and isinstance(page.r.last, Result)
    assert page.r.last.output.splitlines()[-1].strip() == "4 worker processes"
    page.r.command("lbx serve -c conf.yaml")
    requests_answered(page, 4)


def kill_worker_0(page: Page) -> Child:
    """Worker 0 killed with SIGKILL: the supervisor starts a new one."""
    lbx_process = foreground(page)
    pid = int(lbx_process.wait_for(r"worker 0 started \(pid (\d+)\)")[1])
    page.r.mark = len(lbx_process.lines)
    os.kill(pid, signal.SIGKILL)
    return lbx_process


WORKERS_STEPS = [
    config("threads: 4", "conf.yaml", then=workers_example),
    out("... INFO lbx.workers[9810]: background services started (pid 9812)"),
    out(
        "... WARNING lbx.workers[9810]: worker 0 (pid 9823) exited unexpectedly",
        produce=kill_worker_0,
    ),
]


# -- docs/discovery.md -------------------------------------------------------------------------


def setup_discovery(page: Page) -> None:
    start_external(page, "10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080")


def backends_file(page: Page, block: Block) -> None:
    (page.workdir / "backends.yaml").write_text(page.r.subst(block.text), encoding="utf-8")


def serve_discovered(expected: set[str]) -> Action:
    """A config block: valid (``-t``), then running; ``expected`` backends answer at once
    (the first discovery runs before lbx listens)."""

    def action(page: Page, block: Block) -> None:
        (page.workdir / "conf.yaml").write_text(block.text, encoding="utf-8")
        page.r.command("lbx serve -c conf.yaml -t")
        page.r.command("lbx serve -c conf.yaml")
        if expected:
            assert set(requests_answered(page, 6)) == expected

    return action


def discovered(pattern: str, expected: set[str]) -> Callable[[Page], None]:
    """After a command: lbx logged the change, and the ``expected`` backends answer."""

    def check(page: Page) -> None:
        foreground(page).wait_for(pattern, TIMEOUT, page.r.mark)
        assert set(requests_answered(page, 6)) == expected

    return check


def with_dnsmasq(page: Page, block: Block) -> None:
    """Consul's DNS (127.0.0.1:8600) is a dnsmasq answering web.service.consul's SRV records
    with the documented backends a and b."""
    if DNSMASQ is None:
        pytest.skip("dnsmasq is not installed (Debian package dnsmasq-base)")
    server = Dnsmasq(page.workdir, domains=("consul",))
    page.keep["dnsmasq"] = server
    a, b = (page.r.subst(address) for address in ("10.0.0.1:8080", "10.0.0.2:8080"))
    server.records = ["a.node.consul,127.0.0.1", "b.node.consul,127.0.0.1"]
    server.srv = [
        f"web.service.consul,{n}.node.consul,{address.rsplit(':', 1)[1]},1,1"
        for n, address in (("a", a), ("b", b))
    ]
    server.start()
    page.r.places.literal["127.0.0.1:8600"] = server.nameserver
    serve_discovered({"a", "b"})(page, block)


def with_etcd(page: Page, block: Block) -> None:
    """etcd at its default client URL is a real etcd; etcdctl finds it (ETCDCTL_ENDPOINTS)."""
    if ETCD is None or ETCDCTL is None:
        pytest.skip("etcd is not installed (Debian packages etcd-server, etcd-client)")
    server = Etcd(page.workdir)
    page.keep["etcd"] = server
    page.r.places.literal["http://127.0.0.1:2379"] = server.url
    page.r.env["ETCDCTL_ENDPOINTS"] = server.url
    page.r.env["ETCDCTL_API"] = "3"
    serve_discovered(set())(page, block)
    page.r.mark = len(foreground(page).lines)


DISCOVERY_STEPS = [
    custom("yaml", "- 10.0.0.1:8080", backends_file),
    custom("yaml", "plugins: [roundrobin, file]", serve_discovered({"a", "b"})),
    sh(
        "printf -- '- 10.0.0.3:8080",
        Hooks(after={"printf": discovered(r"backends changed \(file\)", {"c"})}),
        before=lambda page: setattr(page.r, "mark", len(foreground(page).lines)),
    ),
    custom("yaml", "plugins: [roundrobin, dns]", with_dnsmasq),
    custom("yaml", "plugins: [roundrobin, etcd]", with_etcd),
    sh(
        "etcdctl put /services/web/a 10.0.0.1:8080",
        Hooks(
            after={
                "etcdctl put /services/web/b": discovered(
                    r"backends changed \(etcd\): .*\(2 backends\)", {"a", "b"}
                )
            }
        ),
    ),
]


# -- docs/plugins.md ---------------------------------------------------------------------------


def tagged(page: Page) -> None:
    """/lbx-health is answered by lbx; other responses carry the upstream's address."""
    health = get(page, "127.0.0.1:6188", "/lbx-health")
    assert (health.status, health.body) == (200, b"ok\n")
    reply = get(page, "127.0.0.1:6188")
    assert reply.headers["X-Upstream"] == page.r.subst(
        f"127.0.0.1:{8001 if reply.backend == 'a' else 8002}"
    )


def same_toml(path: str) -> Action:
    def action(page: Page, block: Block) -> None:
        assert tomllib.loads(block.text) == tomllib.loads((REPO / path).read_text()), block.where

    return action


def installed_command(page: Page, block: Block) -> None:
    """The command in an installed plugin (a distribution on PYTHONPATH with its entry point):
    ``lbx -h`` lists it and ``lbx ping ADDRESS`` prints the status."""
    load_as_plugin(block, page.workdir)
    site = page.workdir / "site"
    (site / "lbx_ping").mkdir(parents=True)
    (site / "lbx_ping" / "__init__.py").write_text(block.text, encoding="utf-8")
    info = site / "lbx_ping-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: lbx-ping\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[lbx]\nping = lbx_ping\n")
    env = {
        **page.r.env,
        "PYTHONPATH": os.pathsep.join([str(site), page.r.env.get("PYTHONPATH", "")]),
    }
    assert " ping " in page.r.run("lbx -h", env).output
    page.r.last = page.r.run(page.r.subst("lbx ping 127.0.0.1:6188"), env)
    page.r.expect("127.0.0.1:6188: 200")


def plugin_test(page: Page, block: Block) -> None:
    """``tests/test_tag.py`` beside ``tag.py`` (the hook module above)."""
    tests = page.workdir / "tests"
    tests.mkdir()
    (tests / "test_tag.py").write_text(block.text, encoding="utf-8")


def fixture_test(page: Page, block: Block) -> None:
    """The fixture version, in the same file (it uses ``PLUGIN`` and ``get``), with the
    ``conftest.py`` line: both tests pass."""
    tests = page.workdir / "tests"
    with (tests / "test_tag.py").open("a", encoding="utf-8") as file:
        file.write("\n\n" + block.text)
    (tests / "conftest.py").write_text('pytest_plugins = ["lbx.pytest_plugin"]\n')
    page.r.stop_foreground()
    result = page.r.run(
        f"{sys.executable} -m pytest -q -p no:cacheprovider -W error tests/test_tag.py"
    )
    assert "2 passed" in result.output, result.output


def unit_tests(page: Page, block: Block) -> None:
    """The unit tests, in the same file: all five pass."""
    with (page.workdir / "tests" / "test_tag.py").open("a", encoding="utf-8") as file:
        file.write("\n\n" + block.text)
    result = page.r.run(
        f"{sys.executable} -m pytest -q -p no:cacheprovider -W error tests/test_tag.py"
    )
    assert "5 passed" in result.output, result.output


def setup_plugins(page: Page) -> None:
    local_backends(page, 8001, 8002)


def rotation_selector(page: Page, block: Block) -> None:
    """The selector built on ``Rotation``: its first choices follow the weights, in order, and
    its ``iter`` is the protocol's (first, then the fallback over the plain list)."""
    namespace: dict[str, object] = {}
    exec(compile(block.text, block.where, "exec"), namespace)
    one, two = lbx.Backend("127.0.0.1", 8001, weight=1), lbx.Backend("127.0.0.1", 8002, weight=2)
    selector = namespace["RoundRobin"]([one, two], {})  # type: ignore[operator]
    assert isinstance(selector, lbx.Selector)
    assert [selector.first(b"") for _ in range(6)] == [one, two, two, one, two, two]
    fresh = namespace["RoundRobin"]([one, two], {})  # type: ignore[operator]
    assert list(itertools.islice(fresh.iter(b""), 4)) == [one, two, one, two]


def state_object(page: Page, block: Block) -> None:
    """The plugin registers its state object from ``configure``; the object's hook counts."""
    load_as_plugin(block, page.workdir)
    namespace: dict[str, object] = {}
    exec(compile(block.text, block.where, "exec"), namespace)
    pm = lbx.get_plugin_manager(defaults=False)
    namespace["configure"](lbx.Config(), pm)
    counter = pm.get_plugin("counter.state")
    assert counter is not None and counter.failed == 0
    assert pm.hook.logging.get_hookimpls()[0].plugin is counter
    counter.logging(None, lbx.ProxyError(lbx.ErrorType.CONNECT_REFUSED, lbx.ErrorSource.UPSTREAM))
    assert counter.failed == 1


PLUGINS_STEPS = [
    plugin('"""Answer /lbx-health locally', save_as="tag.py"),
    sh("lbx serve --plugin roundrobin --plugin ./tag.py", after=tagged),
    custom("toml", "[build-system]", same_toml("plugins/roundrobin/pyproject.toml")),
    plugin("import itertools"),
    custom("python", "from lbx import Rotation", rotation_selector),
    plugin("import asyncio"),
    custom("python", "from lbx import Config, PluginManager", state_object),
    custom("python", "import http.client", installed_command),
    custom("python", '"""tests/test_tag.py', plugin_test),
    custom("python", "def test_tag_fixture(lbx, backends):", fixture_test),
    custom("python", "import asyncio", unit_tests),
]


# -- the pages, and the tests ------------------------------------------------------------------


@dataclass
class Doc:
    steps: list[Step]
    setup: Callable[[Page], None] | None = None
    every: Step | None = None
    """For pages whose blocks are all alike (hooks.md): the one step for each block."""


PAGES: dict[str, Doc] = {
    "README.md": Doc(README_STEPS, setup_readme),
    "accesslog.md": Doc(ACCESSLOG_STEPS, setup_accesslog),
    "architecture.md": Doc(
        [
            skip("mermaid", "flowchart TD", "a chart of the imports, checked by test_architecture"),
            skip("", "lbx serve (supervisor", "a diagram of the processes, not a command"),
        ]
    ),
    "cli.md": Doc(CLI_STEPS, setup_cli),
    "configuration.md": Doc(CONFIGURATION_STEPS, setup_configuration),
    "healthcheck.md": Doc(HEALTHCHECK_STEPS, setup_healthcheck),
    "hooks.md": Doc(
        [skip("mermaid", "flowchart TD", "a chart of the phases, not code")],
        every=plugin("@hookimpl"),
    ),
    "http.md": Doc([]),
    "http2.md": Doc(HTTP2_STEPS, setup_http2),
    "index.md": Doc([]),
    "metrics.md": Doc(METRICS_STEPS, setup_metrics),
    "operations.md": Doc(OPERATIONS_STEPS, setup_operations),
    "performance.md": Doc(
        [
            skip(
                "sh",
                ".venv/bin/python bench/run.py",
                "the benchmark: about 25 minutes on an idle machine; installs nginx, HAProxy and "
                "wrk with apt-get",
            )
        ]
    ),
    "plugins.md": Doc(PLUGINS_STEPS, setup_plugins),
    "quickstart.md": Doc(QUICKSTART_STEPS, setup_quickstart),
    "selection.md": Doc([]),
    "status.md": Doc(STATUS_STEPS, setup_status),
    "tls.md": Doc(TLS_STEPS, setup_tls),
    "workers.md": Doc(WORKERS_STEPS, setup_workers),
    "discovery.md": Doc(DISCOVERY_STEPS, setup_discovery),
}


def page_path(name: str) -> Path:
    return REPO / name if name == "README.md" else DOCS / name


def pair_steps(name: str) -> Iterator[tuple[Block, Step]]:
    """Each block of the page with the step that takes it; fails on a block no step takes."""
    doc = PAGES[name]
    blocks = read_blocks(page_path(name))
    if doc.every is not None:
        # The page's own steps take its first blocks (a chart); every block after them is alike.
        for block, step in zip(blocks, doc.steps, strict=False):
            assert block.lang == step.lang and block.first.startswith(step.first), block.where
            yield block, step
        for block in blocks[len(doc.steps) :]:
            assert block.lang == doc.every.lang and doc.every.first in block.text, (
                f"{block.where}: every block of {name} is a {doc.every.lang} block with "
                f"{doc.every.first!r}; run this one, or list it with the reason, in {__name__}"
            )
            yield block, doc.every
        return
    for index, block in enumerate(blocks):
        assert index < len(doc.steps), f"{block.where}: a new {block.lang or 'output'} block " + (
            f"({block.first!r}): run it, or list it with the reason, in {__name__}"
        )
        step = doc.steps[index]
        assert (block.lang, block.first.startswith(step.first)) == (step.lang, True), (
            f"{block.where}: the block is ({block.lang!r}, {block.first!r}), the test expects "
            f"({step.lang!r}, {step.first!r}...): a block was added, removed or changed"
        )
        yield block, step
    assert len(blocks) == len(doc.steps), f"{name}: steps for blocks that are gone"


def test_every_page_is_listed() -> None:
    """Every page of docs/ (and README.md) has its steps here."""
    pages = {path.name for path in DOCS.glob("*.md")} | {"README.md"}
    assert sorted(pages - set(PAGES)) == [], "pages without steps in PAGES"
    assert sorted(set(PAGES) - pages) == []


@pytest.mark.parametrize("name", sorted(PAGES))
def test_every_block_is_run_or_listed(name: str) -> None:
    """Each block is taken by a step that runs it or says why it cannot run."""
    for _block, step in pair_steps(name):
        assert step.action is not None or step.reason


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A reader's working directory: the repository's files the docs use, by link or copy."""
    work = tmp_path / "w"
    work.mkdir()
    for name in ("contrib", "plugins", ".venv"):
        (work / name).symlink_to(REPO / name)
    shutil.copytree(REPO / "example_conf", work / "example_conf")
    return work


@pytest.mark.parametrize("name", sorted(PAGES))
def test_page_examples(name: str, workdir: Path, backends: BackendThread) -> None:
    """Run the page's blocks in order, as a reader would."""
    page = Page(Runner(workdir, Places()), backends, workdir)
    doc = PAGES[name]
    try:
        if doc.setup is not None:
            doc.setup(page)
        for block, step in pair_steps(name):
            if step.action is None:
                continue
            page.block = block
            try:
                step.action(page, block)
            except AssertionError as exc:
                raise AssertionError(f"{block.where} ({block.first!r}): {exc}") from exc
    finally:
        page.r.close()
        for kept in page.keep.values():
            if isinstance(kept, Upstream):
                kept.close()
            elif isinstance(kept, Dnsmasq | Etcd):
                kept.stop()
