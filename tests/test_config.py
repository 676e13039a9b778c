"""Config validation: parse_document/build_config errors with file, line and did-you-mean."""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path

import pytest

from lbx import ConfigError, ConfigSchema, Field
from lbx.config import (
    Config,
    ServiceConfig,
    apply_shortcuts,
    build_config,
    parse_document,
    plugin_list,
    read_document,
)
from lbx.lb import Backend
from lbx.plugins import get_plugin_manager

PLUGINS = Path(__file__).resolve().parent / "plugins"
FILE = "conf.yaml"


def load(text: str, schema: ConfigSchema | None = None) -> Config:
    """Validate YAML ``text`` (dedented) as if read from ``conf.yaml``."""
    return build_config(parse_document(textwrap.dedent(text), FILE), schema or ConfigSchema())


def error_of(text: str, schema: ConfigSchema | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as excinfo:
        load(text, schema)
    return excinfo.value


# -- valid documents ------------------------------------------------------------------------------


def test_minimal_and_empty_documents() -> None:
    """An empty file and ``version: 1`` give the defaults and no services."""
    for text in ("", "version: 1\n", "---\nversion: 1\n"):
        config = load(text)
        assert config.version == 1
        assert config.threads == 1
        assert config.services == []
        assert config.path == FILE


def test_an_unquoted_off_is_the_word_off() -> None:
    """YAML reads ``off`` and ``no`` unquoted as false: a key that takes the word gets it (as
    nginx is written); a key that does not still says what it expected."""
    config = load(
        """
        services:
          - listen: ["127.0.0.1:0"]
            upstreams: ["127.0.0.1:1"]
            x_forwarded_for: off
            x_forwarded_proto: no
        """
    )
    service = config.services[0]
    assert (service.x_forwarded_for, service.x_forwarded_proto) == ("off", "off")
    error = error_of(
        """
        services:
          - listen: ["127.0.0.1:0"]
            upstreams: ["127.0.0.1:1"]
            x_forwarded_for: on
        """
    )
    assert "x_forwarded_for: expected a string, got True (YAML reads" in str(error), str(error)
    assert "pid_file: expected a string, got False (YAML" in str(error_of("pid_file: off\n"))


def test_full_service_is_read() -> None:
    """A service with every kernel key is read into a ``ServiceConfig``."""
    config = load(
        """
        version: 1
        threads: 2
        max_retries: 3
        grace_period_seconds: 1.5
        services:
          - name: web
            listen: 127.0.0.1:8080
            upstreams:
              - 127.0.0.2:80
              - {address: "127.0.0.1:81", weight: 3}
              - unix:/run/app.sock
            tls: true
            sni: example.com
            host: example.org
            selection: roundrobin
            connect_timeout: 2
            read_timeout: 0.5
        """
    )
    assert config.threads == 2
    assert config.max_retries == 3
    assert config.grace_period_seconds == 1.5
    (service,) = config.services
    assert isinstance(service, ServiceConfig)
    assert service.name == "web"
    assert service.listen == ["127.0.0.1:8080"]
    assert service.upstreams == [
        Backend("127.0.0.2", 80),
        Backend("127.0.0.1", 81, 3),
        Backend(None, 0, 1, "/run/app.sock"),
    ]
    assert (service.tls, service.sni, service.host) == (True, "example.com", "example.org")
    assert service.selection == "roundrobin"
    assert (service.connect_timeout, service.read_timeout) == (2, 0.5)
    assert service.selection_options == {}


def test_services_get_default_names() -> None:
    """Services without ``name`` are named ``service<N>``."""
    config = load(
        """
        services:
          - listen: 127.0.0.1:1
          - listen: 127.0.0.1:2
        """
    )
    assert [s.name for s in config.services] == ["service0", "service1"]


def test_ipv6_and_unix_listen_addresses() -> None:
    """``[v6]:port`` and ``unix:/path`` are valid listen addresses."""
    config = load('services:\n  - listen: ["[::1]:8080", "unix:/tmp/lbx.sock", "0.0.0.0:0"]\n')
    assert config.services[0].listen == ["[::1]:8080", "unix:/tmp/lbx.sock", "0.0.0.0:0"]


def test_hostname_upstream_is_resolved() -> None:
    """An upstream given by name is resolved when the config is loaded."""
    config = load('services:\n  - listen: 127.0.0.1:1\n    upstreams: ["localhost:8000"]\n')
    backends = config.services[0].upstreams
    assert backends
    assert all(b.port == 8000 and b.host in ("127.0.0.1", "::1") for b in backends)


def test_two_names_for_one_address_make_one_backend() -> None:
    """A name that resolves to an address listed too gives one backend (the first listed), as
    Pingora's set of backends and a discovered set do; the same text twice is an error."""
    config = load(
        "services:\n  - listen: 127.0.0.1:1\n"
        '    upstreams: ["127.0.0.1:8000", "localhost:8000", {address: "[::1]:8000", weight: 2}]\n'
    )
    backends = config.services[0].upstreams
    assert (backends[0].addr, backends[0].weight) == ("127.0.0.1:8000", 1)
    assert len({b.addr for b in backends}) == len(backends)


def test_quick_start_server_keys() -> None:
    """The Pingora quick start's server keys load unchanged."""
    config = load(
        """
        ---
        version: 1
        threads: 2
        pid_file: /tmp/load_balancer.pid
        error_log: /tmp/load_balancer_err.log
        upgrade_sock: /tmp/load_balancer.sock
        """
    )
    assert config.pid_file == "/tmp/load_balancer.pid"
    assert config.error_log == "/tmp/load_balancer_err.log"
    assert config.upgrade_sock == "/tmp/load_balancer.sock"


# -- unknown keys ---------------------------------------------------------------------------------


def test_unknown_top_level_key_with_did_you_mean() -> None:
    """A top-level typo names file, line and key, with a suggestion."""
    error = error_of("version: 1\n\nthreds: 2\n")
    assert (error.file, error.line) == (FILE, 3)
    assert str(error) == "conf.yaml:3: threds: unknown key; did you mean 'threads'?"


def test_unknown_top_level_section_hints_at_plugins() -> None:
    """An unknown section with no close match says plugin sections need their plugin enabled."""
    error = error_of("version: 1\nhealthcheck:\n  interval: 1\n")
    assert error.line == 2
    assert "healthcheck: unknown key" in str(error)
    assert "plugin sections need their plugin enabled" in str(error)


def test_unknown_service_key_hints_at_plugins() -> None:
    """A service key no enabled plugin declares, with no close match, says a plugin's service
    keys need their plugin (as ``health_check`` without the healthcheck plugin)."""
    error = error_of(
        "services:\n  - listen: 127.0.0.1:1\n    upstreams: [127.0.0.1:2]\n"
        "    health_check: {type: tcp}\n"
    )
    assert error.line == 4
    assert str(error).endswith(
        "services[0].health_check: unknown key; a plugin's service keys need their plugin "
        "enabled in 'plugins:'"
    )


def test_unknown_service_key_with_did_you_mean() -> None:
    """A typo inside a service points at its own line."""
    error = error_of(
        """
        services:
          - name: a
            listen: 127.0.0.1:1
          - name: b
            listen: 127.0.0.1:2
            upstream: ["127.0.0.1:3"]
        """
    )
    assert error.line == 7
    assert str(error) == (
        "conf.yaml:7: services[1].upstream: unknown key; did you mean 'upstreams'?"
    )


def test_unknown_key_in_upstream_entry() -> None:
    """A typo inside an ``upstreams`` mapping entry points at its line."""
    error = error_of(
        """
        services:
          - listen: 127.0.0.1:1
            upstreams:
              - 127.0.0.1:2
              - address: 127.0.0.1:3
                weigth: 3
        """
    )
    assert error.line == 7
    assert str(error) == (
        "conf.yaml:7: services[0].upstreams[1].weigth: unknown key; did you mean 'weight'?"
    )


def test_pingora_only_key_is_accepted_with_warning(caplog: pytest.LogCaptureFixture) -> None:
    """A Pingora key lbx does not use is accepted and logged as a warning, not an error."""
    caplog.set_level(logging.WARNING, logger="lbx.config")
    config = load("version: 1\nwork_stealing: true\nlistener_tasks_per_fd: 4\n")
    assert config.version == 1
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "work_stealing" in warnings[0].getMessage()
    assert "conf.yaml:2" in warnings[0].getMessage()
    assert "listener_tasks_per_fd" in warnings[1].getMessage()


# -- types and values -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("threads: two\n", 1, "threads: expected a whole number, got 'two'"),
        ("threads: 1.5\n", 1, "threads: expected a whole number, got 1.5"),
        ("threads: true\n", 1, "threads: expected a whole number, got True"),
        ("threads: 0\n", 1, "threads: must be at least 1, got 0"),
        ('version: "1"\n', 1, "version: expected a whole number, got '1'"),
        ("daemon: 1\n", 1, "daemon: expected true or false, got 1"),
        ("pid_file: 3\n", 1, "pid_file: expected a string, got 3"),
        ("grace_period_seconds: fast\n", 1, "grace_period_seconds: expected a number"),
        ("grace_period_seconds: -1\n", 1, "grace_period_seconds: must be at least 0"),
        ("max_retries: 0\n", 1, "max_retries: must be at least 1"),
        ("plugins: 3\n", 1, "plugins: expected a string or a list of strings, got 3"),
        (
            'services:\n  - listen: 127.0.0.1:1\n    tls: "yes"\n',
            3,
            "services[0].tls: expected true or false, got 'yes'",
        ),
        (
            "services:\n  - listen: 127.0.0.1:1\n    connect_timeout: 0\n",
            3,
            "services[0].connect_timeout: must be greater than 0",
        ),
        (
            "services:\n  - listen: 127.0.0.1:1\n    selection_options: [1]\n",
            3,
            "services[0].selection_options: expected a mapping",
        ),
        (
            "services:\n  - listen: [1, 2]\n",
            2,
            "services[0].listen: expected a string or a list of strings",
        ),
        *(
            (
                f'services:\n  - listen: 127.0.0.1:1\n    host: "{host}"\n',
                3,
                "services[0].host: must be host[:port]",
            )
            for host in ("a\\r\\nX-B: 1", "a b", "..", "", "\\u0100.example")
        ),
        ("services:\n  - 1\n", 2, "services[0]: expected a mapping, got 1"),
        ("services: 3\n", 1, "services: expected a list of services"),
    ],
)
def test_wrong_types_and_values(text: str, line: int, message: str) -> None:
    """Each value of the wrong type or out of range is an error at its line."""
    error = error_of(text)
    assert error.file == FILE
    assert error.line == line
    assert error.message.startswith(message), error.message


