"""Configuration: the YAML file (Pingora's server keys plus lbx's), validated strictly.

Every error names the file, the line and the key, with a did-you-mean for unknown keys. Plugins
declare their own keys through the ``add_config_keys`` hook, so typos in plugin sections are
caught as well. The kernel's keys are in ``lbx.config_keys``.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import yaml

from lbx.config_keys import (
    PINGORA_ONLY_KEYS,
    SERVER_KEYS,
    SERVICE_KEYS,
    Field,
    check_host,
    check_listen,
)
from lbx.errors import ConfigError
from lbx.lb import Backend, each_address_once

__all__ = [
    "PINGORA_ONLY_KEYS",
    "SERVER_KEYS",
    "SERVICE_KEYS",
    "Config",
    "ConfigSchema",
    "Document",
    "Field",
    "Problems",
    "ServiceConfig",
]

log = logging.getLogger("lbx.config")

Path = tuple[str | int, ...]


class ConfigSchema:
    """The keys the config may contain: the kernel's plus those plugins declare."""

    def __init__(self) -> None:
        self.sections: dict[str, dict[str, Field]] = {}
        self.service_keys: dict[str, Field] = dict(SERVICE_KEYS)

    def add_section(self, name: str, fields: Mapping[str, Field]) -> None:
        """Declare a top-level section ``name`` with the given keys."""
        if name in SERVER_KEYS or name in ("plugins", "services") or name in self.sections:
            raise ValueError(f"config section {name!r} is already defined")
        self.sections[name] = dict(fields)

    def add_service_keys(self, fields: Mapping[str, Field]) -> None:
        """Declare keys accepted in every service."""
        for key in fields:
            if key in self.service_keys:
                raise ValueError(f"service key {key!r} is already defined")
        self.service_keys.update(fields)


DEFAULT_MAX_BACKENDS = 256
"""``discovery.max_backends`` when not set."""


@dataclass
class ServiceConfig:
    """One service: listeners, upstreams and how to reach them."""

    name: str
    listen: list[str]
    upstreams: list[Backend]
    discovery: dict[str, Any] | None = None
    """The ``discovery:`` mapping as written (validated when the server is prepared, once the
    plugins registered their sources)."""
    tls_listen: list[str] = field(default_factory=list)
    certificates: list[dict[str, str]] = field(default_factory=list)
    unknown_sni: str = "default"
    client_ca: str | None = None
    client_cert: str = "none"
    upgrades: list[str] = field(default_factory=lambda: ["websocket"])
    underscores_in_headers: str = "pass"
    tls: bool = False
    sni: str = ""
    host: str | None = None
    verify_cert: bool = True
    verify_hostname: bool = True
    selection: str | None = None
    selection_options: dict[str, Any] = field(default_factory=dict)
    hash_key: str | None = None
    connect_timeout: float = 10
    read_timeout: float = 60
    idle_timeout: float = 60
    keepalive_timeout: float = 60
    header_timeout: float = 60
    body_timeout: float = 60
    write_timeout: float = 60
    keepalive_requests: int = 1000
    max_connections: int = 10000
    max_request_line: int = 8192
    max_header_size: int = 32768
    max_headers: int = 100
    max_body_size: int = 1 << 30
    max_upstream_connections: int = 0
    upstream_queue_timeout: float = 1
    x_forwarded_for: str = "append"
    x_forwarded_proto: str = "replace"
    forwarded: str = "off"
    trusted_proxies: list[str] | None = None
    via: bool = False
    h2c: bool = False
    upstream_http_version: int | str = 1
    max_h2_streams: int = 100
    h2_ping_interval: float = 30
    http2: bool = True
    h2_max_concurrent_streams: int = 128
    h2_max_control_frames_per_second: int = 100
    h2_max_empty_frames_per_second: int = 100
    h2_max_window_updates_per_second: int = 1000
    extra: dict[str, Any] = field(default_factory=dict)
    """Values of plugin-declared service keys."""

    @property
    def max_backends(self) -> int:
        """The most backends the service may have at once (``discovery.max_backends``, and at
        least its ``upstreams``): what per-backend memory shared by processes is sized for, and
        the bound of ``ServiceDiscovery.slot``."""
        wanted = (self.discovery or {}).get("max_backends", DEFAULT_MAX_BACKENDS)
        if not isinstance(wanted, int) or isinstance(wanted, bool) or wanted < 1:
            wanted = DEFAULT_MAX_BACKENDS  # a bad value is reported when the server is prepared
        return max(wanted, len(self.upstreams))


