"""The ``lbx`` command line, run as real processes: help, plugins listing, errors and exit codes."""

from __future__ import annotations

import importlib.metadata
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

PLUGINS = Path(__file__).resolve().parent / "plugins"
ROOT = Path(__file__).resolve().parent.parent


def run(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m lbx ARGS`` with a wide terminal and the log at warning level."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LBX_")}
    environ.update({"COLUMNS": "200", "LBX_LOG": "warning", **(env or {})})
    return subprocess.run(
        [sys.executable, "-m", "lbx", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=environ,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
    )


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single line lbx printed to stderr for an error; fails on tracebacks or extra lines."""
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("lbx: error: "), lines[0]
    return lines[0]


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A TCP port on 127.0.0.1 held open (listening) by the test for its whole duration."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


# -- help -----------------------------------------------------------------------------------------


def test_serve_help_shows_pingora_flags_and_shortcuts() -> None:
    """``lbx serve -h`` documents -c, -d, -u, -t, --plugin and the command-line shortcuts."""
    result = run("serve", "-h")
    assert result.returncode == 0, result.stderr
    for flag in ("-c", "--conf", "-d", "--daemon", "-u", "--upgrade", "-t", "--test"):
        assert f" {flag} " in result.stdout, flag
    for flag in ("--plugin", "--listen", "--upstream", "--upstream-tls", "--sni", "--host"):
        assert f" {flag} " in result.stdout, flag


def test_top_level_help_lists_commands() -> None:
    """``lbx --help`` lists the ``serve`` and ``plugins`` commands."""
    result = run("--help")
    assert result.returncode == 0, result.stderr
    assert "serve" in result.stdout
    assert "plugins" in result.stdout


def test_version() -> None:
    """``lbx --version`` prints the kernel's distribution and version, then every installed
    plugin distribution with its version and plugin names."""
    result = run("--version")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"lbx-core {importlib.metadata.version('lbx-core')}"
    hashing = importlib.metadata.version("lbx-hashing")
    assert f"lbx-hashing {hashing} (consistent, fnv)" in lines
    assert any(line.startswith("lbx-roundrobin ") for line in lines)


# -- lbx plugins ----------------------------------------------------------------------------------


def test_plugins_lists_roundrobin_with_version() -> None:
    """``lbx plugins`` shows roundrobin with its installed version and its hook."""
    result = run("plugins")
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if "roundrobin" in line)
    assert importlib.metadata.version("lbx-roundrobin") in line
    assert "register_selectors" in line
    assert "when named" in line
    assert "default_peer" not in result.stdout


def test_a_plugins_option_without_the_plugin_names_it() -> None:
    """``--health-check`` without ``--plugin healthcheck``: the error says which plugin to add."""
    result = run("serve", "--plugin", "roundrobin", "--upstream", "127.0.0.1:9", "--health-check")
    assert result.returncode == 2
    assert one_error_line(result) == (
        "lbx: error: --health-check is an option of plugin healthcheck, which is not enabled: "
        "add --plugin healthcheck"
    )


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--lisen", "127.0.0.1:0"], "No such option '--lisen'. Did you mean '--listen'?"),
        (["--plugin", "healthcheck", "--health-chek"], "Did you mean '--health-check'?"),
        (
            ["--health-chek"],
            "Did you mean '--health-check' of plugin healthcheck (add --plugin healthcheck)?",
        ),
        (["--LISTEN", "127.0.0.1:0"], "No such option '--LISTEN'. Did you mean '--listen'?"),
        (["--zzzzzz"], "No such option '--zzzzzz' (see"),
    ],
)
def test_a_misspelt_option_gets_the_closest_one(args: list[str], said: str) -> None:
    """As click does for commands: the closest option of ``lbx serve``, its enabled plugins'
    or (naming the plugin to add) an installed plugin's."""
    result = run("serve", "--plugin", "roundrobin", "--upstream", "127.0.0.1:9", *args)
    assert result.returncode == 2
    line = one_error_line(result)
    assert said in line and line.endswith("(see lbx serve -h)"), line


def test_plugins_piped_keeps_each_plugin_on_one_line() -> None:
    """Into a pipe without ``COLUMNS`` (``lbx plugins | grep``) no row wraps at 80 columns."""
    result = run("plugins", env={"COLUMNS": ""})
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if "healthcheck" in line)
    assert "add_cli_options" in line and "register_background_services" in line, result.stdout


