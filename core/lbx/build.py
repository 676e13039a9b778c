"""One way to build a server: a configuration document, plugins and the command line's
shortcuts in, a prepared ``Server`` out. ``lbx serve``, ``lbx.testing`` and the benchmark all
build theirs here, so they run the same start-up.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

from lbx import config as config_module
from lbx.errors import PluginLoadError
from lbx.plugins import LbxPluginManager, get_plugin_manager
from lbx.server import Server


def load_plugins(
    document: config_module.Document, cli_plugins: Sequence[str] = ()
) -> tuple[LbxPluginManager, config_module.Problems]:
    """The plugin manager for ``--plugin`` values then the file's ``plugins:``. An entry of the
    file that cannot be loaded becomes a config error at its line, collected so that an
    earlier error in the file is reported first; a bad ``--plugin`` value is raised."""
    cli_blocked: set[str] = set()
    for arg in cli_plugins:  # the command line has the last word over the file's plugins:
        if arg.startswith("no:"):
            cli_blocked.add(arg[3:])
        else:
            cli_blocked.discard(arg)
    entries = config_module.plugin_entries(document)
    args = [*cli_plugins, *(arg for arg, _ in entries), *(f"no:{n}" for n in sorted(cli_blocked))]
    problems = config_module.Problems()

    def located(index: int, error: PluginLoadError) -> None:
        position = index - len(cli_plugins)
        if not 0 <= position < len(entries):
            raise error
        problems.errors.append(document.error(entries[position][1], error.message))

    return get_plugin_manager(args, on_error=located), problems


def build_server(
    pm: LbxPluginManager,
    document: config_module.Document,
    problems: config_module.Problems | None = None,
    *,
    listen: Sequence[str] = (),
    upstreams: Sequence[str] = (),
    upstream_tls: bool = False,
    sni: str | None = None,
    host: str | None = None,
    daemon: bool = False,
    upgrade: bool = False,
    test: bool = False,
    options: Callable[[LbxPluginManager], dict[str, Any]] | None = None,
) -> Server:
    """Validate the configuration (with the keys plugins declare), apply the shortcuts and
    flags, run ``configure`` and prepare the server. Every problem is a ``ConfigError``;
    ``options`` parses the plugins' command-line options (``lbx serve``'s extra arguments)."""
    schema = config_module.ConfigSchema()
    pm.hook.add_config_keys(schema=schema)
    config = config_module.build_config(document, schema, problems)
    config_module.apply_shortcuts(
        config,
        listen=tuple(listen),
        upstreams=tuple(upstreams),
        upstream_tls=upstream_tls,
        sni=sni,
        host=host,
    )
    config.daemon = config.daemon or daemon
    config.upgrade = upgrade
    config.test = test
    config.options = options(pm) if options is not None else {}
    pm.hook.configure(config=config, plugin_manager=pm)
    server = Server(config, pm)
    server.prepare()
    return server


def build_from_file(
    path: str | None,
    cli_plugins: Sequence[str] = (),
    loaded: list[LbxPluginManager] | None = None,
    **kwargs: Any,
) -> Server:
    """``lbx serve``: read the config file (or none), load the plugins, build the server. The
    server remembers how, so that a reload (SIGHUP) builds the next one the same way from the
    file as it is then (``Server.rebuild``). ``loaded`` receives the plugin manager (to name a
    plugin that failed)."""
    document = (
        config_module.read_document(path) if path else config_module.parse_document("version: 1\n")
    )
    pm, problems = load_plugins(document, cli_plugins)
    if loaded is not None:
        loaded.append(pm)
    server = build_server(pm, document, problems, **kwargs)
    kwargs["upgrade"] = False  # a reload takes nothing over: the listeners are this process's
    server.rebuild = functools.partial(build_from_file, path, cli_plugins, **kwargs)
    return server
