"""The plugin manager: built from a factory, plugins resolved with pytest's ``-p`` semantics.

A plugin takes part only when enabled: built-in plugins always, ``DEFAULT_PLUGINS`` when installed,
anything else when named with ``--plugin`` or in the YAML ``plugins:`` list. Installing a package
never changes what an existing command line does.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import importlib.util
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import pluggy

from lbx import hookspecs
from lbx._hookcall import AsyncHookRelay, validate_impls
from lbx.errors import PluginLoadError, PluginValidationError

ENTRY_POINT_GROUP = "lbx"

DISTRIBUTION = "lbx-core"
"""The kernel's distribution (``pip install lbx-core``; ``lbx`` on the index is another project)."""

BUILTIN_PLUGINS = ("default_peer",)
"""In-tree plugins (``lbx.builtin.<name>``), always registered; they cannot be disabled."""

DEFAULT_PLUGINS = ("daemon", "upgrade")
"""Installed plugins that are enabled without being named (so ``-d`` and ``-u`` just work)."""


@dataclass(frozen=True)
class PluginInfo:
    """Where a registered plugin came from, for ``lbx plugins`` and error messages."""

    name: str
    source: str
    distribution: str | None = None
    version: str | None = None


class LbxPluginManager(pluggy.PluginManager):
    """pluggy's manager plus colour checks at registration and ``ahook`` for awaitable hooks."""

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT_NAME)
        self.add_hookspecs(hookspecs)
        self.ahook = AsyncHookRelay(self)
        self.infos: dict[str, PluginInfo] = {}

    def register(self, plugin: object, name: str | None = None) -> str | None:
        """Register ``plugin``; refuse impls of unknown hooks or of the wrong colour."""
        try:
            registered = super().register(plugin, name)
        except pluggy.PluginValidationError as exc:
            raise PluginValidationError(" ".join(str(exc).split())) from exc
        if registered is None:
            return None
        try:
            for caller in self.get_hookcallers(plugin) or ():
                if caller.spec is None:
                    if any(i.optionalhook for i in caller.get_hookimpls() if i.plugin is plugin):
                        continue
                    close = difflib.get_close_matches(caller.name, self._spec_names(), n=1)
                    hint = f"; did you mean {close[0]!r}?" if close else ""
                    raise PluginValidationError(
                        f"plugin {registered!r}: {caller.name!r} is not an lbx hook{hint}"
                    )
                validate_impls(caller, plugin)
        except PluginValidationError:
            self.unregister(plugin)
            raise
        return registered

    def _spec_names(self) -> list[str]:
        return [name for name in dir(hookspecs) if hasattr(getattr(hookspecs, name), "lbx_spec")]


def installed_entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    """Every plugin installed in the ``lbx`` entry-point group, by name."""
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def get_plugin_manager(
    plugin_args: Sequence[str] = (),
    *,
    defaults: bool = True,
    on_error: Callable[[int, PluginLoadError], None] | None = None,
) -> LbxPluginManager:
    """A new plugin manager with the built-ins, the defaults and ``plugin_args`` registered.

    ``plugin_args`` are ``--plugin`` values (then YAML ``plugins:`` entries) in order: ``no:NAME``
    disables NAME, a later ``NAME`` enables it again. ``on_error(index, error)``, when given,
    receives the error of the argument at ``index`` instead of it being raised (it may raise
    it), and the other arguments are still loaded.
    """

    def failed(index: int, error: PluginLoadError) -> None:
        if on_error is None:
            raise error
        on_error(index, error)

    pm = LbxPluginManager()
    blocked: set[str] = set()
    for index, arg in enumerate(plugin_args):
        if arg.startswith("no:"):
            name = arg[3:]
            if name in BUILTIN_PLUGINS:
                failed(
                    index, PluginLoadError(f"plugin {name!r} is built in and cannot be disabled")
                )
                continue
            blocked.add(name)
        else:
            blocked.discard(arg)
    for name in blocked:
        pm.set_blocked(name)
    for name in BUILTIN_PLUGINS:
        module = importlib.import_module(f"lbx.builtin.{name}")
        pm.register(module, name)
        pm.infos[name] = PluginInfo(name, "built-in")
    if defaults:
        installed = installed_entry_points()
        for name in DEFAULT_PLUGINS:
            if name in installed and not pm.is_blocked(name):
                _load_entry_point(pm, installed[name])
    for index, arg in enumerate(plugin_args):
        if not arg.startswith("no:"):
            try:
                load_plugin_arg(pm, arg)
            except PluginLoadError as exc:
                failed(index, exc)
    return pm


