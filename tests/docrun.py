"""Run the examples of the documentation for real: see tests/test_docs_examples.py.

- ``read_blocks(path)``: the fenced code blocks of a Markdown file.
- ``Runner``: runs shell commands as a reader of the docs would, against real processes on
  127.0.0.1, after an explicit substitution of the addresses and paths the docs use
  (``Runner.subst``), and compares documented output with the real one (``Runner.expect``).
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from lbx.testing import LbxProcess

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
FENCE = re.compile(r"^```(?P<lang>[^\s`]*)[^\n]*\n(?P<body>.*?)^```[ \t]*$", re.M | re.S)
TIMEOUT = 30.0
"""Bound on every wait: a command, a process becoming ready, a log line."""
_T = TypeVar("_T")


@dataclass(frozen=True)
class Block:
    """One fenced code block of a page."""

    page: str
    line: int
    """Line number of the opening fence."""
    lang: str
    """The info string: ``sh``, ``yaml``, ``python``, ...; ``""`` for output and plain text."""
    text: str

    @property
    def first(self) -> str:
        """The first non-empty line, stripped."""
        return next((line.strip() for line in self.text.splitlines() if line.strip()), "")

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


def read_blocks(path: Path) -> list[Block]:
    """Every fenced block of a Markdown file, in order."""
    text = path.read_text(encoding="utf-8")
    return [
        Block(path.name, text.count("\n", 0, match.start()) + 1, match["lang"], match["body"])
        for match in FENCE.finditer(text)
    ]


@dataclass
class Command:
    """One shell command of a block: continuation lines joined, its ``# comment`` apart."""

    text: str
    comment: str = ""
    """The trailing comment, plus comment-only lines right after the command (expected output)."""


def _split_comment(line: str) -> tuple[str, str]:
    """``code  # comment`` -> (code, comment); a ``#`` inside quotes or a word is code."""
    quote = ""
    for index, char in enumerate(line):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or line[index - 1].isspace()):
            return line[:index].rstrip(), line[index + 1 :].strip()
    return line.rstrip(), ""


def split_commands(text: str) -> list[Command]:
    """The commands of a shell block, in order."""
    commands: list[Command] = []
    pending = ""
    for line in text.splitlines():
        code, comment = _split_comment(line)
        if not pending and not code.strip():
            if comment and commands:  # a comment-only line: about the command above
                commands[-1].comment = f"{commands[-1].comment}\n{comment}".strip()
            continue
        if code.endswith("\\"):
            pending += code[:-1].strip() + " "
            continue
        commands.append(Command((pending + code.strip()).strip(), comment))
        pending = ""
    return commands


def free_port() -> int:
    """A port nobody listens on right now (bound to port 0, read back, released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Child(LbxProcess):
    """Any command in a child process, its output collected line by line (like ``LbxProcess``)."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        super().__init__(env=env, cwd=str(cwd))
        self.env = env
        self.argv = argv

    def command(self) -> list[str]:
        return self.argv

    def __repr__(self) -> str:
        return f"<{shlex.join(self.argv)} pid {self.proc.pid if self.proc else None}>"


@dataclass
class Result:
    """What a short command did."""

    command: str
    code: int
    output: str
    """stdout and stderr together, in order."""
    verbatim: bool = False
    """The command ran on the documented files without substitution (``lbx serve -t``): its
    output is compared with the documented one as is."""


PID = re.compile(r"\[\d+\](?=:)|\bpid \d+|\bworkers: \d+(?:, \d+)*")
"""Pids in log lines: ``logger[4242]:``, ``(pid 4242)``, ``2 workers: 4243, 4244``."""


def line_pattern(expected: str) -> re.Pattern[str]:
    """A documented output line as a regex: ``...`` is a wildcard, pids are any number."""
    parts = []
    for piece in expected.strip().split("..."):
        out, last = "", 0
        for match in PID.finditer(piece):
            out += re.escape(piece[last : match.start()])
            out += re.sub(r"\\\d+|\d+", r"\\d+", re.escape(match.group(0)))
            last = match.end()
        parts.append(out + re.escape(piece[last:]))
    return re.compile(r"\s*" + ".*".join(parts) + r"\s*")


def is_gap(line: str) -> bool:
    """A documented line that stands for any number of lines: ``...`` alone (also in a table)."""
    return line.strip(" │|") == "..."


