"""``lbx status`` and ``lbx backend enable|disable``: clients of the admin endpoint."""

from __future__ import annotations

import http.client
import json
import socket
import sys
import time
from typing import Any
from urllib.parse import quote

import click

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

    def __init__(self, address: str) -> None:
        self.address = address
        self.target = parse_address(address)

    def request(self, method: str, path: str) -> tuple[int, dict[str, Any]]:
        if isinstance(self.target, str):
            conn: http.client.HTTPConnection = _UnixConnection(self.target)
        else:
            conn = http.client.HTTPConnection(self.target[0], self.target[1], timeout=TIMEOUT)
        try:
            conn.request(method, path)
            response = conn.getresponse()
            document: dict[str, Any] = json.loads(response.read() or b"{}")
            return response.status, document
        except (OSError, http.client.HTTPException, ValueError) as exc:
            raise click.ClickException(
                f"cannot reach the lbx admin endpoint at {self.address}: {exc}"
            ) from None
        finally:
            conn.close()

    def status(self) -> dict[str, Any]:
        code, document = self.request("GET", "/status")
        if code != 200:
            raise click.ClickException(document.get("error", f"status {code}"))
        return document


def resolve(socket_path: str | None, conf: str | None) -> Endpoint:
    """``--socket`` wins; else ``status.listen`` (or the default) of ``-c conf.yaml``."""
    from lbx_status import default_listen

    if socket_path:
        if socket_path.startswith("unix:") or (":" in socket_path and "/" not in socket_path):
            return Endpoint(socket_path)
        return Endpoint("unix:" + socket_path)
    pid_file: str | None = "/tmp/lbx.pid"
    if conf:
        import yaml

        try:
            with open(conf) as file:
                data = yaml.safe_load(file) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise click.ClickException(f"cannot read {conf}: {exc}") from None
        listen = (data.get("status") or {}).get("listen")
        if listen:
            return Endpoint(str(listen))
        pid_file = data.get("pid_file", pid_file)
    return Endpoint(default_listen(pid_file))


def _state(backend: dict[str, Any]) -> str:
    if not backend["enabled"]:
        return "[yellow]disabled[/yellow]"
    if not backend["healthy"]:
        return "[red]unhealthy[/red]"
    if backend["ejected"]:
        return "[red]ejected[/red]"
    return "[green]up[/green]"


def render(document: dict[str, Any], address: str) -> Any:
    from rich.table import Table

    table = Table(
        "service",
        "backend",
        "weight",
        "state",
        "requests",
        "failures",
        "reason",
        title=(
            f"lbx pid {document['pid']} ({document['threads']} worker"
            f"{'s' if document['threads'] != 1 else ''}), "
            f"{document['open_connections']} open connections, at {time.strftime('%H:%M:%S')}"
        ),
        caption=address,
    )
    for service in document["services"]:
        table.add_row(
            f"[bold]{service['name']}[/bold]",
            ", ".join(service["listen"]),
            "",
            service["selection"] or "",
            str(service["requests"]),
            str(service["failures"]),
            "",
        )
        for backend in service["backends"]:
            table.add_row(
                "",
                backend["addr"],
                str(backend["weight"]),
                _state(backend),
                str(backend["requests"]),
                str(backend["failures"]),
                backend["reason"] or "",
            )
    return table


_ENDPOINT_OPTIONS = [
    click.option(
        "--socket",
        "socket_path",
        metavar="ADDR",
        help="Admin endpoint: a Unix socket path, unix:/path or host:port.",
    ),
    click.option(
        "-c",
        "--conf",
        type=click.Path(dir_okay=False),
        help="The config file of the running lbx (finds status.listen).",
    ),
]


def _endpoint_options(function: Any) -> Any:
    for option in reversed(_ENDPOINT_OPTIONS):
        function = option(function)
    return function


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
    socket_path: str | None, conf: str | None, watch: bool, interval: float, as_json: bool
) -> None:
    """Show the services, backends, health and counters of a running lbx (lbx-status)."""
    endpoint = resolve(socket_path, conf)
    if as_json:
        click.echo(json.dumps(endpoint.status(), indent=2))
        return
    from rich.console import Console

    console = Console()
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
    """Drain or re-admit a backend of a running lbx (lbx-status)."""


def _switch(address: str, service: str | None, endpoint: Endpoint, enabled: bool) -> None:
    document = endpoint.status()
    matches = [
        s["name"]
        for s in document["services"]
        if (service is None or s["name"] == service)
        and any(b["addr"] == address for b in s["backends"])
    ]
    if not matches:
        raise click.ClickException(
            f"no backend {address}" + (f" in service {service!r}" if service else "")
        )
    if len(matches) > 1:
        raise click.ClickException(
            f"{address} is a backend of several services ({', '.join(matches)}); "
            "choose one with --service"
        )
    action = "enable" if enabled else "disable"
    code, answer = endpoint.request(
        "POST", f"/backends/{quote(matches[0], safe='')}/{quote(address, safe='')}/{action}"
    )
    if code != 200:
        raise click.ClickException(answer.get("error", f"status {code}"))
    click.echo(f"{matches[0]}: {address} {'enabled' if enabled else 'disabled (draining)'}")


@backend.command()
@click.argument("address")
@click.option("--service", metavar="NAME", help="The service, when several have ADDRESS.")
@_endpoint_options
def disable(address: str, service: str | None, socket_path: str | None, conf: str | None) -> None:
    """Stop sending new requests to ADDRESS (requests in flight finish)."""
    _switch(address, service, resolve(socket_path, conf), False)


@backend.command()
@click.argument("address")
@click.option("--service", metavar="NAME", help="The service, when several have ADDRESS.")
@_endpoint_options
def enable(address: str, service: str | None, socket_path: str | None, conf: str | None) -> None:
    """Send requests to ADDRESS again."""
    _switch(address, service, resolve(socket_path, conf), True)
