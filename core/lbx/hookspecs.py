"""The hook contract between the lbx kernel and its plugins.

Every hook has a colour. ``async def`` specs are *awaitable hooks*: an impl may be ``def`` or
``async def``; impls run one at a time in pluggy's order (last registered and ``tryfirst`` first).
``def`` specs are *sync hooks*: an ``async def`` impl is refused when the plugin is registered.

Per-request hooks follow Pingora's ``ProxyHttp`` phases, in the order listed here. Parameters are
passed by keyword; an impl declares only the ones it uses (pluggy's opt-in arguments).

- ``session``: the ``lbx.Session`` of the request (request head, client address, service,
  ``respond()``/``respond_error()``).
- ``ctx``: a ``dict`` created for each request and shared by every hook of that request.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

from lbx._hookcall import chained, direct, halts_on

if TYPE_CHECKING:
    import socket

    import click

    from lbx.config import Config, ConfigSchema
    from lbx.errors import ProxyError
    from lbx.http import RequestHeader, ResponseHeader
    from lbx.lb import Backend, Health
    from lbx.peer import Peer
    from lbx.plugins import LbxPluginManager
    from lbx.selector import SelectorFactory
    from lbx.session import Session
    from lbx.views import Server

PROJECT_NAME = "lbx"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


# -------------------------------------------------------------------------------------------------
# Start-up: components, configuration, command line
# -------------------------------------------------------------------------------------------------


@hookspec
def register_selectors(register: Callable[[str, SelectorFactory], None]) -> None:
    """Register backend selection algorithms by name.

    Called once at start-up. ``register(name, factory)`` adds an algorithm that services pick with
    ``selection: name``; ``factory(backends, options)`` builds an ``lbx.Selector`` from the sorted
    backends and the service's ``selection_options`` mapping, and is called again whenever the
    backend set changes. Requests call the selector directly, never through pluggy.

    Sync hook.

    .. versionadded:: 0.1
    """


@hookspec
def register_discovery(register: Callable[..., None]) -> None:
    """Register service discovery sources by name.

    Called once at start-up (and at each reload). ``register(name, factory, keys=None,
    update_frequency=None)`` adds a source that services name in ``discovery: {source: name,
    ...}``. ``keys`` maps the source's own option names to ``lbx.Field``s: the kernel
    validates them as strictly as its own keys (file, line, did-you-mean). ``factory(options,
    service)`` builds an ``lbx.Discovery`` for one service, from the validated options and the
    ``lbx.ServiceConfig``; raise ``ValueError`` to refuse the options. ``update_frequency`` is
    the default number of seconds between two updates (None: only when the source's ``watch``
    reports a change, or when ``Discovered.refresh`` asks).

    The source's ``discover()`` runs in the background-services process with ``threads: N``
    (once for every worker), never on the request path.

    Sync hook.

    .. versionadded:: 0.2
    """


@hookspec
def add_config_keys(schema: ConfigSchema) -> None:
    """Declare the config keys a plugin understands, so that the file is validated strictly.

    ``schema.add_section(name, fields)`` declares a top-level section (by convention named after
    the plugin); ``schema.add_service_keys(fields)`` declares keys accepted in each service.
    ``fields`` maps each key to an ``lbx.Field``. Unknown keys remain errors.

    Sync hook, called before the config file is read.

    .. versionadded:: 0.1
    """


@hookspec
def add_cli_options() -> list[click.Option]:
    """Return extra ``lbx serve`` options (``click.Option`` objects).

    Their values are in ``config.options`` (keyed by the option's parameter name) when
    ``configure`` runs. Only enabled plugins are asked.

    Sync hook.

    .. versionadded:: 0.1
    """
    raise NotImplementedError  # a spec is never called; this line is for the type checker


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add subcommands to the ``lbx`` command (``lbx status``, ...): ``cli.add_command(cmd)``.

    Called for every installed plugin when ``lbx`` runs any command other than ``serve`` (a
    command is a tool, not behaviour of the proxy, so installing is enough to get it).

    Sync hook.

    .. versionadded:: 0.1
    """


@hookspec
def configure(config: Config, plugin_manager: LbxPluginManager) -> None:
    """Receive the validated configuration, after every plugin is registered.

    Raise ``lbx.ConfigError`` to refuse it: the message is printed as one line and lbx exits
    with code 2. Runs for ``lbx serve -t`` too. ``plugin_manager.register(obj)`` adds hook impls
    that only this configuration needs: per-request hooks nobody implements cost nothing, so a
    plugin registers them only when they have work to do (as pytest's ``config.pluginmanager``).

    Sync hook.

    .. versionadded:: 0.1
    """


# -------------------------------------------------------------------------------------------------
# Server lifecycle
# -------------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def daemonize(config: Config) -> bool | None:
    """Detach from the terminal (``-d`` / ``daemon: true``); return True when done.

    Called before the event loop starts, only when the config asks for a daemon. If no impl
    returns True, lbx refuses to start and names the plugin to install.

    Sync, firstresult hook.

    .. versionadded:: 0.1
    """


@hookspec(firstresult=True)
async def acquire_listeners(server: Server) -> dict[str, socket.socket] | None:
    """Provide already-listening sockets instead of binding (``-u``: taken from the old process).

    Return a mapping from listen address (exactly as configured, e.g. ``"0.0.0.0:6188"`` or
    ``"unix:/run/lbx.sock"``) to a listening socket; addresses missing from it are bound by lbx.
    Return None to let lbx bind every address.

    Awaitable, firstresult hook.

    .. versionadded:: 0.1
    """


@hookspec(firstresult=True)
async def send_listeners(server: Server) -> bool | None:
    """SIGQUIT: hand the listening sockets (``server.listeners``) to the new process.

    Return True once the new process took them over: the server then keeps accepting for a
    short overlap (``UPGRADE_OVERLAP_SECONDS``, Pingora's 5 s) and drains as on SIGTERM, without
    removing Unix socket files the new process now serves. Return False when the hand-over
    failed (no new process, or it died before serving): the server keeps serving. Return None
    when the plugin does not handle upgrades: the server drains as on SIGTERM.

    Awaitable, firstresult hook.

    .. versionadded:: 0.1
    """


@hookspec
def register_background_services(server: Server, register: Callable[..., None]) -> None:
    """Register long-running tasks (health checks, metrics pushers, ...).

    ``register(name, run)`` where ``run`` is an ``async def`` taking no arguments: it starts once
    the server is listening. ``register(name, run, ready=True)`` where ``run`` takes a
    ``task_status`` argument: it starts *before* the listeners, and the server waits until it
    calls ``task_status.started()`` (a first round of health checks, for example); if it raises
    before that, lbx does not start (one line naming the service and the error, exit code 1).

    Every service runs in the server's task group and is cancelled when the server stops. An
    exception in a running service is logged and the service is not restarted.

    Sync hook.

    .. versionadded:: 0.1
    """


@hookspec
def backend_health_changed(service: str, backend: Backend, health: Health) -> None:
    """A backend of service ``service`` became ready or not (``health.ready``).

    It is ready when ``health.healthy`` (active checks), not ``health.ejected`` (passive checks)
    and ``health.enabled`` (admin). ``health.reason`` says why it went down. lbx logs the change
    itself (a warning when a backend goes down, info when it comes back); impls feed metrics,
    alerts or other state. It fires in the process that made the change.

    Sync hook.

    .. versionadded:: 0.1
    """


@hookspec
async def server_started(server: Server) -> None:
    """The server is listening on every address (``server.listeners`` has the sockets).

    Called once per server: in the single lbx process, or in the supervisor once every worker
    is ready with ``threads: N`` (per-process work goes in ``worker_started``).

    Awaitable hook.

    .. versionadded:: 0.1
    """


@hookspec
async def worker_started(server: Server) -> None:
    """This process is about to serve requests: its listeners are open in its event loop.

    Called once in every process that serves requests: the single lbx process (before
    ``server_started``), or each worker with ``threads: N`` (``server_started`` then runs once, in
    the supervisor). The place for per-process work on the event loop that serves requests:
    sampling gauges, timers, connections to a log collector. An exception stops the process.

    Awaitable hook.

    .. versionadded:: 0.2
    """


@hookspec
async def server_stopping(server: Server, graceful: bool) -> None:
    """The server stops accepting; ``graceful`` is False for SIGINT (in-flight requests cut).

    Awaitable hook.

    .. versionadded:: 0.1
    """


# -------------------------------------------------------------------------------------------------
# Per request: downstream phases
# -------------------------------------------------------------------------------------------------


@hookspec
async def early_request_filter(session: Session, ctx: dict[str, Any]) -> None:
    """First phase of every request, before ``request_filter``.

    Raise ``lbx.ProxyError`` to fail the request (see ``fail_to_proxy``).

    Awaitable hook.

    .. versionadded:: 0.1
    """


@hookspec
@halts_on(True)
async def request_filter(session: Session, ctx: dict[str, Any]) -> bool | None:
    """Validate, authenticate, rate-limit or answer the request before any upstream work.

    Return True after writing a response with ``await session.respond(...)``: the request is
    finished (``logging`` still runs) and later ``request_filter`` impls do not run. Return None
    (or False) to continue.

    Awaitable hook; the chain stops at the first True.

    .. versionadded:: 0.1
    """


@hookspec
@chained
def request_body_filter(
    session: Session, body: bytes, end_of_stream: bool, ctx: dict[str, Any]
) -> bytes | None:
    """See or change each chunk of the request body on its way upstream.

    Return replacement bytes, or None to keep ``body``. The last call has ``end_of_stream`` True
    (``body`` may then be empty). lbx keeps the client's framing upstream: a chunked body may
    change length freely, a ``Content-Length`` body must keep its length. After a ``101``, what
    the client sends through the tunnel is one body, ended when the client side closes.

    Sync hook (called per chunk); each impl sees the previous impl's result.

    .. versionadded:: 0.1
    """


@hookspec
@halts_on(False)
async def proxy_upstream_filter(session: Session, ctx: dict[str, Any]) -> bool | None:
    """Decide whether to go upstream at all.

    Return False to stop: if no response was written yet, the client gets 502. Return None or
    True to continue.

    Awaitable hook; the chain stops at the first False.

    .. versionadded:: 0.1
    """


# -------------------------------------------------------------------------------------------------
# Per request: upstream phases
# -------------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
async def upstream_peer(session: Session, ctx: dict[str, Any]) -> Peer | None:
    """Choose where the request goes: return an ``lbx.Peer``.

    Return None to let the next impl decide; the built-in ``default_peer`` impl runs last and asks
    the service's load balancer. Called again for every retry.

    Awaitable, firstresult hook: the first non-None awaited value wins.

    .. versionadded:: 0.1
    """


@hookspec(firstresult=True)
@direct
def selection_key(session: Session, ctx: dict[str, Any]) -> bytes | None:
    """The key hashing selection algorithms use for this request (``consistent``, ``fnv``...).

    Return bytes to decide the key yourself; return None to use the service's ``hash_key``
    setting (client IP, a header, a cookie, the path or the URI). Round robin ignores keys.

    Sync, firstresult hook, called by the built-in ``upstream_peer`` only when it has impls.

    .. versionadded:: 0.1
    """


@hookspec
@direct
def fail_to_connect(session: Session, peer: Peer, ctx: dict[str, Any], error: ProxyError) -> None:
    """Connecting to ``peer`` failed; nothing was sent upstream.

    ``error.retry`` arrives True: nothing was sent, so by default lbx tries another backend, as
    nginx does (``upstream_peer`` is asked anew; the built-in one skips backends already tried),
    bounded by ``max_retries`` attempts. Set it to False to answer the client at once (Pingora's
    default, which ``max_retries: 1`` also gives).

    Sync hook.

    .. versionadded:: 0.1
    """


@hookspec
async def connected_to_upstream(
    session: Session, reused: bool, peer: Peer, ctx: dict[str, Any]
) -> None:
    """A connection to ``peer`` is ready; ``reused`` tells whether it came from the pool.

    Awaitable hook.

    .. versionadded:: 0.1
    """


@hookspec
async def upstream_request_filter(
    session: Session, upstream_request: RequestHeader, ctx: dict[str, Any]
) -> None:
    """Change the request head before it is sent upstream (a copy; ``session.req_header`` keeps
    the client's original).

    Example: ``upstream_request.insert_header("Host", "one.one.one.one")``.

    Awaitable hook.

    .. versionadded:: 0.1
    """


@hookspec
@direct
def error_while_proxy(
    session: Session, peer: Peer, ctx: dict[str, Any], error: ProxyError, client_reused: bool
) -> None:
    """An upstream error happened after connecting to ``peer``: sending the request, or
    receiving the response head (a ``ProxyError`` with source ``UPSTREAM``).

    ``client_reused`` tells whether the upstream connection came from the pool. ``error.retry``
    arrives set when retrying is safe by default: a pooled connection that failed before any
    response byte, for an idempotent request (GET, HEAD, OPTIONS, TRACE, PUT, DELETE) whose body
    is not partly sent. Change it to decide otherwise. Errors after the response head went to
    the client are never retried.

    Sync hook.

    .. versionadded:: 0.1
    """


@hookspec
async def upstream_response_filter(
    session: Session, upstream_response: ResponseHeader, ctx: dict[str, Any]
) -> None:
    """Change the response head as it arrives from upstream (before ``response_filter``).

    Awaitable hook.

    .. versionadded:: 0.1
    """


# -------------------------------------------------------------------------------------------------
# Per request: response to the client
# -------------------------------------------------------------------------------------------------


@hookspec
async def response_filter(
    session: Session, upstream_response: ResponseHeader, ctx: dict[str, Any]
) -> None:
    """Change the response head just before it is sent to the client.

    Awaitable hook.

    .. versionadded:: 0.1
    """


@hookspec
@chained
def response_body_filter(
    session: Session, body: bytes, end_of_stream: bool, ctx: dict[str, Any]
) -> bytes | None:
    """See or change each chunk of the response body on its way to the client.

    Return replacement bytes, or None to keep ``body``. The length may change: a body that
    arrived whole with its head is filtered before the head goes out and sent with its new
    ``Content-Length``; any other is re-framed (chunked for HTTP/1.1 clients). After a ``101``,
    what the upstream sends through the tunnel is one body, ended when the upstream side closes.

    Sync hook (called per chunk); each impl sees the previous impl's result.

    .. versionadded:: 0.1
    """


@hookspec(firstresult=True)
async def fail_to_proxy(session: Session, ctx: dict[str, Any], error: ProxyError) -> int | None:
    """The request failed with ``error``; return the status code to answer (0: answer nothing;
    one outside 200-599 is answered 500, and logged).

    Return None to keep the default: the status of an HTTP-status error, 502 for upstream
    errors (504 for timeouts), 400 for a bad request, 500 for internal errors. Nothing is sent
    when a response head already went out; the client connection is then closed.

    Awaitable, firstresult hook.

    .. versionadded:: 0.1
    """


@hookspec
async def logging(session: Session, ctx: dict[str, Any], error: ProxyError | None) -> None:
    """The request is over, successfully or not (``error``): access logs, metrics.

    Always runs, once per request. ``session.response_status`` is the status sent (None if none).

    Awaitable hook.

    .. versionadded:: 0.1
    """
