"""The ``health_check:`` and ``passive_health:`` service keys: parsed and validated strictly.

Every problem is a ``ConfigError`` naming the file, the line and the key (``config.error``), with a
did-you-mean for unknown keys, like the rest of lbx's config.
"""

from __future__ import annotations

import difflib
import importlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from lbx import Config, ConfigError

Path = tuple[str | int, ...]

CHECK_TYPES = ("tcp", "http")
HTTP_ONLY_KEYS = ("path", "method", "host", "expected_statuses", "validator", "reuse_connection")

_STATUS_CLASS = re.compile(r"^[1-5]xx$")
_METHOD = re.compile(r"^[A-Z]+$")

Validator = Callable[..., Any]
"""``validator(status, headers)``: see ``HealthCheckSettings.validator``."""


@dataclass(frozen=True)
class HealthCheckSettings:
    """Active checks of one service (``health_check:``)."""

    type: str = "tcp"
    frequency: float = 1.0
    timeout: float = 1.0
    consecutive_success: int = 1
    consecutive_failure: int = 1
    parallel: bool = True
    max_parallel: int = 100
    port: int | None = None
    # http only
    path: str = "/"
    method: str = "GET"
    host: str | None = None
    expected_statuses: tuple[str | int, ...] = (200,)
    validator: Validator | None = None
    """``validator(status: int, headers: lbx.Headers)``; None/True: healthy, False or a string
    (the reason): unhealthy, an exception: unhealthy. May be ``async def``."""
    validator_name: str | None = None
    reuse_connection: bool = True
    """Check on the connection of the previous check (Pingora's ``reuse_connection``, whose
    default is false: here a new connection per check is the opt-in, as it costs 2-3x the CPU)."""

    def status_ok(self, status: int) -> bool:
        for expected in self.expected_statuses:
            if isinstance(expected, int):
                if status == expected:
                    return True
            elif status // 100 == int(expected[0]):
                return True
        return False

    def describe_expected(self) -> str:
        return ", ".join(str(s) for s in self.expected_statuses)


@dataclass(frozen=True)
class PassiveSettings:
    """Ejection on proxy failures of one service (``passive_health:``)."""

    max_fails: int = 3
    ejection_time: float = 10.0
    max_ejection_time: float = 300.0
    max_ejection_percent: float = 50.0
    on_5xx: bool = False


@dataclass(frozen=True)
class _Key:
    kind: str  # bool, int, number, str, statuses
    minimum: float | None = None
    maximum: float | None = None
    positive: bool = False


_CHECK_KEYS: dict[str, _Key] = {
    "type": _Key("str"),
    "frequency": _Key("number", positive=True),
    "timeout": _Key("number", positive=True),
    "consecutive_success": _Key("int", minimum=1),
    "consecutive_failure": _Key("int", minimum=1),
    "parallel": _Key("bool"),
    "max_parallel": _Key("int", minimum=1),
    "port": _Key("int", minimum=1, maximum=65535),
    "path": _Key("str"),
    "method": _Key("str"),
    "host": _Key("str"),
    "expected_statuses": _Key("statuses"),
    "validator": _Key("str"),
    "reuse_connection": _Key("bool"),
}

_PASSIVE_KEYS: dict[str, _Key] = {
    "max_fails": _Key("int", minimum=1),
    "ejection_time": _Key("number", positive=True),
    "max_ejection_time": _Key("number", positive=True),
    "max_ejection_percent": _Key("number", minimum=0, maximum=100),
    "on_5xx": _Key("bool"),
}


def _fail(config: Config | None, path: Path, message: str) -> ConfigError:
    if config is None:
        return ConfigError(message)
    return config.error(path, message)


def _check_value(config: Config | None, path: Path, spec: _Key, value: Any) -> Any:
    kind = spec.kind
    if kind == "bool":
        if not isinstance(value, bool):
            raise _fail(config, path, f"expected true or false, got {value!r}")
    elif kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(config, path, f"expected a whole number, got {value!r}")
    elif kind == "number":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _fail(config, path, f"expected a number of seconds, got {value!r}")
        value = float(value)
    elif kind == "str":
        if not isinstance(value, str) or not value:
            raise _fail(config, path, f"expected a non-empty string, got {value!r}")
    elif kind == "statuses":
        return _statuses(config, path, value)
    if spec.positive and value <= 0:
        raise _fail(config, path, f"must be greater than 0, got {value!r}")
    if spec.minimum is not None and value < spec.minimum:
        raise _fail(config, path, f"must be at least {spec.minimum:g}, got {value!r}")
    if spec.maximum is not None and value > spec.maximum:
        raise _fail(config, path, f"must be at most {spec.maximum:g}, got {value!r}")
    return value


