"""Fixture plugin: declares a config section and a service key (``add_config_keys``)."""

from __future__ import annotations

from lbx import ConfigSchema, Field, hookimpl


def _no_shouting(value: str) -> str | None:
    return "must not be all capitals" if value.isupper() else None


@hookimpl
def add_config_keys(schema: ConfigSchema) -> None:
    schema.add_section(
        "section_plugin",
        {
            "greeting": Field("str", "hello", "what to say", check=_no_shouting),
            "count": Field("int", 1, "how often", minimum=0),
        },
    )
    schema.add_service_keys({"section_plugin_tag": Field("str", None, "a per-service tag")})