def test_plugins_json() -> None:
    """``lbx plugins --json`` is JSON with name, distribution, version and hooks."""
    result = run("plugins", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    (row,) = [r for r in rows if r["name"] == "roundrobin"]
    assert row["hooks"] == ["register_selectors"]
    assert row["distribution"] == "lbx-roundrobin"
    assert row["version"] == importlib.metadata.version("lbx-roundrobin")
    assert row["default"] is False
    assert all(r["name"] != "default_peer" for r in rows)


def test_plugins_all_json_includes_builtins() -> None:
    """``lbx plugins --all --json`` also lists the built-in ``default_peer``."""
    result = run("plugins", "--all", "--json")
    assert result.returncode == 0, result.stderr
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert rows["default_peer"]["hooks"] == ["upstream_peer"]
    assert rows["default_peer"]["distribution"] == "lbx-core"
    assert "roundrobin" in rows


# -- configuration errors: one line, exit 2 -------------------------------------------------------


def test_config_typo_is_one_line_with_file_line_and_key(tmp_path: Path) -> None:
    """A typo in the file gives one stderr line naming file, line and key, and exit code 2."""
    conf = tmp_path / "typo.yaml"
    conf.write_text(
        "version: 1\nplugins: [roundrobin]\nservices:\n"
        "  - listen: 127.0.0.1:0\n    upstreams: [127.0.0.1:9]\n    read_timout: 3\n"
    )
    result = run("serve", "-c", str(conf))
    assert result.returncode == 2
    line = one_error_line(result)
    assert f"{conf}:6:" in line
    assert "read_timout" in line
    assert "did you mean 'read_timeout'?" in line
    assert result.stdout == ""


def test_missing_config_file(tmp_path: Path) -> None:
    """A config file that does not exist is one line naming it, exit 2."""
    conf = tmp_path / "missing.yaml"
    result = run("serve", "-c", str(conf))
    assert result.returncode == 2
    assert str(conf) in one_error_line(result)


def test_invalid_yaml_is_one_line(tmp_path: Path) -> None:
    """A YAML syntax error gives one line with the file and line, exit 2."""
    conf = tmp_path / "bad.yaml"
    conf.write_text("version: 1\nservices: [\n")
    result = run("serve", "-t", "-c", str(conf))
    assert result.returncode == 2
    line = one_error_line(result)
    assert f"{conf}:3: invalid YAML" in line


def test_the_plan_says_where_discovered_backends_come_from(tmp_path: Path) -> None:
    """``-t`` on a service whose backends a source gives once lbx runs names the source, not an
    empty list."""
    (tmp_path / "backends.yaml").write_text("- 127.0.0.1:9\n")
    conf = tmp_path / "lbx.yaml"
    conf.write_text(
        "plugins: [roundrobin, file]\nservices:\n  - name: web\n    listen: 127.0.0.1:0\n"
        "    discovery: {source: file, path: backends.yaml}\n"
    )
    result = run("serve", "-t", "-c", str(conf))
    assert result.returncode == 0, result.stderr
    assert "service web: listen 127.0.0.1:0 -> (from file discovery) by roundrobin" in (
        result.stdout
    )


def test_bad_upstream_shortcut() -> None:
    """``--upstream nonsense`` is one line naming the flag and the value, exit 2."""
    result = run("serve", "--plugin", "roundrobin", "--upstream", "nonsense")
    assert result.returncode == 2
    assert "--upstream 'nonsense'" in one_error_line(result)
    twice = ("--upstream", "127.0.0.1:9")
    result = run("serve", "-t", "--plugin", "roundrobin", *twice, *twice)
    assert result.returncode == 2
    assert one_error_line(result) == "lbx: error: --upstream 127.0.0.1:9 is given twice: " + (
        "list a backend once"
    )


@pytest.mark.parametrize("host", ["a\r\nX-B: 1", "a b", ".."])
def test_a_host_shortcut_that_is_no_host_is_refused(host: str) -> None:
    """``--host`` goes into every upstream request head: checked as ``host:`` is."""
    shortcuts = ("--upstream", "127.0.0.1:9", "--host", host)
    result = run("serve", "-t", "--plugin", "roundrobin", *shortcuts)
    assert result.returncode == 2
    assert one_error_line(result) == "lbx: error: --host must be host[:port] (as nginx checks Host)"


def test_bad_listen_shortcut() -> None:
    """``--listen nonsense`` is one line naming the flag, exit 2."""
    result = run(
        "serve", "--plugin", "roundrobin", "--listen", "nonsense", "--upstream", "127.0.0.1:9"
    )
    assert result.returncode == 2
    assert "--listen 'nonsense'" in one_error_line(result)


def test_unknown_plugin_names_installed_ones() -> None:
    """``--plugin nosuchplugin`` is one line naming the installed plugins, exit 2."""
    result = run("serve", "--plugin", "nosuchplugin", "--upstream", "127.0.0.1:9")
    assert result.returncode == 2
    line = one_error_line(result)
    assert "nosuchplugin" in line
    assert "installed plugins:" in line and "roundrobin" in line.split("installed plugins:")[1]


def test_invalid_plugin_file_is_one_line() -> None:
    """A plugin file breaking the hook contract is one line naming the plugin and hook, exit 2."""
    result = run(
        "serve",
        "-t",
        "--plugin",
        str(PLUGINS / "async_impl_of_sync_hook.py"),
        "--plugin",
        "roundrobin",
        "--upstream",
        "127.0.0.1:9",
    )
    assert result.returncode == 2
    line = one_error_line(result)
    assert "async_impl_of_sync_hook" in line
    assert "fail_to_connect" in line


def test_impl_with_unknown_argument_is_one_line() -> None:
    """An impl asking for an argument the hook does not have is one line, exit 2."""
    result = run(
        "serve",
        "-t",
        "--plugin",
        str(PLUGINS / "unknown_argument.py"),
        "--plugin",
        "roundrobin",
        "--upstream",
        "127.0.0.1:9",
    )
    assert result.returncode == 2
    line = one_error_line(result)
    assert "unknown_argument" in line
    assert "request" in line


def test_plugin_file_raising_on_import_is_one_line() -> None:
    """A plugin file that raises on import is one line naming the file, exit 2."""
    path = str(PLUGINS / "raises_on_import.py")
    result = run(
        "serve", "-t", "--plugin", path, "--plugin", "roundrobin", "--upstream", "127.0.0.1:9"
    )
    assert result.returncode == 2
    line = one_error_line(result)
    assert path in line
    assert "boom at import time" in line


def test_upstreams_without_selection_plugin() -> None:
    """A service with upstreams but no selection plugin says to add ``--plugin roundrobin``."""
    result = run("serve", "-t", "--upstream", "127.0.0.1:9")
    assert result.returncode == 2
    assert "--plugin roundrobin" in one_error_line(result)


def test_disabled_selection_plugin_in_config(tmp_path: Path) -> None:
    """``--plugin no:roundrobin`` overrides ``plugins: [roundrobin]`` from the file."""
    conf = tmp_path / "lbx.yaml"
    conf.write_text(
        "plugins: [roundrobin]\nservices:\n  - listen: 127.0.0.1:0\n    upstreams: [127.0.0.1:9]\n"
    )
    assert run("serve", "-t", "-c", str(conf)).returncode == 0
    result = run("serve", "-t", "-c", str(conf), "--plugin", "no:roundrobin")
    assert result.returncode == 2
    assert "--plugin roundrobin" in one_error_line(result)


def test_daemon_without_daemon_plugin() -> None:
    """``-d`` without the daemon plugin is one clear line, exit 2."""
    result = run(
        "serve",
        "-d",
        "--plugin",
        "roundrobin",
        "--plugin",
        "no:daemon",
        "--upstream",
        "127.0.0.1:9",
    )
    assert result.returncode == 2
    line = one_error_line(result)
    assert "-d/--daemon" in line
    assert "daemon plugin" in line


def test_upgrade_without_upgrade_plugin() -> None:
    """``-u`` without the upgrade plugin is one clear line, exit 2."""
    result = run(
        "serve",
        "-u",
        "--plugin",
        "roundrobin",
        "--plugin",
        "no:upgrade",
        "--upstream",
        "127.0.0.1:9",
    )
    assert result.returncode == 2
    assert "upgrade plugin" in one_error_line(result)


def test_nothing_to_serve() -> None:
    """``lbx serve`` with no config and no shortcuts says there is nothing to serve, exit 2."""
    result = run("serve", "-t")
    assert result.returncode == 2
    assert "nothing to serve" in one_error_line(result)


def test_unknown_option_is_refused() -> None:
    """A misspelled option is an error, not silently ignored."""
    result = run(
        "serve", "-t", "--plugin", "roundrobin", "--upstream", "127.0.0.1:9", "--lissten", "x"
    )
    assert result.returncode == 2
    assert "--lissten" in result.stderr
    assert "Traceback" not in result.stderr


def test_bogus_log_level() -> None:
    """``LBX_LOG=bogus`` is refused with exit code 2 and names the variable."""
    result = run(
        "serve",
        "-t",
        "--plugin",
        "roundrobin",
        "--upstream",
        "127.0.0.1:9",
        env={"LBX_LOG": "bogus"},
    )
    assert result.returncode == 2
    assert "LBX_LOG" in one_error_line(result)


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (("reload", "--bogus"), "No such option '--bogus' (see "),
        (("bogus",), "No such command 'bogus' (see "),
        (("serve", "--listen"), "Option '--listen' requires an argument (see lbx serve -h)"),
        (("serve", "--bogus"), "No such option '--bogus' (see lbx serve -h)"),
        (("plugins", "extra"), "Got unexpected extra argument (extra)"),
        (("backend", "weight", "web", "127.0.0.1:1", "0"), "weight: expected a whole number"),
    ],
)
def test_a_bad_option_or_argument_of_any_command_is_one_line(
    args: tuple[str, ...], said: str
) -> None:
    """Usage errors of every command, the plugins' too: one line saying what, exit 2."""
    result = run(*args)
    assert result.returncode == 2
    line = one_error_line(result)
    assert said in line and line.endswith(" -h)")  # where to read the command's usage