def match_exactly(expected: list[str], actual: list[str]) -> str | None:
    """None when ``actual`` is ``expected`` line for line (gap lines match any lines)."""
    if not expected:
        return None if not actual else f"unexpected output {actual[0]!r}"
    if is_gap(expected[0]):
        rest = expected[1:]
        for start in range(len(actual) + 1):
            if match_exactly(rest, actual[start:]) is None:
                return None
        return f"nothing after {expected[0]!r} matches {rest[:1]}"
    if not actual:
        return f"missing {expected[0]!r}"
    if not line_pattern(expected[0]).fullmatch(actual[0]):
        return f"expected {expected[0]!r}, got {actual[0]!r}"
    return match_exactly(expected[1:], actual[1:])


def match_in_order(expected: list[str], actual: list[str], start: int = 0) -> tuple[int, str]:
    """Find each expected line in ``actual`` after the previous one: (next index, error)."""
    index = start
    for line in expected:
        if is_gap(line):
            continue
        pattern = line_pattern(line)
        for position in range(index, len(actual)):
            if pattern.fullmatch(actual[position]):
                index = position + 1
                break
        else:
            return index, f"no line matches {line!r} after line {index}"
    return index, ""


@dataclass
class Places:
    """The explicit substitution of the docs' addresses and paths by real ones.

    - ``literal``: text replaced as is (paths, external addresses, backends started by setup);
    - ``ports``: a documented port that a command of the page listens on, bound to the port the
      process reported after listening on port 0; ``HOST:PORT`` becomes ``HOST:REAL`` wherever
      it appears (``0.0.0.0`` becomes ``127.0.0.1`` for clients).
    """

    literal: dict[str, Callable[[], str] | str] = field(default_factory=dict)
    ports: dict[int, int] = field(default_factory=dict)

    def subst(self, text: str, listen_ports: frozenset[int] = frozenset()) -> str:
        """``text`` with every documented value replaced; ``listen_ports`` become port 0."""
        literals = sorted(self.literal, key=len, reverse=True)
        ports = sorted({*self.ports, *listen_ports}, reverse=True)
        alternatives = []
        if literals:
            alternatives.append(
                "(?P<literal>"
                + "|".join(re.escape(x) + (r"(?!\w)" if x[-1].isalnum() else "") for x in literals)
                + ")"
            )
        if ports:
            alternatives.append(
                r"(?P<host>[\w.-]+|\[[0-9a-f:]+\]):(?P<port>"
                + "|".join(str(p) for p in ports)
                + r")(?!\d)"
            )
        if not alternatives:
            return text

        def replace(match: re.Match[str]) -> str:
            if match.groupdict().get("literal") is not None:
                value = self.literal[match["literal"]]
                return value() if callable(value) else value
            host, port = match["host"], int(match["port"])
            if port in listen_ports:
                return f"{'127.0.0.1' if host in ('0.0.0.0', 'localhost') else host}:0"
            return f"{'127.0.0.1' if host == '0.0.0.0' else host}:{self.ports[port]}"

        return re.sub("|".join(alternatives), replace, text)


def doc_port(address: str) -> int | None:
    """The port of ``host:port`` / ``[v6]:port``; None for ``unix:`` addresses."""
    if address.startswith("unix:"):
        return None
    return int(address.rsplit(":", 1)[1])


def as_list(value: str | list[str] | None) -> list[str]:
    """A config value that is one string or a list of them, as a list."""
    if value is None:
        return []
    return [value] if isinstance(value, str) else [str(v) for v in value]


@dataclass
class Hooks:
    """What a page's test adds around the commands of one shell block (keys: the start of a
    documented command)."""

    skip: dict[str, str] = field(default_factory=dict)
    """Commands not run, with the reason."""
    translate: dict[str, Callable[[Any], str]] = field(default_factory=dict)
    """Commands run as another command (say why in the page's test)."""
    instead: dict[str, Callable[[Any], Result]] = field(default_factory=dict)
    """Commands done by the page's test itself (say why): the function returns the output."""
    before: dict[str, Callable[[Any], object]] = field(default_factory=dict)
    after: dict[str, Callable[[Any], object]] = field(default_factory=dict)
    """Called with the ``context`` given to ``Runner.sh``; return values are ignored."""

    @staticmethod
    def find(table: dict[str, _T], command: str) -> _T | None:
        """The entry of the longest key that ``command`` starts with."""
        keys = [key for key in table if command.startswith(key)]
        return table[max(keys, key=len)] if keys else None


