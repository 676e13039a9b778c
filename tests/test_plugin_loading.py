"""How ``--plugin`` values resolve: no:NAME, .py paths, entry points, dotted modules, errors."""

from __future__ import annotations

import importlib.metadata
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import lbx
from lbx.errors import PluginLoadError, PluginValidationError
from lbx.plugins import LbxPluginManager, PluginInfo, get_plugin_manager, load_plugin_arg

PLUGINS = Path(__file__).resolve().parent / "plugins"
SYNC_HOOKS = str(PLUGINS / "sync_hooks.py")
PACKAGE = "lbx_loading_testpkg"


def selector_names(pm: LbxPluginManager) -> list[str]:
    names: list[str] = []
    pm.hook.register_selectors(register=lambda name, factory: names.append(name))
    return sorted(names)


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A throwaway importable package ``lbx_loading_testpkg`` with a few plugin modules."""
    root = tmp_path / "site"
    pkg = root / PACKAGE
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text('"""Test package."""\n')
    (pkg / "mod.py").write_text(
        textwrap.dedent(
            '''
            """A plugin module with a selector, a plugin class and an instance of it."""
            from lbx import hookimpl

            class Plugin:
                """Hookimpls on a class: must be registered as an instance."""

                @hookimpl
                def register_selectors(self, register):
                    register("from_instance", object)

            instance = Plugin()

            @hookimpl
            def register_selectors(register):
                register("from_module", object)
            '''
        )
    )
    (pkg / "broken.py").write_text('raise ValueError("broken module says no")\n')
    (pkg / "needs_dep.py").write_text("import lbx_no_such_dependency_at_all  # noqa: F401\n")
    # A top-level module whose missing dependency's name is a prefix of its own name.
    (root / f"{PACKAGE}_ext.py").write_text(f"import {PACKAGE}_e  # noqa: F401\n")
    monkeypatch.syspath_prepend(str(root))
    yield PACKAGE
    for name in [m for m in sys.modules if m.startswith(PACKAGE)]:
        del sys.modules[name]


# -- defaults -------------------------------------------------------------------------------------


def test_installing_is_not_enabling() -> None:
    """``get_plugin_manager([])`` does not register the installed roundrobin plugin."""
    assert "roundrobin" in {ep.name for ep in importlib.metadata.entry_points(group="lbx")}
    pm = get_plugin_manager([])
    assert not pm.has_plugin("roundrobin")
    assert "roundrobin" not in pm.infos
    assert selector_names(pm) == []
    assert pm.has_plugin("default_peer")
    assert pm.infos["default_peer"].source == "built-in"


def test_roundrobin_entry_point_is_enabled_by_name() -> None:
    """``roundrobin`` resolves to the installed entry point, with its distribution and version."""
    pm = lbx.get_plugin_manager(["roundrobin"])
    assert pm.has_plugin("roundrobin")
    assert selector_names(pm) == ["roundrobin"]
    info = pm.infos["roundrobin"]
    assert isinstance(info, PluginInfo)
    assert info.name == "roundrobin"
    assert info.distribution == "lbx-roundrobin"
    assert info.version == importlib.metadata.version("lbx-roundrobin")
    assert "lbx_roundrobin" in info.source


def test_plugin_named_twice_is_registered_once() -> None:
    """Naming a plugin twice (``--plugin`` and YAML) registers it once."""
    pm = get_plugin_manager(["roundrobin", "roundrobin", SYNC_HOOKS, SYNC_HOOKS])
    assert selector_names(pm) == ["roundrobin", "sync_hooks_first"]


# -- no:NAME --------------------------------------------------------------------------------------


def test_no_name_blocks_a_named_plugin() -> None:
    """``no:roundrobin`` wins over an earlier ``roundrobin``."""
    pm = get_plugin_manager(["roundrobin", "no:roundrobin"])
    assert not pm.has_plugin("roundrobin")
    assert pm.is_blocked("roundrobin")
    assert selector_names(pm) == []


def test_later_name_re_enables_a_blocked_plugin() -> None:
    """A ``roundrobin`` after ``no:roundrobin`` enables it again."""
    pm = get_plugin_manager(["no:roundrobin", "roundrobin"])
    assert pm.has_plugin("roundrobin")
    assert not pm.is_blocked("roundrobin")
    assert selector_names(pm) == ["roundrobin"]


def test_no_name_blocks_a_plugin_file_by_stem() -> None:
    """``no:sync_hooks`` blocks the plugin file ``.../sync_hooks.py``."""
    pm = get_plugin_manager([SYNC_HOOKS, "no:sync_hooks"])
    assert not pm.has_plugin("sync_hooks")
    assert selector_names(pm) == []


def test_no_name_of_uninstalled_plugin_is_harmless() -> None:
    """Disabling a plugin that is not installed (e.g. the default ``daemon``) is accepted."""
    pm = get_plugin_manager(["no:daemon", "no:upgrade", "no:not_installed_anywhere"])
    assert pm.is_blocked("daemon")
    assert not pm.has_plugin("daemon")


def test_builtin_plugin_cannot_be_disabled() -> None:
    """``no:default_peer`` is refused: built-in plugins are essential."""
    with pytest.raises(PluginLoadError, match="'default_peer' is built in and cannot be disabled"):
        get_plugin_manager(["no:default_peer"])


def test_builtin_name_is_a_no_op() -> None:
    """``--plugin default_peer`` names an already registered built-in: nothing changes."""
    pm = get_plugin_manager(["default_peer"])
    assert len(pm.hook.upstream_peer.get_hookimpls()) == 1


# -- .py paths ------------------------------------------------------------------------------------


def test_py_path_registers_under_file_stem() -> None:
    """A ``.py`` path is loaded from the file and registered under its stem."""
    pm = get_plugin_manager([SYNC_HOOKS])
    plugin = pm.get_plugin("sync_hooks")
    assert plugin is not None
    assert Path(plugin.__file__) == Path(SYNC_HOOKS)
    assert selector_names(pm) == ["sync_hooks_first"]
    assert pm.infos["sync_hooks"].source == f"file {SYNC_HOOKS}"
    assert pm.infos["sync_hooks"].distribution is None


def test_relative_py_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """A relative path (``plugins/sync_hooks.py``) is resolved from the working directory."""
    monkeypatch.chdir(PLUGINS.parent)
    pm = LbxPluginManager()
    load_plugin_arg(pm, "plugins/sync_hooks.py")
    assert pm.has_plugin("sync_hooks")


def test_same_file_twice_is_a_no_op() -> None:
    """Loading the same file again does nothing."""
    pm = LbxPluginManager()
    load_plugin_arg(pm, SYNC_HOOKS)
    first = pm.get_plugin("sync_hooks")
    load_plugin_arg(pm, SYNC_HOOKS)
    assert pm.get_plugin("sync_hooks") is first


def test_two_files_with_the_same_stem_clash(tmp_path: Path) -> None:
    """Two different files with the same stem are an error naming the stem."""
    other = tmp_path / "sync_hooks.py"
    other.write_text('"""Same stem, other file."""\n')
    pm = LbxPluginManager()
    load_plugin_arg(pm, SYNC_HOOKS)
    with pytest.raises(PluginLoadError, match="a plugin named 'sync_hooks' is already loaded"):
        load_plugin_arg(pm, str(other))


def test_missing_py_file_is_an_error(tmp_path: Path) -> None:
    """A ``.py`` path that does not exist is an error naming the path."""
    missing = str(tmp_path / "nowhere.py")
    with pytest.raises(PluginLoadError, match="does not exist") as excinfo:
        load_plugin_arg(LbxPluginManager(), missing)
    assert missing in str(excinfo.value)


def test_file_raising_on_import_names_the_file() -> None:
    """A plugin file that raises while importing gives an error naming the file and the cause."""
    path = str(PLUGINS / "raises_on_import.py")
    pm = LbxPluginManager()
    with pytest.raises(PluginLoadError) as excinfo:
        load_plugin_arg(pm, path)
    message = str(excinfo.value)
    assert path in message
    assert "boom at import time" in message
    assert isinstance(excinfo.value.__cause__, RuntimeError)
    assert not pm.has_plugin("raises_on_import")
    assert "lbx_plugin_file.raises_on_import" not in sys.modules


def test_file_is_reimported_for_each_manager() -> None:
    """Each manager gets a fresh module object for a plugin file (no stale module reused)."""
    first = LbxPluginManager()
    second = LbxPluginManager()
    load_plugin_arg(first, SYNC_HOOKS)
    load_plugin_arg(second, SYNC_HOOKS)
    assert first.get_plugin("sync_hooks") is not second.get_plugin("sync_hooks")


def test_invalid_plugin_file_is_refused() -> None:
    """A plugin file breaking the hook contract raises ``PluginValidationError``."""
    with pytest.raises(PluginValidationError):
        get_plugin_manager([str(PLUGINS / "async_impl_of_sync_hook.py")])


# -- dotted modules -------------------------------------------------------------------------------


def test_dotted_module(package: str) -> None:
    """``pkg.mod`` imports the module and registers it under the argument."""
    pm = LbxPluginManager()
    load_plugin_arg(pm, f"{package}.mod")
    assert pm.has_plugin(f"{package}.mod")
    assert selector_names(pm) == ["from_module"]
    assert pm.infos[f"{package}.mod"].source == f"module {package}.mod"


def test_dotted_module_with_instance_attribute(package: str) -> None:
    """``pkg.mod:obj`` registers the object (an instance with hookimpl methods)."""
    pm = LbxPluginManager()
    load_plugin_arg(pm, f"{package}.mod:instance")
    assert pm.has_plugin(f"{package}.mod:instance")
    assert selector_names(pm) == ["from_instance"]


def test_dotted_module_class_is_refused_with_hint(package: str) -> None:
    """``pkg.mod:Class`` is refused with a hint to pass an instance or a module."""
    pm = LbxPluginManager()
    with pytest.raises(PluginLoadError, match="is a class; pass an instance or a module"):
        load_plugin_arg(pm, f"{package}.mod:Plugin")
    assert selector_names(pm) == []


def test_dotted_module_missing_attribute(package: str) -> None:
    """``pkg.mod:nothing`` names the missing attribute."""
    with pytest.raises(PluginLoadError, match="has no 'nothing'"):
        load_plugin_arg(LbxPluginManager(), f"{package}.mod:nothing")


def test_dotted_module_raising_on_import(package: str) -> None:
    """A module that raises while importing is reported as such, not as an unknown plugin."""
    with pytest.raises(PluginLoadError) as excinfo:
        load_plugin_arg(LbxPluginManager(), f"{package}.broken")
    message = str(excinfo.value)
    assert "Error importing plugin" in message
    assert "broken module says no" in message
    assert "unknown plugin" not in message
    assert isinstance(excinfo.value.__cause__, ValueError)


def test_dotted_module_with_missing_dependency(package: str) -> None:
    """A module whose own import fails names the missing dependency, not "unknown plugin"."""
    with pytest.raises(PluginLoadError) as excinfo:
        load_plugin_arg(LbxPluginManager(), f"{package}.needs_dep")
    message = str(excinfo.value)
    assert "Error importing plugin" in message
    assert "lbx_no_such_dependency_at_all" in message


def test_missing_dependency_with_prefix_name_is_not_unknown(package: str) -> None:
    """A module importing a missing ``<its name minus a suffix>`` reports the import error."""
    with pytest.raises(PluginLoadError) as excinfo:
        load_plugin_arg(LbxPluginManager(), f"{package}_ext")
    assert "Error importing plugin" in str(excinfo.value)
    assert f"{package}_e" in str(excinfo.value)


def test_missing_submodule_of_existing_package_is_unknown(package: str) -> None:
    """``pkg.nosuch`` of an importable package is an unknown plugin."""
    with pytest.raises(PluginLoadError, match="unknown plugin"):
        load_plugin_arg(LbxPluginManager(), f"{package}.nosuch")


# -- unknown names --------------------------------------------------------------------------------


@pytest.mark.parametrize("arg", ["nosuchplugin", "no such thing", "nosuch.module", "x:y:z"])
def test_unknown_name_names_installed_plugins(arg: str) -> None:
    """Anything that resolves to nothing is a ``PluginLoadError`` listing installed plugins."""
    with pytest.raises(PluginLoadError) as excinfo:
        get_plugin_manager([arg])
    message = str(excinfo.value)
    assert f"unknown plugin {arg!r}" in message
    assert "roundrobin" in message.split("installed plugins:")[1]


def test_unknown_name_suggests_a_close_installed_name() -> None:
    """A near miss of an installed name gets a did-you-mean."""
    with pytest.raises(PluginLoadError, match="did you mean 'roundrobin'"):
        get_plugin_manager(["roundrobn"])


def test_plugin_load_error_is_a_config_error() -> None:
    """Plugin errors are ``ConfigError``s, so the CLI reports them as one line with exit 2."""
    with pytest.raises(lbx.ConfigError):
        get_plugin_manager(["nosuchplugin"])