# -- lbx serve -t ---------------------------------------------------------------------------------


def test_check_prints_plan_without_binding(tmp_path: Path, busy_port: int) -> None:
    """``-t`` validates, prints the plan and exits 0 without binding (the port is held by us)."""
    conf = tmp_path / "lbx.yaml"
    conf.write_text(
        "version: 1\nplugins: [roundrobin]\nservices:\n"
        f"  - name: web\n    listen: 127.0.0.1:{busy_port}\n"
        '    upstreams: [127.0.0.2:9, 127.0.0.1:9, {address: "127.0.0.3:9", weight: 3}]\n'
    )
    result = run("serve", "-t", "-c", str(conf))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert f"configuration {conf} is valid" in result.stdout
    assert "plugin roundrobin" in result.stdout
    assert (
        f"service web: listen 127.0.0.1:{busy_port} -> 127.0.0.1:9, 127.0.0.2:9, "
        "127.0.0.3:9 weight=3 by roundrobin" in (result.stdout)
    )


def test_check_with_plugin_section_file(tmp_path: Path) -> None:
    """A plugin listed by path in ``plugins:`` declares its section, which ``-t`` validates."""
    plugin = tmp_path / "section_plugin.py"
    plugin.write_text((PLUGINS / "section_plugin.py").read_text())
    conf = tmp_path / "lbx.yaml"
    conf.write_text(
        "plugins: [roundrobin, section_plugin.py]\n"
        "section_plugin:\n  greeting: hi\n"
        "services:\n  - listen: 127.0.0.1:0\n    upstreams: [127.0.0.1:9]\n"
        "    section_plugin_tag: t\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    ok = run("serve", "-t", "-c", str(conf), cwd=elsewhere)
    assert ok.returncode == 0, ok.stderr
    assert f"plugin section_plugin: file {plugin}" in ok.stdout
    conf.write_text(conf.read_text().replace("greeting: hi", "greting: hi"))
    bad = run("serve", "-t", "-c", str(conf), cwd=elsewhere)
    assert bad.returncode == 2
    line = one_error_line(bad)
    assert f"{conf}:3:" in line
    assert "did you mean 'greeting'?" in line


def test_reload_validates_with_the_plugins_the_command_line_named(tmp_path: Path) -> None:
    """``lbx reload -c`` validates the file before signalling: a plugin's section is known when
    the plugin is named with ``--plugin``, as the running lbx's command line enabled it."""
    conf = tmp_path / "lbx.yaml"
    pid_file = tmp_path / "lbx.pid"  # missing: a file that validates gets as far as signalling
    conf.write_text(
        f"pid_file: {pid_file}\nplugins: [roundrobin]\nsection_plugin:\n  greeting: hi\n"
        "services:\n  - listen: 127.0.0.1:0\n    upstreams: [127.0.0.1:9]\n"
    )
    unknown = run("reload", "-c", str(conf))
    assert unknown.returncode == 2
    assert one_error_line(unknown).startswith(f"lbx: error: {conf}:3: section_plugin: unknown")
    assert unknown.stderr.endswith("; not reloaded\n")
    named = run("reload", "-c", str(conf), "--plugin", str(PLUGINS / "section_plugin.py"))
    assert named.returncode == 1
    assert one_error_line(named) == f"lbx: error: cannot signal the lbx of {pid_file}: " + (
        "no such file (an lbx writes its pid_file with -d; one in the foreground reloads on "
        "kill -HUP PID)"
    )


# -- run time -------------------------------------------------------------------------------------


def test_port_in_use_is_one_line_exit_1(busy_port: int) -> None:
    """A listen port in use exits 1 with one line "cannot listen on ..." and no traceback."""
    result = run(
        "serve",
        "--plugin",
        "roundrobin",
        "--listen",
        f"127.0.0.1:{busy_port}",
        "--upstream",
        "127.0.0.1:9",
    )
    assert result.returncode == 1
    line = one_error_line(result)
    assert f"cannot listen on 127.0.0.1:{busy_port}" in line


def test_plugin_configure_raising_is_one_line_exit_1() -> None:
    """A plugin whose ``configure`` raises something lbx does not know: one line naming the
    plugin, the hook and the error, exit 1; the traceback only at ``LBX_LOG=debug``."""
    args = ["serve", "--plugin", str(PLUGINS / "configure_raises.py"), "--plugin", "roundrobin"]
    args += ["--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:9"]
    result = run(*args)
    assert result.returncode == 1
    assert one_error_line(result) == (
        "lbx: error: plugin 'configure_raises' failed in configure: "
        "RuntimeError: configure_raises: boom in configure"
    )
    debug = run(*args, env={"LBX_LOG": "debug"})
    assert debug.returncode == 1
    assert "Traceback" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1] == one_error_line(result)