class Runner:
    """Runs a page's commands in ``workdir`` and keeps the processes they start.

    The conventions a reader follows, made explicit:

    - ``lbx serve`` without ``-t``/``-d``/``-h`` runs in the foreground until the next one
      starts (the reader presses Ctrl-C: SIGINT, which must exit 0); it is ready once it logs
      ``lbx ready``. Its listen addresses (``--listen``, the config's ``listen``/``tls_listen``,
      or lbx's default ``127.0.0.1:6188``) become port 0, and each documented port is then bound
      to the port lbx reported (``Places.ports``), for every later command and expected output.
    - ``python -m lbx.testing`` (demo backends) likewise, in its own terminal; ``... &`` runs in
      the background as a job, and ``kill %N`` stops job N.
    - ``-c FILE`` (except with ``-t``): the file with the substitution applied, written beside
      it as ``FILE.run.yaml``. ``lbx serve -t`` reads the documented file itself, without any
      substitution: it only checks and prints it, so its output is the documented one.
    - ``lbx serve -d``: the daemon's listen ports are bound from its ``error_log``, and its pid
      (from the page's pid files) is ended after the page.
    - ``curl`` is the real curl; a ``# comment`` after it is text its output must contain
      (``# curl: (N) message``: curl must fail so; when the comment has several, with one of
      them).
    - Everything else runs in ``bash -c`` with ``.venv/bin`` first on ``PATH``, and must exit 0.
    """

    def __init__(self, workdir: Path, places: Places) -> None:
        self.workdir = workdir
        self.places = places
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LBX_", "COLUMNS"))}
        env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
        env["TERM"] = "dumb"
        env["COLUMNS"] = "200"  # a reader's terminal: rich tables are not cut to 80 columns
        self.env = env
        self.children: list[Child] = []
        self.foreground: Child | None = None
        """The foreground ``lbx serve``."""
        self.backends: Child | None = None
        """The foreground ``python -m lbx.testing``."""
        self.jobs: list[Child] = []
        self.daemons: set[int] = set()
        self.pid_files: list[Path] = []
        """Files where daemons the page starts write their pid (to end them after the page)."""
        self.daemon_logs: set[Path] = set()
        """The daemons' error logs (their workers' pids are there)."""
        self.admin: dict[int, str] = {}
        """Documented ports of a plugin's own listener -> the log line (a regex) naming the real
        address: they become port 0 in configs like services' listen addresses."""
        self.last: Result | Child | None = None
        self.mark = 0
        """With ``last`` a process: its log lines before this index came before the command."""
        self.reuse_ports = False
        """``python -m lbx.testing`` listens on the real ports bound before (a restart)."""

    # -- substitution -------------------------------------------------------------------------

    def subst(self, text: str, listen_ports: frozenset[int] = frozenset()) -> str:
        return self.places.subst(text, listen_ports)

    def address(self, documented: str) -> str:
        """The real address of a documented one."""
        return self.subst(documented)

    def run_config(self, name: str) -> tuple[Path, list[str]]:
        """The substituted copy of the config ``name``, and its documented listen addresses
        (each service's ``listen`` then ``tls_listen``: the order lbx logs them in)."""
        path = self.workdir / name
        text = path.read_text(encoding="utf-8")
        data = yaml.safe_load(text) or {}
        listen = []
        for service in data.get("services") or []:
            listen += as_list(service.get("listen")) + as_list(service.get("tls_listen"))
        ports = frozenset(p for p in map(doc_port, listen) if p is not None) | set(self.admin)
        run = path.with_name(path.name + ".run.yaml")
        run.write_text(self.subst(text, frozenset(ports)), encoding="utf-8")
        return run, listen

    # -- running ------------------------------------------------------------------------------

    def sh(self, text: str, hooks: Hooks | None = None, context: object = None) -> None:
        """Run every command of a shell block, in order; ``hooks`` get ``context``."""
        hooks = hooks or Hooks()
        for command in split_commands(text):
            if Hooks.find(hooks.skip, command.text) is not None:
                continue
            if before := Hooks.find(hooks.before, command.text):
                before(context)
            documented = command.text
            if translate := Hooks.find(hooks.translate, documented):
                command = Command(translate(context), command.comment)
            if instead := Hooks.find(hooks.instead, documented):
                self.last = instead(context)
            else:
                self.command(command)
            if after := Hooks.find(hooks.after, documented):
                after(context)

    def command(self, command: Command | str) -> Result | Child:
        """Run one documented command (see the class docstring); it becomes ``last``."""
        if isinstance(command, str):
            command = Command(command)
        words = shlex.split(command.text)
        background = words[-1] == "&"
        if background:
            words = words[:-1]
        env = dict(self.env)
        while words and re.fullmatch(r"[A-Z_]+=.*", words[0]):
            name, _, value = words.pop(0).partition("=")
            env[name] = re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: env.get(m[1]) or m[2], value)
        program = Path(words[0]).name if words else ""
        flags = set(words)
        result: Result | Child
        if program == "lbx" and words[1:2] == ["serve"] and not flags & SHORT_SERVE:
            result = self.serve(words[2:], env, background)
        elif words[:3] == ["python", "-m", "lbx.testing"]:
            result = self.demo_backends(words[3:], env, background)
        elif words[:1] == ["kill"] and len(words) == 2 and words[1].startswith("%"):
            self.jobs[int(words[1][1:]) - 1].stop(signal.SIGTERM, TIMEOUT)
            result = Result(command.text, 0, "")
        elif program == "curl":
            result = self.curl(command, env)
        elif program == "lbx" and flags & {"-t", "--test"}:
            result = self.run(command.text, env)  # checks and prints the documented file
            result.verbatim = True
        else:
            config: list[tuple[Path, list[str]]] = []
            result = self.run(self.subst_files(self.subst(command.text), config), env)
            if "serve" in flags and flags & {"-d", "--daemon"}:
                self.bind_daemon(*config[-1])
        self.last = result
        return result

    def subst_files(self, text: str, used: list[tuple[Path, list[str]]]) -> str:
        """``-c FILE`` -> its substituted copy; ``used`` gets (copy, listen addresses)."""

        def replace(match: re.Match[str]) -> str:
            name = match[2]
            if not (self.workdir / name).is_file():
                return match[0]
            run, listen = self.run_config(name)
            used.append((run, listen))
            return f"{match[1]}{run.relative_to(self.workdir)}"

        return re.sub(r"((?:^|\s)(?:-c|--conf)\s+)(\S+)", replace, text)

    def run(self, command: str, env: dict[str, str] | None = None, code: int | None = 0) -> Result:
        """A short command in ``bash -c``; its exit code must be ``code`` (None: any)."""
        done = subprocess.run(
            ["bash", "-c", command],
            cwd=self.workdir,
            env=env or self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=TIMEOUT * 2,
        )
        result = Result(command, done.returncode, done.stdout)
        if code is not None:
            assert done.returncode == code, f"{command}: exit code {done.returncode}\n{done.stdout}"
        self.collect_daemons()
        return result

    def collect_daemons(self) -> None:
        for path in self.pid_files:
            if path.is_file() and path.read_text().strip().isdigit():
                self.daemons.add(int(path.read_text()))

    def bind_daemon(self, run_config: Path, listen: list[str]) -> None:
        """Bind the listen ports of a daemon that started with ``run_config``."""
        error_log = (yaml.safe_load(run_config.read_text()) or {}).get("error_log")
        assert error_log, f"{run_config}: a daemon's listen ports are read from its error_log"
        self.daemon_logs.add(Path(error_log))
        found = listening(Path(error_log).read_text().splitlines(), unique=False)
        self.bind(listen, found[len(found) - len(listen) :])

    def curl(self, command: Command, env: dict[str, str]) -> Result:
        if shutil.which("curl", path=env["PATH"]) is None:
            pytest.skip("curl is not installed: this page's curl examples cannot run")
        text = self.subst(command.text)
        failures: dict[int, list[str]] = {}
        for code, message in CURL_ERROR.findall(command.comment):
            failures.setdefault(int(code), []).append(f"curl: ({code}) {message}")
        result = self.run(text, env, code=None if failures else 0)
        if failures:
            # Several messages may share an exit code (timing decides which one curl prints).
            assert result.code in failures, f"{text}: exit code {result.code}\n{result.output}"
            messages = failures[result.code]
            assert any(line in result.output for line in messages), (
                f"{text}: none of {messages!r} in\n{result.output}"
            )
            return result
        for line in command.comment.splitlines():
            assert line in result.output, f"{text}: {line!r} not in\n{result.output}"
        return result

    def start(self, argv: list[str], env: dict[str, str], ready: str, count: int = 1) -> Child:
        """Start a long-running process; ready once ``count`` log lines matched ``ready``."""
        child = Child(argv, env, self.workdir)
        self.children.append(child)
        child.start_async()
        start = 0
        for _ in range(count):
            match = child.wait_for(ready, TIMEOUT, start)
            start = child.lines.index(match.string, start) + 1
        return child

    def serve(self, args: list[str], env: dict[str, str], background: bool = False) -> Child:
        """A foreground ``lbx serve``: listen on port 0, then bind the documented ports."""
        self.stop_foreground()
        listen = [args[i + 1] for i, arg in enumerate(args[:-1]) if arg == "--listen"]
        args = [
            "127.0.0.1:0" if i and args[i - 1] == "--listen" and doc_port(a) else self.subst(a)
            for i, a in enumerate(args)
        ]
        has_services = False
        for index, arg in enumerate(args[:-1]):
            if arg in ("-c", "--conf") and (self.workdir / args[index + 1]).is_file():
                run, config_listen = self.run_config(args[index + 1])
                args[index + 1] = str(run.relative_to(self.workdir))
                has_services = bool(config_listen)
                listen = listen or config_listen
        if not listen and "--upstream" in args and not has_services:
            listen = ["127.0.0.1:6188"]  # lbx's default listen address
            args += ["--listen", "127.0.0.1:0"]
        child = self.start([sys.executable, "-m", "lbx", "serve", *args], env, r"lbx ready")
        self.bind(listen, listening(child.lines))
        for port, pattern in self.admin.items():
            address = child.wait_for(pattern, TIMEOUT)[1]
            self.places.ports[port] = int(address.rsplit(":", 1)[1])
        if background:
            self.jobs.append(child)
        else:
            self.foreground = child
        self.mark = 0
        return child

    def bind(self, documented: list[str], actual: list[str]) -> None:
        assert len(documented) == len(actual), f"listening on {actual}, documented {documented}"
        for doc, real in zip(documented, actual, strict=True):
            port = doc_port(doc)
            if port is not None:
                self.places.ports[port] = int(real.rsplit(":", 1)[1])

    def demo_backends(self, args: list[str], env: dict[str, str], background: bool) -> Child:
        """``python -m lbx.testing --listen ADDR ...``: on port 0, unless ``reuse_ports``."""
        documented = [args[i + 1] for i, arg in enumerate(args[:-1]) if arg == "--listen"]
        for index, arg in enumerate(args):
            if index and args[index - 1] == "--listen":
                port = doc_port(arg)
                if self.reuse_ports and port in self.places.ports:
                    args[index] = f"127.0.0.1:{self.places.ports[port]}"
                else:
                    args[index] = "127.0.0.1:0"
        for _attempt in range(ORDER_ATTEMPTS):
            child = self.start(
                [sys.executable, "-m", "lbx.testing", *args],
                env,
                r"^backend \S+ listening on \S+$",
                count=len(documented),
            )
            real = [m[1] for line in child.lines if (m := BACKEND_LISTENING.fullmatch(line))]
            if self.reuse_ports or same_order(documented, real):
                break
            child.stop(signal.SIGINT, TIMEOUT)  # lbx sorts backends by address: keep the order
        self.bind(documented, real)
        if background:
            self.jobs.append(child)
        else:
            self.backends = child
        return child

    def stop_foreground(self) -> None:
        """Ctrl-C on the foreground lbx: it exits 0."""
        if self.foreground is not None:
            assert self.foreground.stop(signal.SIGINT, TIMEOUT) == 0, self.foreground.output
            self.foreground = None

    def stop_backends(self) -> None:
        """Ctrl-C on the foreground demo backends."""
        if self.backends is not None:
            assert self.backends.stop(signal.SIGINT, TIMEOUT) == 0, self.backends.output
            self.backends = None

    # -- output -------------------------------------------------------------------------------

    def expect(self, text: str, exact: bool = True, of: Result | Child | None = None) -> None:
        """The documented output ``text`` is what the last command printed (``of``: what that
        command printed): a short command's, line for line (``exact=False``: these lines in
        order, among others). Log lines (``... LEVEL logger[pid]: message``) are looked for in
        the log of the last process started (else the foreground lbx), in order, from ``mark``
        on, waiting for them."""
        last = of or self.last
        assert last is not None, "no command ran before this output"
        verbatim = isinstance(last, Result) and last.verbatim
        expected = [line for line in text.splitlines() if line.strip()]
        if not verbatim:
            expected = [self.subst(line) for line in expected]
        if all(LOG_LINE.match(line) or is_gap(line) for line in expected):
            process = last if isinstance(last, Child) else self.foreground
            assert process is not None, "log lines, and no process runs"
            self.expect_log(process, expected, self.mark)
            return
        assert isinstance(last, Result), f"{last} is running: what did it print?"
        actual = [line for line in last.output.splitlines() if line.strip()]
        if exact:
            error = match_exactly(expected, actual)
        else:
            error = match_in_order(expected, actual)[1] or None
        assert error is None, f"{last.command}: {error}\n--- output:\n{last.output}"

    def expect_log(self, child: Child, expected: list[str], start: int = 0) -> None:
        """Wait until ``child``'s log has the expected lines in order, from line ``start``."""
        index = start
        for line in expected:
            if is_gap(line):
                continue
            pattern = "^" + line_pattern(line).pattern + "$"
            match = child.wait_for(pattern, TIMEOUT, index)
            index = child.lines.index(match.string, index) + 1
        self.mark = index

    # -- cleanup ------------------------------------------------------------------------------

    def close(self) -> None:
        """End every process the page started, by its pid."""
        self.collect_daemons()
        lines = [line for path in self.daemon_logs if path.is_file() for line in read_lines(path)]
        for pid in self.daemons:
            end_daemon(pid, lines)
        for child in self.children:
            if child.proc is not None and child.proc.poll() is None:
                child.send_signal(signal.SIGINT)  # lbx's workers stop with their supervisor
                with contextlib.suppress(subprocess.TimeoutExpired):  # close() kills it
                    child.proc.wait(TIMEOUT)
            child.close()


