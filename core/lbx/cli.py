"""The ``lbx`` command: ``serve`` (Pingora's flags keep their letters) and ``plugins``."""

from __future__ import annotations

import difflib
import json
import logging
import os
import sys
from typing import TYPE_CHECKING, Any, NoReturn

import rich_click as click

from lbx import signals
from lbx.errors import ConfigError, StartupError, describe

if TYPE_CHECKING:
    from lbx.lb import Backend
    from lbx.plugins import LbxPluginManager

LOG_LEVELS = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "off": logging.CRITICAL + 1,
}


def setup_logging() -> None:
    """``LBX_LOG`` (like ``RUST_LOG``): trace, debug, info (default), warn, error or off."""
    value = os.environ.get("LBX_LOG", "info").strip().lower()
    level = LOG_LEVELS.get(value)
    if level is None:
        raise click.UsageError(
            f"LBX_LOG={value!r} is not a log level; use one of {', '.join(LOG_LEVELS)}"
        )
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
        stream=sys.stderr,
    )


def _print_versions(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from lbx.plugins import versions

    for line in versions():
        click.echo(line)
    ctx.exit()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_versions,
    help="Show the version of lbx and of each installed plugin, and exit.",
)
def cli() -> None:
    """lbx: a programmable HTTP load balancer, in the spirit of Pingora."""


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("-c", "--conf", metavar="FILE", help="YAML config file.")
@click.option(
    "-d", "--daemon", is_flag=True, help="Run in the background (needs the daemon plugin)."
)
@click.option(
    "-u",
    "--upgrade",
    is_flag=True,
    help="Take the listening sockets over from the running instance (needs the upgrade plugin).",
)
@click.option(
    "-t", "--test", is_flag=True, help="Check the config and plugins, print what would run, exit."
)
@click.option(
    "--plugin",
    "plugins",
    multiple=True,
    metavar="NAME",
    help="Enable a plugin: installed name, path to a .py file, or dotted module; no:NAME disables.",
)
@click.option(
    "--listen",
    multiple=True,
    metavar="ADDR",
    help="Listen address (host:port, [v6]:port, unix:/path).",
)
@click.option(
    "--upstream",
    multiple=True,
    metavar="ADDR",
    help="Upstream backend (ip:port, name:port, unix:/path).",
)
@click.option(
    "--upstream-tls", is_flag=True, help="Connect to upstreams with TLS (certificates verified)."
)
@click.option("--sni", metavar="NAME", help="TLS server name for upstreams.")
@click.option("--host", metavar="NAME", help="Host header sent to upstreams.")
@click.pass_context
def serve(
    ctx: click.Context,
    conf: str | None,
    daemon: bool,
    upgrade: bool,
    test: bool,
    plugins: tuple[str, ...],
    listen: tuple[str, ...],
    upstream: tuple[str, ...],
    upstream_tls: bool,
    sni: str | None,
    host: str | None,
) -> None:
    """Run the load balancer."""
    setup_logging()
    from lbx.build import build_from_file

    loaded: list[LbxPluginManager] = []
    try:
        server = build_from_file(
            conf,
            plugins,
            loaded,
            listen=listen,
            upstreams=upstream,
            upstream_tls=upstream_tls,
            sni=sni,
            host=host,
            daemon=daemon,
            upgrade=upgrade,
            test=test,
            options=lambda pm: _plugin_options(ctx, pm),
        )
    except ConfigError as exc:
        _fail(str(exc), 2)
    except StartupError as exc:
        _fail(str(exc), 1)
    except Exception as exc:  # a plugin's start-up hook failed: one line, the traceback at debug
        _fail_unexpected(exc, loaded[0] if loaded else None)
    if test:
        _print_plan(server)
        return
    try:
        code = server.run()
    except (StartupError, ConfigError) as exc:
        _fail(str(exc), 1)
    except KeyboardInterrupt:
        code = 130
    except Exception as exc:
        if server.ready:
            raise  # a crash while serving: its traceback is what to look at
        _fail_unexpected(exc, server.pm)
    sys.exit(code)


def _plugin_options(ctx: click.Context, pm: Any) -> dict[str, Any]:
    """Parse the arguments left over by ``serve`` with the options plugins added."""
    options = [option for batch in pm.hook.add_cli_options() for option in batch]
    if not ctx.args and not options:
        return {}
    command = click.Command("serve", params=options)
    try:
        with command.make_context("lbx serve", list(ctx.args)) as sub:
            return dict(sub.params)
    except click.NoSuchOption as exc:
        raise ConfigError(_unknown_option(exc.option_name, ctx, options)) from None
    except click.UsageError as exc:
        raise ConfigError(_usage_line(exc.format_message(), "lbx serve")) from None