def test_yaml_one_one_yes_is_a_bool() -> None:
    """Unquoted ``yes`` is YAML 1.1's true, so ``tls: yes`` is accepted as True."""
    assert load("services:\n  - listen: 127.0.0.1:1\n    tls: yes\n").services[0].tls is True


def test_version_2_is_refused() -> None:
    """Only config format version 1 exists."""
    error = error_of("version: 2\n")
    assert str(error) == "conf.yaml:1: version: only version 1 is supported, got 2"


def test_duplicate_top_level_key() -> None:
    """A key given twice is an error at the second occurrence."""
    error = error_of("threads: 1\nversion: 1\nthreads: 2\n")
    assert (error.line, error.message) == (3, "threads: duplicate key")


def test_duplicate_service_key() -> None:
    """A key given twice inside a service is an error at the second occurrence."""
    error = error_of(
        """
        services:
          - listen: 127.0.0.1:1
            tls: true
            tls: false
        """
    )
    assert (error.line, error.message) == (5, "services[0].tls: duplicate key")


def test_non_string_key() -> None:
    """A key that is not a string is an error."""
    error = error_of("1: 2\n")
    assert error.line == 1
    assert "keys must be strings" in error.message


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("version: 1\nthreads: [1\nuser: x\n", 3),
        ("version: 1\nservices:\n  - listen: a\n   name: b\n", 4),
        ("version: 1\nthreads: 'unterminated\n", 3),
        ("version: 1\n\tthreads: 2\n", 2),
    ],
)
def test_invalid_yaml_reports_line(text: str, line: int) -> None:
    """A YAML syntax error is a ``ConfigError`` with the line of the problem."""
    with pytest.raises(ConfigError) as excinfo:
        parse_document(text, FILE)
    assert excinfo.value.message.startswith("invalid YAML: ")
    assert (excinfo.value.file, excinfo.value.line) == (FILE, line)