@dataclass
class Config:
    """The validated configuration handed to ``configure`` and the server."""

    path: str | None = None
    version: int = 1
    daemon: bool = False
    pid_file: str = "/tmp/lbx.pid"
    error_log: str | None = None
    upgrade_sock: str = "/tmp/lbx_upgrade.sock"
    user: str | None = None
    group: str | None = None
    working_directory: str | None = None
    threads: int = 1
    grace_period_seconds: float = 30
    graceful_shutdown_timeout_seconds: float = 5
    upstream_keepalive_pool_size: int = 128
    max_retries: int = 16
    ca_file: str | None = None
    upgrade: bool = False
    test: bool = False
    plugins: list[str] = field(default_factory=list)
    services: list[ServiceConfig] = field(default_factory=list)
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    lines: dict[Path, int] = field(default_factory=dict, repr=False)

    def error(self, path: Path, message: str) -> ConfigError:
        """A ``ConfigError`` pointing at ``path`` (e.g. ``("services", 0, "upstreams")``)."""
        return ConfigError(
            f"{format_path(path)}: {message}", file=self.path, line=_line(self.lines, path)
        )


def format_path(path: Path) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def _line(lines: Mapping[Path, int], path: Path) -> int | None:
    while path:
        if path in lines:
            return lines[path]
        path = path[:-1]
    return None


# -- reading YAML with line numbers --------------------------------------------------------------


@dataclass
class Document:
    """A parsed YAML file and the line of every key and item in it."""

    path: str | None
    data: dict[str, Any]
    lines: dict[Path, int]

    def error(self, path: Path, message: str) -> ConfigError:
        return ConfigError(
            f"{format_path(path)}: {message}", file=self.path, line=_line(self.lines, path)
        )


def read_document(path: str) -> Document:
    """Read ``path``; YAML syntax errors become ``ConfigError`` with the line."""
    try:
        with open(path, encoding="utf-8") as stream:
            text = stream.read()
    except OSError as exc:
        raise ConfigError(f"cannot read config: {exc.strerror}", file=path) from None
    return parse_document(text, path)


def parse_document(text: str, path: str | None = None) -> Document:
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        lines: dict[Path, int] = {}
        data = _to_python(loader, node, (), lines, path) if node is not None else {}
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        raise ConfigError(
            f"invalid YAML: {exc.problem or exc.context}", file=path, line=line
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}", file=path) from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise ConfigError("the config must be a mapping of keys to values", file=path, line=1)
    return Document(path, data, lines)


def _to_python(
    loader: yaml.SafeLoader, node: yaml.Node, path: Path, lines: dict[Path, int], file: str | None
) -> Any:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        explicit = sum(1 for k, _ in node.value if k.tag != "tag:yaml.org,2002:merge")
        loader.flatten_mapping(node)
        first_explicit = len(node.value) - explicit
        result: dict[str, Any] = {}
        explicit_keys: set[str] = set()
        for position, (key_node, value_node) in enumerate(node.value):
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, str):
                raise ConfigError(
                    f"{format_path(path) or 'top level'}: keys must be strings, got {key!r}",
                    file=file,
                    line=key_node.start_mark.line + 1,
                )
            if position >= first_explicit:
                if key in explicit_keys:
                    raise ConfigError(
                        f"{format_path((*path, key))}: duplicate key",
                        file=file,
                        line=key_node.start_mark.line + 1,
                    )
                explicit_keys.add(key)
            lines[(*path, key)] = key_node.start_mark.line + 1
            result[key] = _to_python(loader, value_node, (*path, key), lines, file)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [
            _to_python(loader, item, (*path, index), lines, file)
            for index, item in enumerate(node.value)
        ]
    return loader.construct_object(node, deep=True)


# -- validation ----------------------------------------------------------------------------------


def _unknown_key(
    doc: Document, path: Path, key: str, known: list[str], hint: str = ""
) -> ConfigError:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    message = "unknown key"
    if close:
        message += f"; did you mean {close[0]!r}?"
    elif hint:
        message += f"; {hint}"
    return doc.error((*path, key), message)


