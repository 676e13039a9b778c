"""lbx-healthcheck: active (TCP, HTTP) and passive health checks, one view of health.

- ``health_check:`` in a service (or ``--health-check tcp|http``) runs active checks in a
  background service, Pingora style (frequency, timeout, consecutive_success/failure, parallel).
  The first round completes before lbx listens; backends failing it start unhealthy.
- ``passive_health:`` in a service ejects a backend after ``max_fails`` consecutive proxy failures
  (connect refused, reset, timeout; 5xx with ``on_5xx``) for ``ejection_time`` seconds, doubling
  on repeated ejection up to ``max_ejection_time``; at most ``max_ejection_percent`` of a
  service's backends are ejected at once (nginx ``max_fails``/``fail_timeout``, Envoy outlier
  detection).

Both write one verdict per backend through ``Backends.set_healthy``: lbx logs every change and
calls ``backend_health_changed``. See docs/healthcheck.md.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import click

from lbx import Config, ConfigError, ConfigSchema, Field, PluginManager, Server, hookimpl
from lbx_healthcheck.checker import ServiceChecker, run_checks
from lbx_healthcheck.checks import HttpCheck, TcpCheck
from lbx_healthcheck.passive import PassiveChecks
from lbx_healthcheck.settings import (
    HealthCheckSettings,
    PassiveSettings,
    parse_health_check,
    parse_passive,
)
from lbx_healthcheck.state import ServiceHealth

__all__ = [
    "HealthCheckSettings",
    "HealthChecks",
    "PassiveChecks",
    "PassiveSettings",
    "ServiceChecker",
    "ServiceHealth",
]

HEALTH_CHECK_KEY = "health_check"
PASSIVE_KEY = "passive_health"
BACKGROUND_SERVICE = "health check"

# -- configuration ------------------------------------------------------------------------------


@hookimpl
def add_config_keys(schema: ConfigSchema) -> None:
    schema.add_service_keys(
        {
            HEALTH_CHECK_KEY: Field(
                "any", None, "active health check: tcp, http or a mapping (docs/healthcheck.md)"
            ),
            PASSIVE_KEY: Field(
                "any", None, "passive health: true or a mapping (docs/healthcheck.md)"
            ),
        }
    )


@hookimpl
def add_cli_options() -> list[click.Option]:
    return [
        click.Option(
            ["--health-check"],
            type=click.Choice(["tcp", "http"]),
            help="Health-check the upstreams of every service without a health_check of its own.",
        ),
        click.Option(
            ["--health-check-frequency"],
            type=click.FloatRange(min=0, min_open=True),
            metavar="SECONDS",
            help="Seconds between health-check rounds (default 1), with --health-check.",
        ),
    ]


@hookimpl
def configure(config: Config, plugin_manager: PluginManager) -> None:
    """Parse and validate the plugin's service keys; apply the command-line shortcuts; register
    the ``HealthChecks`` of this run.

    The passive checks' request hooks are registered only when a service has passive checks:
    otherwise every request would call them for nothing.
    """
    cli_type = config.options.get("health_check")
    cli_frequency = config.options.get("health_check_frequency")
    if cli_frequency is not None and cli_type is None:
        raise ConfigError("--health-check-frequency needs --health-check tcp|http")
    for index, service in enumerate(config.services):
        path = ("services", index)
        active = parse_health_check(
            config, (*path, HEALTH_CHECK_KEY), service.extra.get(HEALTH_CHECK_KEY)
        )
        if active is None and cli_type is not None:
            active = HealthCheckSettings(type=cli_type, frequency=cli_frequency or 1.0)
        passive = parse_passive(config, (*path, PASSIVE_KEY), service.extra.get(PASSIVE_KEY))
        service.extra[HEALTH_CHECK_KEY] = active
        service.extra[PASSIVE_KEY] = passive
    passive_checks = None
    if any(service.extra[PASSIVE_KEY] is not None for service in config.services):
        passive_checks = PassiveChecks()
        plugin_manager.register(passive_checks, name="healthcheck.passive")
    plugin_manager.register(HealthChecks(passive_checks), name="healthcheck.checks")


# -- the background service -------------------------------------------------------------------


class HealthChecks:
    """The checks of one run: active ones as a background service, and the passive checks'
    view of each service's health (``PassiveChecks``, when a service has them)."""

    def __init__(self, passive: PassiveChecks | None) -> None:
        self.passive = passive

    @hookimpl
    def register_background_services(self, server: Server, register: Callable[..., None]) -> None:
        register_checks(server, register, self.passive)


def register_checks(
    server: Server, register: Callable[..., None], passive_checks: PassiveChecks | None
) -> None:
    """Build each service's ``ServiceHealth`` and register the active checks (one background
    service for all of them)."""
    checkers: list[ServiceChecker] = []
    for service in server.services:
        lb = service.load_balancer
        active = service.config.extra.get(HEALTH_CHECK_KEY)
        passive = service.config.extra.get(PASSIVE_KEY)
        if lb is None or (active is None and passive is None):
            continue
        if not isinstance(active, HealthCheckSettings | None) or not isinstance(
            passive, PassiveSettings | None
        ):
            raise ConfigError("healthcheck: configure() did not run before the server was built")
        health = ServiceHealth(service.name, lb.backends, active, passive)
        if passive is not None and passive_checks is not None:
            passive_checks.services[service.name] = health
        if active is not None:
            # A backend that joins later (discovery, lbx backend add) starts unhealthy and
            # takes traffic once its first check passes, as at start-up.
            lb.backends.initial_healthy = False
            check_class = HttpCheck if active.type == "http" else TcpCheck
            check = check_class(active, service.config, server.config.ca_file)
            checker = ServiceChecker(health, check)
            checkers.append(checker)
            discovery = server.discovery.get(service.name)
            if discovery is not None:
                discovery.precheck = checker.precheck
    if checkers:
        register(BACKGROUND_SERVICE, functools.partial(run_checks, checkers), ready=True)