def test_several_documents_are_refused() -> None:
    """A file with two YAML documents is an error, not silently half-read."""
    with pytest.raises(ConfigError, match="invalid YAML"):
        parse_document("version: 1\n---\nversion: 1\n", FILE)


@pytest.mark.parametrize("text", ["- 1\n- 2\n", "just a string\n", "42\n"])
def test_document_must_be_a_mapping(text: str) -> None:
    """The top level must be a mapping."""
    with pytest.raises(ConfigError, match="must be a mapping"):
        parse_document(text, FILE)


def test_read_document_missing_file(tmp_path: Path) -> None:
    """A file that cannot be read is a ``ConfigError`` naming it."""
    path = str(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError) as excinfo:
        read_document(path)
    assert str(excinfo.value).startswith(f"{path}: cannot read config")


# -- addresses ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("0.0.0.0", "expected host:port"),
        (":8080", "expected host:port"),
        ("127.0.0.1:http", "port must be a number"),
        ("127.0.0.1:65536", "port must be a number"),
        ("::1:80", "write IPv6 addresses as [addr]:port"),
        ("[::1]", "expected [ipv6]:port"),
        ("unix:", "empty Unix socket path"),
    ],
)
def test_bad_listen_address(address: str, reason: str) -> None:
    """A bad listen address is an error at the ``listen`` line naming the address."""
    error = error_of(f'services:\n  - name: a\n    listen: ["127.0.0.1:1", "{address}"]\n')
    assert error.line == 3
    assert error.message.startswith(f"services[0].listen: {address!r}: {reason}")