@pytest.mark.parametrize("threads", [1, 2])
def test_background_service_failing_before_ready_is_one_line(tmp_path: Path, threads: int) -> None:
    """A ``ready=True`` background service that raises before it is ready: one line naming the
    service and the error, exit 1, also from the background-services process of ``threads: 2``.
    """
    conf = tmp_path / "lbx.yaml"
    conf.write_text(
        f"threads: {threads}\nplugins: [roundrobin, {PLUGINS / 'service_fails_before_ready.py'}]\n"
        "services:\n  - listen: 127.0.0.1:0\n    upstreams: [127.0.0.1:9]\n"
    )
    result = run("serve", "-c", str(conf))
    assert result.returncode == 1
    line = one_error_line(result)
    assert line.endswith(
        "background service 'failing service' failed to start: "
        "LookupError: no such thing: the service cannot start"
    ), line


def test_demo_backends_on_a_port_in_use_is_one_line(tmp_path: Path, busy_port: int) -> None:
    """``make demo`` twice: the demo backends cannot listen, one line and exit 1."""
    demo = (ROOT / "example_conf" / "demo.yaml").read_text()
    conf = tmp_path / "demo.yaml"
    conf.write_text(
        demo.replace("../contrib", str(ROOT / "contrib"))
        .replace("127.0.0.1:8001", f"127.0.0.1:{busy_port}")
        .replace("127.0.0.1:6188", "127.0.0.1:0")
    )
    result = run("serve", "-c", str(conf))
    assert result.returncode == 1
    line = one_error_line(result)
    assert line.startswith("lbx: error: background service 'demo backends' failed to start: ")
    assert str(busy_port) in line and "address already in use" in line.lower()