def read_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8", errors="replace").splitlines()


def listening(lines: list[str], unique: bool = True) -> list[str]:
    """The addresses of ``service NAME listening on ADDRESS`` log lines, in order (``unique``:
    each once, as every worker logs its listeners)."""
    found: list[str] = []
    for line in lines:
        match = SERVICE_LISTENING.search(line)
        if match and not (unique and match[1] in found):
            found.append(match[1])
    return found


def same_order(documented: list[str], real: list[str]) -> bool:
    """Whether the real ports sort like the documented ones (lbx sorts backends by address, so
    round robin's order in the docs holds only then)."""
    ports = [doc_port(address) for address in documented]
    real_ports = [doc_port(address) for address in real]
    return sorted(range(len(ports)), key=lambda i: ports[i] or 0) == sorted(
        range(len(real_ports)), key=lambda i: real_ports[i] or 0
    )


ORDER_ATTEMPTS = 20
CURL_ERROR = re.compile(r"curl: \((\d+)\) ([^)\n]+)")
LOG_LINE = re.compile(r"\.\.\. [A-Z]+ [\w.]+(\[\d+\])?: ")
SERVICE_LISTENING = re.compile(r": service \S+ listening on (\S+)$")
SHORT_SERVE = {"-t", "--test", "-h", "--help", "-d", "--daemon"}
BACKEND_LISTENING = re.compile(r"backend \S+ listening on (\S+)")


def end_pid(pid: int, signum: int = signal.SIGINT, timeout: float = TIMEOUT) -> bool:
    """Send ``signum`` to a process that is not our child and wait for it to exit (pidfd);
    SIGKILL if it did not within ``timeout``. False when it had to be killed."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        try:
            signal.pidfd_send_signal(fd, signum)
        except ProcessLookupError:
            return True
        if select.select([fd], [], [], timeout)[0]:
            return True
        signal.pidfd_send_signal(fd, signal.SIGKILL)
        select.select([fd], [], [], TIMEOUT)
        return False
    finally:
        os.close(fd)


def end_daemon(pid: int, log: list[str]) -> None:
    """End a daemon: SIGINT (lbx stops at once, also while handing over to a new instance).
    If it had to be killed, its workers, named in its log, are ended by their pids too."""
    if end_pid(pid, signal.SIGINT):
        return
    pattern = re.compile(rf"lbx\.workers\[{pid}\]: .* started \(pid (\d+)\)")
    for worker in {int(m[1]) for line in log if (m := pattern.search(line))}:
        end_pid(worker)


def wait_pid(pid: int, timeout: float = TIMEOUT) -> bool:
    """Wait until a process that is not our child exits; False on timeout."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)