def test_missing_listen_address() -> None:
    """A service needs at least one listen address."""
    error = error_of("services:\n  - name: a\n    upstreams: [127.0.0.1:2]\n")
    assert error.line == 2
    assert "services[0].listen: a service needs at least one listen address" in error.message


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ('"127.0.0.1"', "expected host:port"),
        ('"127.0.0.1:99999"', "port must be a number"),
        ('"unix:"', "empty Unix socket path"),
        ("[1, 2]", "expected 'ip:port' or {address, weight}"),
        ("{weight: 2}", "missing address"),
        ('{address: "127.0.0.1:1", weight: 0}', "must be at least 1"),
        ('{address: "127.0.0.1:1", weight: "2"}', "expected a whole number"),
        ('{address: "127.0.0.1:2", weight: 3}', "127.0.0.1:2 is upstreams[0] too: list a backend"),
        ('"127.0.0.1:2"', "127.0.0.1:2 is upstreams[0] too: list a backend once, with a weight"),
    ],
)
def test_bad_upstream_entry(entry: str, reason: str) -> None:
    """A bad upstream is an error at the line of that entry."""
    error = error_of(
        "services:\n  - listen: 127.0.0.1:1\n    upstreams:\n"
        f"      - 127.0.0.1:2\n      - {entry}\n"
    )
    assert error.line == 5
    assert error.message.startswith("services[0].upstreams[1]")
    assert reason in error.message


def test_upstreams_must_be_a_list() -> None:
    """``upstreams`` as a mapping is an error."""
    error = error_of("services:\n  - listen: 127.0.0.1:1\n    upstreams: {a: 1}\n")
    assert error.message == "services[0].upstreams: expected a list of addresses"


def test_unresolvable_upstream_host() -> None:
    """An upstream host that does not resolve is an error naming the host."""
    error = error_of(
        "services:\n  - listen: 127.0.0.1:1\n    upstreams:\n      - nosuchhost.invalid:80\n"
    )
    assert error.line == 4
    assert "cannot resolve 'nosuchhost.invalid'" in error.message


def test_duplicate_service_names() -> None:
    """Two services with the same name are refused at the second name."""
    error = error_of(
        """
        services:
          - name: web
            listen: 127.0.0.1:1
          - name: web
            listen: 127.0.0.1:2
        """
    )
    assert error.line == 5
    assert error.message == "services[1].name: duplicate service name 'web'"


# -- plugin-declared keys -------------------------------------------------------------------------


def schema_with_section() -> ConfigSchema:
    schema = ConfigSchema()
    schema.add_section(
        "metrics",
        {"port": Field("int", 9000, minimum=1), "path": Field("str", "/metrics")},
    )
    schema.add_service_keys({"rate_limit": Field("number", None, minimum=0)})
    return schema