def check_value(doc: Document, path: Path, spec: Field, value: Any) -> Any:
    """Validate one value against its ``Field``; returns the value, normalised."""
    kind = spec.kind
    if value is None:
        return spec.default
    if kind == "bool":
        if not isinstance(value, bool):
            raise doc.error(path, f"expected true or false, got {value!r}")
    elif kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise doc.error(path, f"expected a whole number, got {value!r}")
    elif kind == "number":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise doc.error(path, f"expected a number, got {value!r}")
    elif kind == "str":
        if isinstance(value, bool) and spec.check is not None:
            # YAML 1.1 reads an unquoted off or no (on, yes) as false (true): for a key that
            # takes the word, that is what was written (nginx's spelling).
            word = "on" if value else "off"
            if spec.check(word) is None:
                value = word
        if isinstance(value, bool):
            raise doc.error(
                path,
                f"expected a string, got {value!r} (YAML reads an unquoted "
                "on, off, yes or no as true or false: quote the word)",
            )
        if not isinstance(value, str):
            raise doc.error(path, f"expected a string, got {value!r}")
    elif kind == "str_list":
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise doc.error(path, f"expected a string or a list of strings, got {value!r}")
    elif kind == "map" and not isinstance(value, dict):
        raise doc.error(path, f"expected a mapping, got {value!r}")
    if spec.minimum is not None and value < spec.minimum:
        raise doc.error(path, f"must be at least {spec.minimum:g}, got {value!r}")
    if spec.check is not None:
        problem = spec.check(value)
        if problem:
            raise doc.error(path, problem)
    return value


_PLUGIN_KEY_HINT: Final = "a plugin's service keys need their plugin enabled in 'plugins:'"


def validate_mapping(
    doc: Document, path: Path, data: Any, fields: Mapping[str, Field], hint: str = ""
) -> dict[str, Any]:
    """Validate a mapping with exactly the keys in ``fields``; defaults fill the rest. Of
    several bad keys, the first in the file is reported (with ``hint`` when no known key is
    close)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise doc.error(path, f"expected a mapping, got {data!r}")
    problems = Problems()
    given: dict[str, Any] = {}
    for key, value in data.items():  # in file order
        with problems.check():
            if key not in fields:
                raise _unknown_key(doc, path, key, list(fields), hint)
            given[key] = check_value(doc, (*path, key), fields[key], value)
    problems.raise_first()
    return {key: given.get(key, spec.default) for key, spec in fields.items()}


class Problems:
    """Config errors collected while validating independent parts of a file, so that the one
    reported is the first in the file (an error without a line comes before any other)."""

    def __init__(self) -> None:
        self.errors: list[ConfigError] = []

    @contextlib.contextmanager
    def check(self) -> Iterator[None]:
        """Run a check; a ``ConfigError`` it raises is collected instead."""
        try:
            yield
        except ConfigError as exc:
            self.errors.append(exc)

    def raise_first(self) -> None:
        if self.errors:
            raise min(self.errors, key=lambda error: error.line or 0)


def plugin_entries(doc: Document) -> list[tuple[str, Path]]:
    """The YAML ``plugins:`` list, checked, each entry with its place in the file (for errors);
    relative ``.py`` paths are resolved from the file's directory."""
    value = check_value(doc, ("plugins",), Field("str_list", []), doc.data.get("plugins"))
    listed = isinstance(doc.data.get("plugins"), list)
    base = os.path.dirname(os.path.abspath(doc.path)) if doc.path else os.getcwd()
    result: list[tuple[str, Path]] = []
    for index, item in enumerate(value):
        if item.endswith(".py") and not os.path.isabs(item):
            item = os.path.normpath(os.path.join(base, item))
        result.append((item, ("plugins", index) if listed else ("plugins",)))
    return result


def plugin_list(doc: Document) -> list[str]:
    """The YAML ``plugins:`` list, checked; relative ``.py`` paths resolved from the file."""
    return [item for item, _ in plugin_entries(doc)]


