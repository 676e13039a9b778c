"""Fixture plugin: its ``configure`` fails with an error lbx does not know (a plugin's bug)."""

from __future__ import annotations

from lbx import Config, hookimpl


@hookimpl
def configure(config: Config) -> None:
    raise RuntimeError("configure_raises: boom in configure")