def test_plugin_section_is_validated_and_defaulted() -> None:
    """A declared section gets its values, with defaults for missing keys."""
    config = load("metrics:\n  port: 9100\n", schema_with_section())
    assert config.sections == {"metrics": {"port": 9100, "path": "/metrics"}}
    assert load("version: 1\n", schema_with_section()).sections["metrics"]["port"] == 9000


def test_plugin_section_unknown_key() -> None:
    """A typo inside a plugin section is an error with a suggestion."""
    error = error_of("version: 1\nmetrics:\n  prot: 9100\n", schema_with_section())
    assert str(error) == "conf.yaml:3: metrics.prot: unknown key; did you mean 'port'?"


def test_plugin_section_wrong_type() -> None:
    """A plugin section's values are type-checked."""
    error = error_of("metrics:\n  port: high\n", schema_with_section())
    assert (error.line, error.message) == (2, "metrics.port: expected a whole number, got 'high'")
    error = error_of("metrics: [1]\n", schema_with_section())
    assert error.message.startswith("metrics: expected a mapping")


def test_plugin_service_keys() -> None:
    """Plugin-declared service keys land in ``ServiceConfig.extra`` and are validated."""
    schema = schema_with_section()
    config = load("services:\n  - listen: 127.0.0.1:1\n    rate_limit: 2.5\n", schema)
    assert config.services[0].extra == {"rate_limit": 2.5}
    error = error_of("services:\n  - listen: 127.0.0.1:1\n    rate_limit: -1\n", schema)
    assert (error.line, error.message) == (3, "services[0].rate_limit: must be at least 0, got -1")
    error = error_of("services:\n  - listen: 127.0.0.1:1\n    rate_limt: 1\n", schema)
    assert "did you mean 'rate_limit'?" in error.message


def test_undeclared_plugin_keys_are_errors() -> None:
    """Without the declaring plugin, its section and service keys are unknown."""
    assert "unknown key" in error_of("metrics:\n  port: 1\n").message
    assert "unknown key" in error_of("services:\n  - listen: a:1\n    rate_limit: 1\n").message


def test_schema_refuses_redefinitions() -> None:
    """A plugin cannot redefine a kernel key, section or service key."""
    schema = schema_with_section()
    for name in ("threads", "services", "plugins", "metrics"):
        with pytest.raises(ValueError, match="already defined"):
            schema.add_section(name, {})
    for key in ("listen", "rate_limit"):
        with pytest.raises(ValueError, match="already defined"):
            schema.add_service_keys({key: Field("str")})


def test_sections_from_a_plugin_hook() -> None:
    """A plugin's ``add_config_keys`` declares its section; its ``check`` runs."""
    pm = get_plugin_manager([str(PLUGINS / "section_plugin.py")])
    schema = ConfigSchema()
    pm.hook.add_config_keys(schema=schema)
    config = load(
        """
        section_plugin:
          greeting: hi
        services:
          - listen: 127.0.0.1:1
            section_plugin_tag: blue
        """,
        schema,
    )
    assert config.sections["section_plugin"] == {"greeting": "hi", "count": 1}
    assert config.services[0].extra == {"section_plugin_tag": "blue"}
    error = error_of("section_plugin:\n  greeting: HI\n", schema)
    assert (error.line, error.message) == (2, "section_plugin.greeting: must not be all capitals")
    error = error_of("section_plugin:\n  count: -1\n", schema)
    assert error.message == "section_plugin.count: must be at least 0, got -1"


def test_plugins_list_relative_paths_resolve_from_the_file(tmp_path: Path) -> None:
    """Relative ``.py`` entries of ``plugins:`` are resolved from the config file's folder."""
    path = tmp_path / "conf" / "lbx.yaml"
    path.parent.mkdir()
    path.write_text("plugins: [roundrobin, ../extra/p.py, /abs/q.py]\n")
    document = read_document(str(path))
    assert plugin_list(document) == ["roundrobin", str(tmp_path / "extra" / "p.py"), "/abs/q.py"]
    assert load("plugins: roundrobin\n").plugins == ["roundrobin"]


# -- command-line shortcuts -----------------------------------------------------------------------