def build_config(doc: Document, schema: ConfigSchema, problems: Problems | None = None) -> Config:
    """Validate the whole document against the kernel's and the plugins' keys.

    Independent parts (top-level keys, each service, plugin sections) are all checked, and the
    error raised is the first in the file, ``problems`` found before included (entries of
    ``plugins:`` that could not be loaded).
    """
    problems = problems or Problems()
    data = doc.data
    known = [*SERVER_KEYS, "plugins", "services", *schema.sections, *PINGORA_ONLY_KEYS]
    for key in data:
        with problems.check():
            if key not in known:
                raise _unknown_key(
                    doc, (), key, known, "plugin sections need their plugin enabled in 'plugins:'"
                )
        if key in PINGORA_ONLY_KEYS:
            log.warning(
                "%s:%s: %s is a Pingora setting that lbx does not use; ignored",
                doc.path,
                doc.lines.get((key,)),
                key,
            )
    server: dict[str, Any] = {}
    for key, spec in SERVER_KEYS.items():
        with problems.check():
            server[key] = check_value(doc, (key,), spec, data.get(key))
    if server.get("version", 1) != 1:
        problems.errors.append(
            doc.error(("version",), f"only version 1 is supported, got {server['version']}")
        )
    services: list[ServiceConfig] = []
    services_data = data.get("services")
    if services_data is not None and not isinstance(services_data, list):
        problems.errors.append(doc.error(("services",), "expected a list of services"))
    elif services_data is not None:
        for index, item in enumerate(services_data):
            with problems.check():
                services.append(_build_service(doc, index, item, schema))
    with problems.check():
        _check_services_together(doc, services)
    sections: dict[str, dict[str, Any]] = {}
    for name, fields in schema.sections.items():
        with problems.check():
            sections[name] = validate_mapping(doc, (name,), data.get(name), fields)
    plugins: list[str] = []
    with problems.check():
        plugins = plugin_list(doc)
    problems.raise_first()
    return Config(
        path=doc.path,
        plugins=plugins,
        services=services,
        sections=sections,
        lines=doc.lines,
        **server,
    )


def _check_services_together(doc: Document, services: list[ServiceConfig]) -> None:
    """Service names and listen addresses are unique across services."""
    names = [s.name for s in services]
    for index, name in enumerate(names):
        if name in names[:index]:
            raise doc.error(("services", index, "name"), f"duplicate service name {name!r}")
    seen: set[str] = set()
    for index, service in enumerate(services):
        for key, addresses in (("listen", service.listen), ("tls_listen", service.tls_listen)):
            for address in addresses:
                tagged = f"{key}:{address}"
                if tagged in seen:
                    raise doc.error(("services", index, key), f"{address} is listed twice ({key})")
                seen.add(tagged)


def _build_service(doc: Document, index: int, data: Any, schema: ConfigSchema) -> ServiceConfig:
    path: Path = ("services", index)
    values = validate_mapping(doc, path, data, schema.service_keys, _PLUGIN_KEY_HINT)
    if not values["listen"] and not values["tls_listen"]:
        raise doc.error((*path, "listen"), "a service needs at least one listen address")
    upstreams = parse_upstreams(doc, (*path, "upstreams"), values["upstreams"])
    if values["discovery"] is not None:
        if upstreams:
            raise doc.error(
                (*path, "discovery"),
                "a service takes its backends from upstreams or from discovery, not both",
            )
        if not isinstance(values["discovery"], dict):
            raise doc.error(
                (*path, "discovery"),
                f"expected a mapping with a source, got {values['discovery']!r}",
            )
    kernel = {key: values[key] for key in SERVICE_KEYS if key not in ("upstreams", "name")}
    kernel["selection_options"] = kernel["selection_options"] or {}
    kernel["listen"] = kernel["listen"] or []
    kernel["tls_listen"] = kernel["tls_listen"] or []
    kernel["certificates"] = parse_certificates(doc, (*path, "certificates"), values)
    if values["client_ca"] is not None:
        kernel["client_ca"] = _relative_to(doc, values["client_ca"])
    if values["client_cert"] != "none" and values["client_ca"] is None:
        raise doc.error((*path, "client_cert"), "client certificates need client_ca")
    extra = {key: values[key] for key in schema.service_keys if key not in SERVICE_KEYS}
    return ServiceConfig(
        name=values["name"] or f"service{index}", upstreams=upstreams, extra=extra, **kernel
    )