def load_plugin_arg(pm: LbxPluginManager, arg: str) -> None:
    """Resolve one ``--plugin`` value: a ``.py`` path, an entry point, or a dotted module."""
    if pm.has_plugin(arg) or pm.is_blocked(arg):
        return
    if arg.endswith(".py") or os.sep in arg:
        _load_file(pm, arg)
        return
    entry_points = installed_entry_points()
    if arg in entry_points:
        _load_entry_point(pm, entry_points[arg])
        return
    module_name, _, attr = arg.partition(":")
    if not all(part.isidentifier() for part in module_name.split(".")):
        raise _unknown_plugin(arg, entry_points)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (
            exc.name == module_name or module_name.startswith(exc.name + ".")
        ):
            raise _unknown_plugin(arg, entry_points) from None
        raise PluginLoadError(f"Error importing plugin {arg!r}: {exc}") from exc
    except Exception as exc:
        raise PluginLoadError(f"Error importing plugin {arg!r}: {exc!r}") from exc
    plugin: object = module
    if attr:
        try:
            plugin = getattr(module, attr)
        except AttributeError:
            raise PluginLoadError(
                f"plugin {arg!r}: module {module_name!r} has no {attr!r}"
            ) from None
        if isinstance(plugin, type):
            raise PluginLoadError(
                f"plugin {arg!r} is a class; pass an instance or a module (hookimpls on a class "
                "would be registered unbound)"
            )
    _register(pm, plugin, arg, PluginInfo(arg, f"module {module_name}"))


def _load_file(pm: LbxPluginManager, path: str) -> None:
    if not os.path.isfile(path):
        raise PluginLoadError(f"plugin file {path!r} does not exist")
    stem = os.path.splitext(os.path.basename(path))[0]
    if pm.has_plugin(stem) or pm.is_blocked(stem):
        if pm.is_blocked(stem) or getattr(pm.get_plugin(stem), "__file__", None) == os.path.abspath(
            path
        ):
            return
        raise PluginLoadError(f"plugin file {path!r}: a plugin named {stem!r} is already loaded")
    module_name = f"lbx_plugin_file.{stem}"
    sys.modules.pop(module_name, None)
    spec = importlib.util.spec_from_file_location(module_name, os.path.abspath(path))
    if spec is None or spec.loader is None:
        raise PluginLoadError(f"plugin file {path!r} cannot be imported")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise PluginLoadError(f"Error importing plugin file {path!r}: {exc!r}") from exc
    _register(pm, module, stem, PluginInfo(stem, f"file {os.path.abspath(path)}"))


def _load_entry_point(pm: LbxPluginManager, ep: importlib.metadata.EntryPoint) -> None:
    dist = ep.dist
    try:
        plugin = ep.load()
    except Exception as exc:
        where = f" ({dist.name} {dist.version})" if dist is not None else ""
        raise PluginLoadError(
            f"Error importing plugin {ep.name!r}{where} from {ep.value!r}: {exc!r}; "
            f"start without it with --plugin no:{ep.name}"
        ) from exc
    info = PluginInfo(
        ep.name,
        f"entry point {ep.value}",
        dist.name if dist is not None else None,
        dist.version if dist is not None else None,
    )
    _register(pm, plugin, ep.name, info)


def _register(pm: LbxPluginManager, plugin: object, name: str, info: PluginInfo) -> None:
    try:
        pm.register(plugin, name)
    except ValueError as exc:  # pluggy: name or object already registered
        raise PluginLoadError(f"plugin {name!r}: {exc}") from exc
    pm.infos[name] = info