def _statuses(config: Config | None, path: Path, value: Any) -> tuple[str | int, ...]:
    items = value if isinstance(value, list) else [value]
    if not items:
        raise _fail(config, path, "expected at least one status")
    result: list[str | int] = []
    for index, item in enumerate(items):
        where = (*path, index) if isinstance(value, list) else path
        if isinstance(item, int) and not isinstance(item, bool) and 100 <= item <= 599:
            result.append(item)
        elif isinstance(item, str) and item.isdigit() and 100 <= int(item) <= 599:
            result.append(int(item))
        elif isinstance(item, str) and _STATUS_CLASS.match(item.lower()):
            result.append(item.lower())
        else:
            raise _fail(
                config, where, f"expected a status (100-599) or a class like '2xx', got {item!r}"
            )
    return tuple(result)


def _mapping(
    config: Config | None, path: Path, data: Mapping[str, Any], keys: Mapping[str, _Key]
) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key, value in data.items():
        spec = keys.get(key)
        if spec is None:
            close = difflib.get_close_matches(str(key), list(keys), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(keys)}"
            raise _fail(config, (*path, key), "unknown key" + hint)
        if value is None:
            continue
        values[key] = _check_value(config, (*path, key), spec, value)
    return values


def parse_health_check(config: Config | None, path: Path, raw: Any) -> HealthCheckSettings | None:
    """``health_check: tcp``, ``health_check: {type: http, path: /healthz, ...}`` or nothing."""
    if raw is None or raw is False or isinstance(raw, HealthCheckSettings):
        return raw or None
    if isinstance(raw, str):
        raw = {"type": raw}
    if not isinstance(raw, dict):
        raise _fail(
            config, path, f"expected 'tcp', 'http' or a mapping of check settings, got {raw!r}"
        )
    values = _mapping(config, path, raw, _CHECK_KEYS)
    check_type = values.get("type", "tcp")
    if check_type not in CHECK_TYPES:
        raise _fail(
            config, (*path, "type"), f"expected one of {', '.join(CHECK_TYPES)}, got {check_type!r}"
        )
    if check_type != "http":
        for key in HTTP_ONLY_KEYS:
            if key in values:
                raise _fail(config, (*path, key), "only for 'type: http' checks")
    if "path" in values and not values["path"].startswith("/"):
        raise _fail(config, (*path, "path"), f"must start with '/', got {values['path']!r}")
    if "method" in values:
        values["method"] = values["method"].upper()
        if not _METHOD.match(values["method"]):
            raise _fail(config, (*path, "method"), f"not an HTTP method: {values['method']!r}")
    if "validator" in values:
        if "expected_statuses" in values:
            raise _fail(
                config,
                (*path, "validator"),
                "give either validator or expected_statuses: a validator decides alone",
            )
        name = values["validator"]
        values["validator_name"] = name
        values["validator"] = _import_validator(config, (*path, "validator"), name)
    return HealthCheckSettings(**values)


def _import_validator(config: Config | None, path: Path, name: str) -> Validator:
    module_name, sep, attr = name.partition(":")
    if not sep or not attr or not all(p.isidentifier() for p in module_name.split(".")):
        raise _fail(config, path, f"expected 'module:function', got {name!r}")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise _fail(config, path, f"cannot import {module_name!r}: {exc!r}") from exc
    function = getattr(module, attr, None)
    if not callable(function):
        raise _fail(config, path, f"module {module_name!r} has no function {attr!r}")
    return function  # type: ignore[no-any-return]  # callable() checked it


def parse_passive(config: Config | None, path: Path, raw: Any) -> PassiveSettings | None:
    """``passive_health: true``, ``passive_health: {max_fails: 3, ...}`` or nothing."""
    if raw is None or raw is False or isinstance(raw, PassiveSettings):
        return raw or None
    if raw is True:
        raw = {}
    if not isinstance(raw, dict):
        raise _fail(config, path, f"expected true or a mapping of settings, got {raw!r}")
    values = _mapping(config, path, raw, _PASSIVE_KEYS)
    settings = PassiveSettings(**values)
    if settings.max_ejection_time < settings.ejection_time:
        key = "max_ejection_time" if "max_ejection_time" in values else "ejection_time"
        raise _fail(
            config,
            (*path, key),
            f"max_ejection_time ({settings.max_ejection_time:g}s) is shorter than "
            f"ejection_time ({settings.ejection_time:g}s)",
        )
    return settings
