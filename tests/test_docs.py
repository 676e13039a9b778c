"""The documentation in docs/ agrees with the code: hooks, config keys, examples, CLI options."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import lbx
from lbx.config import SERVER_KEYS, SERVICE_KEYS
from lbx.plugins import load_plugin_arg

DOCS = Path(__file__).resolve().parent.parent / "docs"
HEADING = re.compile(r"^## (\w+)\((.*)\)\s*$", re.MULTILINE)
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def hook_signatures() -> dict[str, str]:
    """Every hook spec of lbx.hookspecs as ``name(arg1, arg2)``, by name."""
    pm = lbx.get_plugin_manager(defaults=False)
    return {
        name: f"{name}({', '.join(caller.spec.argnames)})"
        for name, caller in vars(pm.hook).items()
        if getattr(caller, "spec", None) is not None
    }


def read(name: str) -> str:
    """The text of ``docs/<name>``."""
    return (DOCS / name).read_text(encoding="utf-8")


def plugin_examples() -> list[tuple[str, int, str]]:
    """Every python block with ``@hookimpl`` in hooks.md and plugins.md: (page, index, code)."""
    found = []
    for page in ("hooks.md", "plugins.md"):
        for index, block in enumerate(PYTHON_BLOCK.findall(read(page))):
            if "@hookimpl" in block:
                found.append((page, index, block))
    return found


def test_every_hook_has_a_heading() -> None:
    """Each hook spec has a ``## name(args)`` heading in hooks.md with its exact arguments."""
    headings = {match.group(0)[3:].strip() for match in HEADING.finditer(read("hooks.md"))}
    missing = sorted(sig for sig in hook_signatures().values() if sig not in headings)
    assert not missing, f"docs/hooks.md lacks headings: {missing}"


def test_no_heading_for_unknown_hooks() -> None:
    """Every ``## name(...)`` heading in hooks.md names an existing hook with its exact args."""
    signatures = set(hook_signatures().values())
    headings = [match.group(0)[3:].strip() for match in HEADING.finditer(read("hooks.md"))]
    unknown = [heading for heading in headings if heading not in signatures]
    assert not unknown, f"docs/hooks.md documents hooks that do not exist: {unknown}"


def test_hook_headings_follow_hookspecs_order() -> None:
    """hooks.md documents the hooks in the order hookspecs.py defines them."""
    from lbx import hookspecs

    source = Path(hookspecs.__file__).read_text(encoding="utf-8")
    defined = re.findall(r"^(?:async )?def (\w+)\(", source, re.MULTILINE)
    names = set(hook_signatures())
    in_spec_order = [name for name in defined if name in names]
    documented = [match.group(1) for match in HEADING.finditer(read("hooks.md"))]
    assert documented == in_spec_order


@pytest.mark.parametrize("key", sorted({*SERVER_KEYS, *SERVICE_KEYS}))
def test_config_key_documented(key: str) -> None:
    """Every server and service config key appears in configuration.md as ``key``."""
    assert f"`{key}`" in read("configuration.md")


def test_there_are_plugin_examples() -> None:
    """hooks.md has one example per hook, so the example check below is not vacuous."""
    assert len(plugin_examples()) >= len(hook_signatures())


@pytest.mark.parametrize(
    ("page", "index", "code"),
    plugin_examples(),
    ids=[f"{page}-{index}" for page, index, _ in plugin_examples()],
)
def test_example_is_a_valid_plugin(page: str, index: int, code: str, tmp_path: Path) -> None:
    """Each ``@hookimpl`` example loads as a plugin: hook names, colours and arguments are right."""
    path = tmp_path / f"docs_example_{page.removesuffix('.md')}_{index}.py"
    path.write_text(code, encoding="utf-8")
    pm = lbx.get_plugin_manager(defaults=False)
    try:
        load_plugin_arg(pm, str(path))
        assert pm.has_plugin(path.stem)
    finally:
        sys.modules.pop(f"lbx_plugin_file.{path.stem}", None)


def test_serve_options_documented() -> None:
    """Every option ``lbx serve -h`` prints appears in cli.md."""
    result = subprocess.run(
        [sys.executable, "-m", "lbx", "serve", "-h"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "COLUMNS": "200", "TERM": "dumb"},
    )
    listing = "\n".join(line for line in result.stdout.splitlines() if "Usage:" not in line)
    options = set(re.findall(r"(?<![\w-])(--?[a-z][a-z-]*)", listing))
    options.discard("-")
    assert {"--conf", "-c", "--plugin", "--help"} <= options, result.stdout
    text = read("cli.md")
    missing = sorted(option for option in options if f"`{option}" not in text)
    assert not missing, f"docs/cli.md lacks options: {missing}"


def test_every_public_session_name_is_documented() -> None:
    """The ``Session`` hooks get has one face: each public name is in hooks.md's list, and the
    list names nothing the session lacks."""
    from lbx.session import Session

    text = read("hooks.md")
    start = text.index("**`Session`**")
    paragraph = text[start : text.index("\n\n", start)]
    documented = set(re.findall(r"`(?:await )?([a-z_]+)[`(]", paragraph))
    public = {name for name in dir(Session) if not name.startswith("_")}
    assert public <= documented, sorted(public - documented)
    words = {"status", "unix", "name", "config", "load_balancer", *hook_signatures()}
    assert documented - words <= public, sorted(documented - words - public)


def test_the_round_robin_example_selects_as_the_plugin_does() -> None:
    """plugins.md's ``RoundRobin`` is the plugin's: the same picks, first choices and
    fallbacks, through the load balancer (which takes it in two parts)."""
    from lbx_roundrobin import RoundRobin

    block = next(b for b in PYTHON_BLOCK.findall(read("plugins.md")) if "class RoundRobin" in b)
    namespace: dict[str, object] = {}
    exec(compile(block, "plugins.md", "exec"), namespace)
    backends = tuple(lbx.Backend("127.0.0.1", 8001 + i, weight=w) for i, w in enumerate((3, 1, 2)))
    balancers = [
        lbx.LoadBalancer(lbx.Backends(backends), factory)
        for factory in (namespace["RoundRobin"], RoundRobin)
    ]
    for lb in balancers:
        lb.backends.set_healthy(backends[0], False)
    picks = [[lb.select(b"") for _ in range(30)] for lb in balancers]
    assert picks[0] == picks[1]
    assert set(picks[0]) == {backends[1], backends[2]}
