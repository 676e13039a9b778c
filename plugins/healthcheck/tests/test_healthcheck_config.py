"""lbx-healthcheck configuration: strict validation with file:line, CLI shortcuts, ``-t``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import lbx
from lbx import Config, ConfigError, PluginManager, ServiceConfig
from lbx_healthcheck import HealthCheckSettings, PassiveSettings
from lbx_healthcheck import configure as configure_hook


def lbx_test(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``lbx serve -t ARGS``: check the config and exit."""
    return subprocess.run(
        [sys.executable, "-m", "lbx", "serve", "-t", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
        check=False,
    )


def service_yaml(tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "lbx.yaml"
    path.write_text(
        "version: 1\n"
        "plugins: [roundrobin, healthcheck]\n"
        "services:\n"
        "  - listen: 127.0.0.1:6188\n"
        "    upstreams: [127.0.0.1:8001]\n" + extra
    )
    return path


@pytest.mark.parametrize(
    ("extra", "line", "message"),
    [
        (
            "    health_check:\n      type: tcp\n      frequncy: 2\n",
            8,
            "services[0].health_check.frequncy: unknown key; did you mean 'frequency'?",
        ),
        (
            "    health_check:\n      type: udp\n",
            7,
            "services[0].health_check.type: expected one of tcp, http, got 'udp'",
        ),
        (
            "    health_check: {type: tcp, timeout: 0}\n",
            6,
            "services[0].health_check.timeout: must be greater than 0, got 0.0",
        ),
        (
            "    health_check:\n      type: tcp\n      path: /healthz\n",
            8,
            "services[0].health_check.path: only for 'type: http' checks",
        ),
        (
            "    health_check:\n      type: http\n      expected_statuses: [200, 6xx]\n",
            8,
            "services[0].health_check.expected_statuses[1]: expected a status (100-599) or a "
            "class like '2xx', got '6xx'",
        ),
        (
            "    health_check:\n      type: http\n      validator: nosuchmodule_xyz:check\n",
            8,
            "services[0].health_check.validator: cannot import 'nosuchmodule_xyz'",
        ),
        (
            "    health_check:\n      type: tcp\n      consecutive_failure: 0\n",
            8,
            "services[0].health_check.consecutive_failure: must be at least 1, got 0",
        ),
        (
            "    passive_health:\n      max_fails: 3\n      max_ejection_percent: 150\n",
            8,
            "services[0].passive_health.max_ejection_percent: must be at most 100, got 150.0",
        ),
        (
            "    passive_health:\n      ejection_time: 30\n      max_ejection_time: 10\n",
            8,
            "services[0].passive_health.max_ejection_time: max_ejection_time (10s) is shorter "
            "than ejection_time (30s)",
        ),
        (
            "    health_check:\n      type: tcp\n      reuse_connection: false\n",
            8,
            "services[0].health_check.reuse_connection: only for 'type: http' checks",
        ),
        (
            "    health_check:\n      type: http\n      reuse_connection: sometimes\n",
            8,
            "services[0].health_check.reuse_connection: expected true or false, got 'sometimes'",
        ),
        (
            "    passive_health: yes please\n",
            6,
            "services[0].passive_health: expected true or a mapping of settings",
        ),
    ],
)
def test_bad_config_is_refused_with_file_and_line(tmp_path, extra, line, message):
    """Every mistake in the plugin's keys names the file, the line and the key; exit code 2."""
    path = service_yaml(tmp_path, extra)
    result = lbx_test("-c", str(path), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert f"lbx: error: {path}:{line}: {message}" in result.stderr


def test_good_config_passes_dash_t(tmp_path):
    """A config using every key is valid."""
    path = service_yaml(
        tmp_path,
        "    host: app.test\n"
        "    health_check:\n"
        "      type: http\n"
        "      frequency: 2\n"
        "      timeout: 0.5\n"
        "      consecutive_success: 2\n"
        "      consecutive_failure: 3\n"
        "      parallel: false\n"
        "      max_parallel: 10\n"
        "      port: 8080\n"
        "      path: /healthz\n"
        "      method: head\n"
        "      host: health.test\n"
        "      expected_statuses: [2xx, 301]\n"
        "      reuse_connection: false\n"
        "    passive_health:\n"
        "      max_fails: 5\n"
        "      ejection_time: 30\n"
        "      max_ejection_time: 600\n"
        "      max_ejection_percent: 10\n"
        "      on_5xx: true\n",
    )
    result = lbx_test("-c", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "configuration" in result.stdout and "is valid" in result.stdout


def test_cli_shortcuts(tmp_path):
    """--health-check and --health-check-frequency are checked like every other option."""
    base = ["--plugin", "roundrobin", "--plugin", "healthcheck", "--upstream", "127.0.0.1:8001"]
    assert lbx_test(*base, "--health-check", "tcp", cwd=tmp_path).returncode == 0
    result = lbx_test(*base, "--health-check-frequency", "2", cwd=tmp_path)
    assert result.returncode == 2
    assert "--health-check-frequency needs --health-check tcp|http" in result.stderr
    result = lbx_test(*base, "--health-check", "udp", cwd=tmp_path)
    assert result.returncode == 2 and "'udp' is not one of 'tcp', 'http'" in result.stderr
    result = lbx_test(*base, "--health-check", "tcp", "--health-check-frequency", "0", cwd=tmp_path)
    assert result.returncode == 2 and "--health-check-frequency" in result.stderr


def test_cli_applies_to_services_without_their_own_check():
    """configure() gives --health-check to services with no health_check; others keep theirs."""
    own = ServiceConfig("own", ["127.0.0.1:1"], [], extra={"health_check": {"type": "http"}})
    bare = ServiceConfig("bare", ["127.0.0.1:2"], [], extra={"passive_health": True})
    config = Config(
        services=[own, bare],
        options={"health_check": "tcp", "health_check_frequency": 3.0},
    )
    pm = PluginManager()
    configure_hook(config, pm)
    assert pm.has_plugin("healthcheck.passive")  # "bare" has passive checks
    assert own.extra["health_check"] == HealthCheckSettings(type="http")
    assert bare.extra["health_check"] == HealthCheckSettings(type="tcp", frequency=3.0)
    assert bare.extra["passive_health"] == PassiveSettings()
    assert own.extra["passive_health"] is None


def test_shorthand_and_defaults():
    """``health_check: tcp`` is a TCP check with Pingora's defaults; HTTP expects 200."""
    config = Config(
        services=[ServiceConfig("s", ["127.0.0.1:1"], [], extra={"health_check": "http"})]
    )
    pm = PluginManager()
    configure_hook(config, pm)
    assert not pm.has_plugin("healthcheck.passive")  # no passive checks: no request hooks
    settings = config.services[0].extra["health_check"]
    assert settings == HealthCheckSettings(type="http")
    assert (settings.frequency, settings.timeout) == (1.0, 1.0)
    assert (settings.consecutive_success, settings.consecutive_failure) == (1, 1)
    assert settings.status_ok(200) and not settings.status_ok(204)
    assert settings.reuse_connection  # unlike Pingora: see docs/healthcheck.md
    wide = HealthCheckSettings(type="http", expected_statuses=("2xx", 301))
    assert wide.status_ok(204) and wide.status_ok(301) and not wide.status_ok(302)


def test_plugin_registers_through_its_entry_point():
    """``--plugin healthcheck`` loads the installed distribution."""
    pm = lbx.get_plugin_manager(["healthcheck"])
    assert pm.infos["healthcheck"].distribution == "lbx-healthcheck"
    options = [o.name for batch in pm.hook.add_cli_options() for o in batch]
    assert options == ["health_check", "health_check_frequency"]
    with pytest.raises(ConfigError, match="needs --health-check"):
        configure_hook(Config(options={"health_check_frequency": 1.0}), pm)