def _relative_to(doc: Document, file: str) -> str:
    """A path from the config, resolved from the config file's directory."""
    base = os.path.dirname(os.path.abspath(doc.path)) if doc.path else os.getcwd()
    return os.path.normpath(os.path.join(base, file))


def parse_certificates(doc: Document, path: Path, values: dict[str, Any]) -> list[dict[str, str]]:
    """``certificates:`` for ``tls_listen``: ``[{cert: file, key: file}, ...]``, files resolved."""
    value = values["certificates"]
    if not values["tls_listen"]:
        if value:
            raise doc.error(path, "certificates are only used with tls_listen")
        return []
    if not value:
        raise doc.error(path, "tls_listen needs at least one certificate ({cert, key})")
    if not isinstance(value, list):
        raise doc.error(path, "expected a list of {cert, key}")
    result = []
    for index, item in enumerate(value):
        entry = validate_mapping(
            doc, (*path, index), item, {"cert": Field("str"), "key": Field("str")}
        )
        for name in ("cert", "key"):
            if entry[name] is None:
                raise doc.error((*path, index, name), f"missing {name} file")
        result.append({name: _relative_to(doc, entry[name]) for name in ("cert", "key")})
    return result


def parse_upstreams(doc: Document, path: Path, value: Any) -> list[Backend]:
    """``upstreams:``: a list of ``"ip:port"`` strings or ``{address, weight}`` mappings."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise doc.error(path, "expected a list of addresses")
    backends: list[Backend] = []
    listed: dict[str, int] = {}  # an address as written -> its index
    for index, item in enumerate(value):
        item_path = (*path, index)
        if isinstance(item, str):
            address, weight = item, 1
        elif isinstance(item, dict):
            entry = validate_mapping(
                doc,
                item_path,
                item,
                {"address": Field("str"), "weight": Field("int", 1, minimum=1)},
            )
            if entry["address"] is None:
                raise doc.error((*item_path, "address"), "missing address")
            address, weight = entry["address"], entry["weight"]
        else:
            raise doc.error(item_path, f"expected 'ip:port' or {{address, weight}}, got {item!r}")
        first = listed.setdefault(address, index)
        if first != index:
            where = path[-1]
            raise doc.error(
                item_path, f"{address} is {where}[{first}] too: list a backend once, with a weight"
            )
        try:
            backends.extend(Backend.parse(address, weight))
        except ValueError as exc:
            raise doc.error(item_path, str(exc)) from None
    return each_address_once(backends)


def apply_shortcuts(
    config: Config,
    *,
    listen: tuple[str, ...],
    upstreams: tuple[str, ...],
    upstream_tls: bool,
    sni: str | None,
    host: str | None,
) -> None:
    """Apply ``--listen/--upstream/--upstream-tls/--sni/--host`` to the configured service.

    With no service in the file they define one, named ``default``; with one they override its
    values; with several they are ambiguous and refused.
    """
    if not (listen or upstreams or upstream_tls or sni or host):
        return
    if len(config.services) > 1:
        raise ConfigError(
            "--listen/--upstream/--upstream-tls/--sni/--host apply to a single service, but "
            f"{config.path} defines {len(config.services)}"
        )
    if not config.services:
        config.services.append(ServiceConfig(name="default", listen=[], upstreams=[]))
    service = config.services[0]
    for address in listen:
        problem = check_listen([address])
        if problem:
            raise ConfigError(f"--listen {problem}")
    if listen:
        service.listen = list(listen)
    if upstreams:
        backends: list[Backend] = []
        for index, address in enumerate(upstreams):
            if address in upstreams[:index]:
                raise ConfigError(f"--upstream {address} is given twice: list a backend once")
            try:
                backends.extend(Backend.parse(address))
            except ValueError as exc:
                raise ConfigError(f"--upstream {exc}") from None
        service.upstreams = each_address_once(backends)
    if upstream_tls:
        service.tls = True
    if sni is not None:
        service.sni = sni
    if host is not None:
        problem = check_host(host)
        if problem:
            raise ConfigError(f"--host {problem}")
        service.host = host
    if not service.listen:
        service.listen = ["127.0.0.1:6188"]