def _unknown_plugin(arg: str, installed: Iterable[str]) -> PluginLoadError:
    names = sorted(installed)
    listing = ", ".join(names) if names else "none"
    close = difflib.get_close_matches(arg, names, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return PluginLoadError(
        f"unknown plugin {arg!r}: not a .py file, an installed plugin or an importable module; "
        f"{hint}installed plugins: {listing}"
    )


def blame(pm: pluggy.PluginManager, exc: BaseException) -> tuple[str, str] | None:
    """(plugin, hook) of the innermost hook impl in ``exc``'s traceback: which plugin failed."""
    impls: dict[object, tuple[str, str]] = {}
    for name in pm.hook.__dict__:
        caller = getattr(pm.hook, name)
        if isinstance(caller, pluggy.HookCaller):
            for impl in caller.get_hookimpls():
                code = getattr(impl.function, "__code__", None)
                if code is not None:
                    impls[code] = (impl.plugin_name, name)
    found = None
    frame = exc.__traceback__
    while frame is not None:
        found = impls.get(frame.tb_frame.f_code, found)
        frame = frame.tb_next
    return found


def plugin_hooks(pm: pluggy.PluginManager, plugin: object) -> list[str]:
    """The names of the hooks ``plugin`` implements: its own, and those of the objects it
    registers from ``configure`` (methods marked ``@hookimpl`` of the classes it defines)."""
    names = {caller.name for caller in pm.get_hookcallers(plugin) or ()}
    package = getattr(plugin, "__name__", "").partition(".")[0]
    for value in vars(plugin).values() if package else ():
        if isinstance(value, type) and value.__module__.partition(".")[0] == package:
            names.update(
                name
                for name, method in vars(value).items()
                if hasattr(method, f"{hookspecs.PROJECT_NAME}_impl")
            )
    return sorted(names)


def describe_installed() -> list[dict[str, object]]:
    """Every installed plugin with version and hooks (each loaded in a scratch manager)."""
    rows: list[dict[str, object]] = []
    for name, ep in sorted(installed_entry_points().items()):
        pm = LbxPluginManager()
        row: dict[str, object] = {
            "name": name,
            "distribution": ep.dist.name if ep.dist is not None else None,
            "version": ep.dist.version if ep.dist is not None else None,
            "default": name in DEFAULT_PLUGINS,
        }
        try:
            _load_entry_point(pm, ep)
            row["hooks"] = plugin_hooks(pm, pm.get_plugin(name))
        except PluginLoadError as exc:
            row["hooks"] = []
            row["error"] = str(exc)
        rows.append(row)
    return rows


def describe_builtins() -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for name in BUILTIN_PLUGINS:
        pm = LbxPluginManager()
        module = importlib.import_module(f"lbx.builtin.{name}")
        pm.register(module, name)
        rows.append(
            {
                "name": name,
                "distribution": DISTRIBUTION,
                "version": importlib.metadata.version(DISTRIBUTION),
                "default": True,
                "hooks": plugin_hooks(pm, module),
            }
        )
    return rows


def versions() -> list[str]:
    """``lbx --version``: the kernel's distribution and version, then each installed plugin
    distribution with its version and plugin names (read from metadata: nothing is imported)."""
    lines = [f"{DISTRIBUTION} {importlib.metadata.version(DISTRIBUTION)}"]
    found: dict[tuple[str, str], list[str]] = {}
    for name, ep in installed_entry_points().items():
        key = (ep.dist.name, ep.dist.version) if ep.dist is not None else (ep.value, "?")
        found.setdefault(key, []).append(name)
    for (distribution, version), names in sorted(found.items()):
        lines.append(f"{distribution} {version} ({', '.join(sorted(names))})")
    return lines


def installed_selection_plugins() -> list[str]:
    """Installed plugins that register selection algorithms (imports each; for error messages)."""
    return [
        str(row["name"])
        for row in describe_installed()
        if "register_selectors" in (row.get("hooks") or [])  # type: ignore[operator]
    ]