def shortcuts(config: Config, **overrides: object) -> None:
    values: dict[str, object] = {
        "listen": (),
        "upstreams": (),
        "upstream_tls": False,
        "sni": None,
        "host": None,
    }
    values.update(overrides)
    apply_shortcuts(config, **values)  # type: ignore[arg-type]


def test_shortcuts_without_service_define_default() -> None:
    """With no service in the file the shortcuts define one named ``default``."""
    config = load("version: 1\n")
    shortcuts(
        config,
        upstreams=("127.0.0.1:1", "127.0.0.1:2"),
        upstream_tls=True,
        sni="one.one.one.one",
        host="h",
    )
    (service,) = config.services
    assert service.name == "default"
    assert service.listen == ["127.0.0.1:6188"]
    assert service.upstreams == [Backend("127.0.0.1", 1), Backend("127.0.0.1", 2)]
    assert (service.tls, service.sni, service.host) == (True, "one.one.one.one", "h")


def test_shortcuts_override_the_only_service() -> None:
    """With one service the shortcuts override its values and keep the rest."""
    config = load(
        """
        services:
          - name: web
            listen: 127.0.0.1:1
            upstreams: [127.0.0.1:2]
            sni: keep.example
            read_timeout: 5
        """
    )
    shortcuts(config, listen=("127.0.0.1:7", "[::1]:7"), upstreams=("127.0.0.1:3",))
    (service,) = config.services
    assert service.name == "web"
    assert service.listen == ["127.0.0.1:7", "[::1]:7"]
    assert service.upstreams == [Backend("127.0.0.1", 3)]
    assert (service.sni, service.read_timeout, service.tls) == ("keep.example", 5, False)


def test_shortcuts_with_several_services_are_refused() -> None:
    """With several services the shortcuts are ambiguous: an error."""
    config = load("services:\n  - listen: 127.0.0.1:1\n  - listen: 127.0.0.1:2\n")
    with pytest.raises(ConfigError, match="apply to a single service"):
        shortcuts(config, upstreams=("127.0.0.1:3",))
    assert len(config.services) == 2


def test_no_shortcuts_change_nothing() -> None:
    """Without shortcuts the config is left alone, even with several or no services."""
    empty = load("version: 1\n")
    shortcuts(empty)
    assert empty.services == []
    several = load("services:\n  - listen: 127.0.0.1:1\n  - listen: 127.0.0.1:2\n")
    shortcuts(several)
    assert len(several.services) == 2


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"listen": ("nonsense",)}, "--listen 'nonsense': expected host:port"),
        ({"upstreams": ("nonsense",)}, "--upstream 'nonsense': expected host:port"),
        ({"upstreams": ("127.0.0.1:99999",)}, "--upstream '127.0.0.1:99999': port must be"),
    ],
)
def test_bad_shortcut_addresses(overrides: dict[str, object], message: str) -> None:
    """A bad ``--listen``/``--upstream`` address is a ``ConfigError`` naming the flag."""
    with pytest.raises(ConfigError) as excinfo:
        shortcuts(load(""), **overrides)
    assert str(excinfo.value).startswith(message)


# -- known bugs -----------------------------------------------------------------------------------


def test_yaml_merge_keys_can_be_overridden() -> None:
    """A YAML merge key (``<<: *base``) followed by an override is valid YAML, not a duplicate."""
    config = load(
        """
        services:
          - &base
            name: a
            listen: 127.0.0.1:1
            keepalive_timeout: 5
          - <<: *base
            name: b
            listen: 127.0.0.1:2
        """
    )
    assert [s.name for s in config.services] == ["a", "b"]
    assert config.services[1].listen == ["127.0.0.1:2"]
    assert config.services[1].keepalive_timeout == 5


def test_listen_address_twice_is_an_error() -> None:
    """The same listen address in two services is refused (listeners are keyed by address)."""
    error = error_of("services:\n  - listen: 127.0.0.1:1\n  - listen: [127.0.0.1:2, 127.0.0.1:1]\n")
    assert error.message == "services[1].listen: 127.0.0.1:1 is listed twice (listen)"
    assert error.line == 3


@pytest.mark.parametrize("value", ["{}", '""'])
def test_services_of_wrong_empty_type_is_an_error(value: str) -> None:
    """``services: {}`` is the wrong type (a mapping), even when empty."""
    error = error_of(f"services: {value}\n")
    assert error.message == "services: expected a list of services"