def _unknown_option(name: str, ctx: click.Context, enabled: list[click.Option]) -> str:
    """What to say about an option ``lbx serve`` does not know: which plugin adds it when one
    installed does (the usual slip: the plugin left out), else the closest known option."""
    offered = _options_of_installed_plugins()
    owner = offered.get(name)
    if owner is not None:
        return f"{name} is an option of plugin {owner}, which is not enabled: add --plugin {owner}"
    known = [opt for param in (*ctx.command.params, *enabled) for opt in param.opts]
    # Compared without the dashes, which every option shares (--bogus is not like --host), and
    # without case (--LISTEN is --listen).
    names = {opt.lstrip("-").lower(): opt for opt in [*offered, *known]}
    typed = name.lstrip("-").lower()
    close = [names[n] for n in difflib.get_close_matches(typed, list(names), n=1)]
    if close and close[0] not in known:
        owner = offered[close[0]]
        return (
            f"No such option {name!r}. Did you mean {close[0]!r} of plugin {owner} "
            f"(add --plugin {owner})? (see lbx serve -h)"
        )
    hint = f". Did you mean {close[0]!r}?" if close else ""
    return _usage_line(f"No such option {name!r}{hint}", "lbx serve")


def _options_of_installed_plugins() -> dict[str, str]:
    """The options installed plugins add to ``lbx serve``, each with the plugin that adds it."""
    from lbx.plugins import LbxPluginManager, _load_entry_point, installed_entry_points

    offered: dict[str, str] = {}
    for name, entry_point in installed_entry_points().items():
        pm = LbxPluginManager()
        try:
            _load_entry_point(pm, entry_point)
            batches = pm.hook.add_cli_options()
        except Exception:  # a broken plugin offers nothing here; enabling it says what is wrong
            continue
        for batch in batches:
            for added in batch:
                offered.update((opt, name) for opt in added.opts)
    return offered


PIPED_WIDTH = 1000
"""Columns of a table printed into a pipe or file (without ``COLUMNS``): one line per row."""

MAX_PID = 2**22
"""Linux's largest ``pid_max``: a bigger number in a pid file is not a pid."""


def _print_plan(server: Any) -> None:
    config = server.config
    click.echo(f"lbx: configuration {config.path or '(command line)'} is valid")
    for name, info in server.pm.infos.items():
        click.echo(f"  plugin {name}: {info.source}")
    for service in server.services:
        lb = service.load_balancer
        upstreams = ", ".join(map(_planned, lb.backends.items)) if lb else "(chosen by plugins)"
        found = server.discovery.get(service.name)
        if found is not None and found.dynamic:  # its backends come once lbx runs
            upstreams = f"(from {found.source_name} discovery)"
        selection = f" by {lb.selector_name}" if lb else ""
        listen = [*service.config.listen, *(f"{a} (TLS)" for a in service.config.tls_listen)]
        click.echo(
            f"  service {service.name}: listen {', '.join(listen)} -> {upstreams}{selection}"
        )
    if config.threads > 1:
        click.echo(f"  {config.threads} worker processes")


def _planned(backend: Backend) -> str:
    """A backend in ``-t``'s plan: its address, and its weight as nginx writes it unless 1."""
    return backend.addr if backend.weight == 1 else f"{backend.addr} weight={backend.weight}"


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"lbx: error: {message}", err=True)
    sys.exit(code)


def _fail_unexpected(exc: BaseException, pm: LbxPluginManager | None) -> NoReturn:
    """A start-up failure lbx did not foresee (a plugin's bug, most often): one line naming the
    plugin whose hook raised, if one did; the traceback only at ``LBX_LOG=debug``."""
    from lbx.plugins import blame

    logging.getLogger("lbx").debug("start-up failed", exc_info=exc)
    culprit = blame(pm, exc) if pm is not None else None
    where = f"plugin {culprit[0]!r} failed in {culprit[1]}: " if culprit else ""
    _fail(f"{where}{describe(exc)}", 1)


