"""``lbx status`` and ``lbx backend add|remove|weight|enable|disable``: clients of the admin
endpoint."""

from __future__ import annotations

import functools
import http.client
import json
import os
import socket
import sys
import time
from typing import Any
from urllib.parse import quote

import click

from lbx import MAX_WEIGHT, check_weight
from lbx.admin import parse_address

TIMEOUT = 5.0


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=TIMEOUT)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(TIMEOUT)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class Endpoint:
    """Where the admin endpoint of a running lbx listens (``unix:/path`` or ``host:port``)."""

    def __init__(self, address: str, token: str | None = None) -> None:
        self.address = address
        self.target = parse_address(address)
        self.token = token

    def request(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> tuple[int, dict[str, Any]]:
        if isinstance(self.target, str):
            conn: http.client.HTTPConnection = _UnixConnection(self.target)
        else:
            conn = http.client.HTTPConnection(self.target[0], self.target[1], timeout=TIMEOUT)
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        payload = json.dumps(body).encode() if body is not None else None
        if payload is not None:
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            raw = response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise click.ClickException(
                f"cannot reach the lbx admin endpoint at {self.address}: {exc}"
            ) from None
        finally:
            conn.close()
        try:
            document: dict[str, Any] = json.loads(raw or b"{}")
        except ValueError:  # not lbx's JSON: a 401 for a missing token, another server
            text = raw.decode("utf-8", "replace").strip()
            document = {"error": f"{self.address} answered {response.status}: {text}"}
        return response.status, document

    def status(self) -> dict[str, Any]:
        code, document = self.request("GET", "/status")
        if code != 200:
            raise click.ClickException(document.get("error", f"status {code}"))
        return document


TOKEN_ENVIRONMENT = "LBX_ADMIN_TOKEN"


def resolve(socket_path: str | None, conf: str | None, token: str | None = None) -> Endpoint:
    """``--socket`` wins; else ``status.listen`` (or the default) of ``-c conf.yaml``. The token
    is ``--token``, else ``$LBX_ADMIN_TOKEN``, else ``status.token`` of the config file."""
    from lbx_status import default_listen

    token = token or os.environ.get(TOKEN_ENVIRONMENT) or None
    data: dict[str, Any] = {}
    if conf:
        import yaml

        try:
            with open(conf) as file:
                data = yaml.safe_load(file) or {}
        except (OSError, yaml.YAMLError) as exc:
            reason = getattr(exc, "strerror", None) or exc
            raise click.ClickException(f"cannot read {conf}: {reason}") from None
    section = data.get("status") or {}
    token = token or section.get("token")
    if socket_path:
        if socket_path.startswith("unix:") or (":" in socket_path and "/" not in socket_path):
            return Endpoint(socket_path, token)
        return Endpoint("unix:" + socket_path, token)
    if section.get("listen"):
        return Endpoint(str(section["listen"]), token)
    return Endpoint(default_listen(data.get("pid_file", "/tmp/lbx.pid")), token)


def _state(backend: dict[str, Any]) -> tuple[str, str]:
    """A backend's state and its colour."""
    if not backend["enabled"]:
        return "disabled", "yellow"
    if not backend["healthy"]:
        return "unhealthy", "red"
    if backend["ejected"]:
        return "ejected", "red"
    return "up", "green"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _heading(service: dict[str, Any]) -> Any:
    """A service's heading: its name, where it listens, how it selects, where its backends come
    from (in red while that source fails, with its reason) and its counters."""
    from rich.text import Text

    listen = [*service["listen"], *(f"{a} (TLS)" for a in service.get("tls_listen", []))]
    heading = Text.assemble(
        (service["name"], "bold"),
        f": listen {', '.join(listen)}; ",
        service["selection"] or "backends chosen by plugins",
    )
    discovery = service.get("discovery")
    if discovery is not None and discovery["source"] != "static":
        if discovery["last_error"]:
            failed = f"{discovery['source']} discovery failed, keeping the last set: "
            heading.append_text(Text.assemble("; ", (failed + discovery["last_error"], "red")))
        else:
            heading.append(f"; {discovery['source']} discovery")
    heading.append(
        f"; {_plural(service['requests'], 'request')}, {_plural(service['failures'], 'failure')}"
    )
    return heading


def render(document: dict[str, Any], address: str) -> Any:
    """The status: a heading per service over a table of its backends. In a narrow terminal the
    other columns give way, never a backend address (which backend is which is what the table
    is for); a heading wraps. Everything is plain text to rich: an address, a reason or an
    error is never read as markup or emoji (``backends.yaml:100:`` stays as it is)."""
    from rich import box
    from rich.console import Group
    from rich.table import Column, Table
    from rich.text import Text

    services = document["services"]
    addresses = max(
        (len(backend["addr"]) for service in services for backend in service["backends"]),
        default=0,
    )
    threads = document["threads"]
    parts: list[Any] = [
        Text(
            f"lbx pid {document['pid']} ({_plural(threads, 'worker')}), "
            f"{_plural(document['open_connections'], 'open connection')}, "
            f"at {time.strftime('%H:%M:%S')}, from {address}"
        )
    ]
    for service in services:
        parts += ["", _heading(service)]
        if not service["backends"]:
            parts.append(Text("  no backends"))
            continue
        table = Table(
            Column("backend", min_width=max(addresses, len("backend")), no_wrap=True),
            "weight",
            Column("state", min_width=len("unhealthy"), no_wrap=True),
            "requests",
            "failures",
            Column("reason", overflow="fold"),
            box=box.SIMPLE_HEAD,  # a few lines per service: --watch keeps more of them in view
            show_edge=False,
            pad_edge=False,
            collapse_padding=True,
        )
        for backend in service["backends"]:
            state, colour = _state(backend)
            table.add_row(
                Text(backend["addr"]),
                Text(str(backend["weight"])),
                Text(state, colour),
                Text(str(backend["requests"])),
                Text(str(backend["failures"])),
                Text(backend["reason"] or ""),
            )
        parts.append(table)
    return Group(*parts)


_ENDPOINT_OPTIONS = [
    click.option(
        "--token",
        metavar="SECRET",
        help=f"The endpoint's status.token (default: ${TOKEN_ENVIRONMENT}, or the config's).",
    ),
    click.option(
        "--socket",
        "socket_path",
        metavar="ADDR",
        help="Admin endpoint: a Unix socket path, unix:/path or host:port.",
    ),
    click.option(
        "-c",
        "--conf",
        metavar="FILE",
        help="The config file of the running lbx (finds status.listen).",
    ),
]


def _endpoint_options(function: Any) -> Any:
    """The endpoint's options, and its errors as lbx prints any failure: one line."""

    @functools.wraps(function)
    def one_line_errors(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except click.UsageError:
            raise  # a bad argument: click's usage hint, as for any command
        except click.ClickException as exc:
            click.echo(f"lbx: error: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)

    for option in reversed(_ENDPOINT_OPTIONS):
        one_line_errors = option(one_line_errors)
    return one_line_errors


PIPED_WIDTH = 1000
"""Columns of ``lbx status`` into a pipe or file (without ``COLUMNS``): wide enough that each
backend stays one line for grep and awk, where a terminal's width would wrap its reason."""


def _console() -> Any:
    """A rich console for the table: the terminal's width, or ``PIPED_WIDTH`` when piped."""
    from rich.console import Console

    if sys.stdout.isatty() or os.environ.get("COLUMNS"):
        return Console()
    return Console(width=PIPED_WIDTH)


@click.command()
@_endpoint_options
@click.option("--watch", is_flag=True, help="Refresh until Ctrl-C.")
@click.option(
    "--interval",
    type=click.FloatRange(min=0.05),
    default=1.0,
    show_default=True,
    help="Seconds between refreshes with --watch.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the JSON document instead.")
def status(
    token: str | None,
    socket_path: str | None,
    conf: str | None,
    watch: bool,
    interval: float,
    as_json: bool,
) -> None:
    """Show the services, backends, health and counters of a running lbx (lbx-status)."""
    endpoint = resolve(socket_path, conf, token)
    if as_json:
        click.echo(json.dumps(endpoint.status(), indent=2))
        return
    console = _console()
    if not watch:
        console.print(render(endpoint.status(), endpoint.address))
        return
    from rich.live import Live
    from rich.text import Text

    def frame() -> Any:
        try:
            return render(endpoint.status(), endpoint.address)
        except click.ClickException as exc:
            return Text(f"{exc.message} (retrying)", style="red")

    try:
        with Live(frame(), console=console, auto_refresh=False) as live:
            while True:
                time.sleep(interval)
                live.update(frame(), refresh=True)
    except KeyboardInterrupt:
        sys.exit(0)


@click.group()
def backend() -> None:
    """Change the backends of a running lbx (lbx-status): every worker follows at once, until
    the next reload or restart."""


def _service_and_address(
    endpoint: Endpoint, arguments: tuple[str, ...], service: str | None, new: bool = False
) -> tuple[str, str]:
    """``SERVICE ADDR`` or ``ADDR``: the service that has it (``new``: or the only one)."""
    if len(arguments) == 2:
        return arguments[0], arguments[1]
    if len(arguments) != 1:
        raise click.UsageError("expected [SERVICE] ADDRESS")
    address = arguments[0]
    if service is not None:
        return service, address
    services = endpoint.status()["services"]
    matches = [s["name"] for s in services if any(b["addr"] == address for b in s["backends"])]
    if not matches and new and len(services) == 1:
        matches = [services[0]["name"]]
    if not matches:
        raise click.ClickException(
            f"no backend {address}" + ("; name the service: SERVICE ADDRESS" if new else "")
        )
    if len(matches) > 1:
        raise click.ClickException(
            f"{address} is a backend of several services ({', '.join(matches)}); "
            "name one: SERVICE ADDRESS"
        )
    return matches[0], address


def _post(
    endpoint: Endpoint, service: str, address: str, action: str, body: dict[str, Any] | None = None
) -> dict[str, Any]:
    code, answer = endpoint.request(
        "POST", f"/backends/{quote(service, safe='')}/{quote(address, safe='')}/{action}", body
    )
    if code != 200:
        raise click.ClickException(answer.get("error", f"status {code}"))
    return answer


_SERVICE_OPTION = click.option(
    "--service", metavar="NAME", help="The service (or give it first: SERVICE ADDRESS)."
)


@backend.command()
@click.argument("arguments", nargs=-1, required=True, metavar="[SERVICE] ADDRESS")
@_SERVICE_OPTION
@_endpoint_options
def disable(
    arguments: tuple[str, ...],
    service: str | None,
    token: str | None,
    socket_path: str | None,
    conf: str | None,
) -> None:
    """Stop sending new requests to ADDRESS (requests in flight finish)."""
    endpoint = resolve(socket_path, conf, token)
    name, address = _service_and_address(endpoint, arguments, service)
    _post(endpoint, name, address, "disable")
    click.echo(f"{name}: {address} disabled (draining)")


@backend.command()
@click.argument("arguments", nargs=-1, required=True, metavar="[SERVICE] ADDRESS")
@_SERVICE_OPTION
@_endpoint_options
def enable(
    arguments: tuple[str, ...],
    service: str | None,
    token: str | None,
    socket_path: str | None,
    conf: str | None,
) -> None:
    """Send requests to ADDRESS again."""
    endpoint = resolve(socket_path, conf, token)
    name, address = _service_and_address(endpoint, arguments, service)
    _post(endpoint, name, address, "enable")
    click.echo(f"{name}: {address} enabled")


@backend.command()
@click.argument("arguments", nargs=-1, required=True, metavar="[SERVICE] ADDRESS")
@click.option("--weight", type=click.IntRange(1, MAX_WEIGHT), default=1, show_default=True)
@_SERVICE_OPTION
@_endpoint_options
def add(
    arguments: tuple[str, ...],
    weight: int,
    service: str | None,
    token: str | None,
    socket_path: str | None,
    conf: str | None,
) -> None:
    """Add ADDRESS to the service's backends (health checks first, when configured)."""
    endpoint = resolve(socket_path, conf, token)
    name, address = _service_and_address(endpoint, arguments, service, new=True)
    answer = _post(endpoint, name, address, "add", {"weight": weight})
    click.echo(f"{name}: {answer['change']}")


@backend.command()
@click.argument("arguments", nargs=-1, required=True, metavar="[SERVICE] ADDRESS")
@_SERVICE_OPTION
@_endpoint_options
def remove(
    arguments: tuple[str, ...],
    service: str | None,
    token: str | None,
    socket_path: str | None,
    conf: str | None,
) -> None:
    """Remove ADDRESS from the service's backends (requests in flight finish)."""
    endpoint = resolve(socket_path, conf, token)
    name, address = _service_and_address(endpoint, arguments, service)
    answer = _post(endpoint, name, address, "remove")
    click.echo(f"{name}: {answer['change']}")


@backend.command()
@click.argument("arguments", nargs=-1, required=True, metavar="[SERVICE] ADDRESS WEIGHT")
@_SERVICE_OPTION
@_endpoint_options
def weight(
    arguments: tuple[str, ...],
    service: str | None,
    token: str | None,
    socket_path: str | None,
    conf: str | None,
) -> None:
    """Change the weight of ADDRESS."""
    if len(arguments) < 2:
        raise click.UsageError("expected [SERVICE] ADDRESS WEIGHT")
    try:
        check_weight(int(arguments[-1]) if arguments[-1].isdigit() else arguments[-1])
    except ValueError as exc:
        raise click.UsageError(f"expected [SERVICE] ADDRESS WEIGHT: {exc}") from None
    endpoint = resolve(socket_path, conf, token)
    name, address = _service_and_address(endpoint, arguments[:-1], service)
    answer = _post(endpoint, name, address, "weight", {"weight": int(arguments[-1])})
    click.echo(f"{name}: {answer['change']}")