# -- several errors in one file: the first in the file, file:line for plugins: too -----------------


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("roundrobn", "unknown plugin 'roundrobn'"),
        ("./missing.py", "missing.py' does not exist"),
        ("no:default_peer", "built in and cannot be disabled"),
    ],
)
def test_plugins_entry_errors_have_file_and_line(tmp_path: Path, entry: str, message: str) -> None:
    """An entry of ``plugins:`` that cannot be loaded: file:line and its place, exit 2."""
    conf = tmp_path / "lbx.yaml"
    conf.write_text(
        "version: 1\n"
        "plugins:\n"
        "  - roundrobin\n"
        f"  - {entry}\n"
        "services:\n  - listen: 127.0.0.1:0\n    upstreams: [127.0.0.1:9]\n"
    )
    result = run("serve", "-t", "-c", str(conf))
    assert result.returncode == 2
    line = one_error_line(result)
    assert line.startswith(f"lbx: error: {conf}:4: plugins[1]: "), line
    assert message in line


def test_first_error_in_the_file_is_reported(tmp_path: Path) -> None:
    """Of several errors, the one reported is the first in the file, whatever lbx checks
    first (the plugins are loaded before the rest is validated, and server keys used to be
    checked in lbx's order)."""
    conf = tmp_path / "lbx.yaml"
    lines = [
        "version: 1",
        "upstream_keepalive_pool_size: many",  # line 2: the first error
        "threads: some",
        "plugins: [roundrobn]",
        "services:",
        "  - listen: 127.0.0.1:0",
        "    upstreams: [127.0.0.1:9]",
        "    conect_timeout: 1",
    ]
    expected = [
        (2, "upstream_keepalive_pool_size: expected a whole number"),
        (3, "threads: expected a whole number"),
        (4, "plugins[0]: unknown plugin 'roundrobn'"),
        (8, "services[0].conect_timeout: unknown key; did you mean 'connect_timeout'?"),
    ]
    for line_number, message in expected:  # fix each error in turn: the next one shows
        conf.write_text("\n".join(lines) + "\n")
        result = run("serve", "-t", "-c", str(conf))
        assert result.returncode == 2
        assert one_error_line(result).startswith(f"lbx: error: {conf}:{line_number}: {message}"), (
            result.stderr
        )
        lines[line_number - 1] = {
            2: "upstream_keepalive_pool_size: 8",
            3: "threads: 1",
            4: "plugins: [roundrobin]",
            8: "    connect_timeout: 1",
        }[line_number]
    conf.write_text("\n".join(lines) + "\n")
    assert run("serve", "-t", "-c", str(conf)).returncode == 0