@cli.command()
@click.option("-c", "--conf", metavar="FILE", help="The running lbx's config file.")
@click.option("--pid-file", metavar="PATH", help="Where the running lbx wrote its pid (pid_file).")
@click.option(
    "--plugin",
    "plugins",
    multiple=True,
    metavar="NAME",
    help="A plugin the running lbx's command line enabled (to validate FILE as it will).",
)
def reload(conf: str | None, pid_file: str | None, plugins: tuple[str, ...]) -> None:
    """Reload a running lbx: SIGHUP to the pid in its pid_file; it re-reads its config file.
    With -c, the file is validated first (as serve -t does): one that would be refused is not
    sent."""
    import signal

    if conf:
        setup_logging()
        from lbx.build import build_from_file

        loaded: list[LbxPluginManager] = []
        try:
            server = build_from_file(conf, plugins, loaded, test=True)
        except ConfigError as exc:
            _fail(f"{exc}; not reloaded", 2)
        except StartupError as exc:
            _fail(f"{exc}; not reloaded", 1)
        except Exception as exc:  # a plugin's start-up hook failed on this file
            _fail_unexpected(exc, loaded[0] if loaded else None)
        pid_file = pid_file or server.config.pid_file
    pid_file = pid_file or "/tmp/lbx.pid"
    try:
        with open(pid_file) as file:
            text = file.read().strip()
        # ASCII digits of a pid from 1 up: 0 would signal this command's own process group.
        if not (text.isascii() and text.isdigit() and 1 <= int(text) <= MAX_PID):
            _fail(f"cannot signal the lbx of {pid_file}: it holds {text[:40]!r}, not a pid", 1)
        pid = int(text)
        os.kill(pid, signal.SIGHUP)
    except FileNotFoundError:
        _fail(  # the usual case: an lbx in the foreground, which writes no pid file
            f"cannot signal the lbx of {pid_file}: no such file (an lbx writes its pid_file "
            "with -d; one in the foreground reloads on kill -HUP PID)",
            1,
        )
    except OSError as exc:
        _fail(f"cannot signal the lbx of {pid_file}: {exc.strerror or exc}", 1)
    click.echo(f"lbx: reload requested (SIGHUP to pid {pid}); its log says what it applied")


@cli.command()
@click.option("--all", "show_all", is_flag=True, help="Include built-in plugins.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def plugins(show_all: bool, as_json: bool) -> None:
    """List installed plugins: name, version, hooks, and whether they are on by default."""
    from lbx.plugins import DISTRIBUTION, describe_builtins, describe_installed

    rows = (describe_builtins() if show_all else []) + describe_installed()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no plugins installed (pip install lbx-roundrobin, ...)")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("name", "version", "enabled", "hooks")
    for row in rows:
        enabled = (
            "always"
            if row.get("distribution") == DISTRIBUTION
            else ("by default" if row["default"] else "when named")
        )
        hooks = ", ".join(row["hooks"]) if isinstance(row["hooks"], list) else ""
        if "error" in row:
            hooks = f"[red]{row['error']}[/red]"
        table.add_row(str(row["name"]), str(row["version"]), enabled, hooks)
    # Piped (grep, awk), each plugin stays one line instead of wrapping at 80 columns.
    piped = not sys.stdout.isatty() and not os.environ.get("COLUMNS")
    Console(width=PIPED_WIDTH if piped else None).print(table)


def main() -> None:
    signals.restore()  # a background job may have started lbx with SIGINT and SIGQUIT ignored
    if sys.argv[1:2] != ["serve"]:  # serve never needs them: keep its start-up lean
        _add_plugin_commands()
    try:
        cli(standalone_mode=False)
    except click.UsageError as exc:  # a bad option or argument, of any command: one line
        command = exc.ctx.command_path if exc.ctx is not None else _command_in(sys.argv[1:])
        _fail(_usage_line(exc.format_message(), command), exc.exit_code)
    except click.ClickException as exc:
        _fail(exc.format_message(), exc.exit_code)
    except click.Abort:  # Ctrl-C at a prompt
        _fail("aborted", 1)


def _usage_line(message: str, command: str) -> str:
    """A usage error as one line that says where to read the command's usage."""
    return f"{message.rstrip('.')} (see {command} -h)"


def _command_in(args: list[str]) -> str:
    """The command a usage error click raised without its context is about (a missing option
    argument, for one): ``lbx NAME`` when the first argument names a command."""
    if args and args[0] in cli.commands:
        return f"lbx {args[0]}"
    return "lbx"


def _add_plugin_commands() -> None:
    """Let every installed plugin add subcommands (``register_commands``)."""
    from lbx.plugins import LbxPluginManager, _load_entry_point, installed_entry_points

    pm = LbxPluginManager()
    for entry_point in installed_entry_points().values():
        try:
            _load_entry_point(pm, entry_point)
        except ConfigError as exc:
            click.echo(f"lbx: warning: {exc}", err=True)
    pm.hook.register_commands(cli=cli)
