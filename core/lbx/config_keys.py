"""The kernel's configuration keys: Pingora's server keys and lbx's service keys, each with its
type, default, check and help (``Field``); plugins add theirs through ``add_config_keys``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lbx.hashkey import check_spec as check_hash_key
from lbx.lb import split_host_port
from lbx.request_rules import UNDERSCORES_MODES, host_is_valid


@dataclass(frozen=True)
class Field:
    """One config key: its type, default and an optional extra check.

    ``kind`` is one of ``bool``, ``int``, ``number``, ``str``, ``str_list`` (a string or a list of
    strings), ``map`` or ``any``. ``check(value)`` returns an error message or None.
    """

    kind: str
    default: Any = None
    help: str = ""
    check: Callable[[Any], str | None] | None = None
    minimum: float | None = None


def check_host(value: str) -> str | None:
    """A Host sent upstream must be one a client's would pass as (its bytes go into every
    request head: a CR or LF would add fields)."""
    try:
        sound = host_is_valid(value.encode("latin-1"))
    except UnicodeEncodeError:
        sound = False
    return None if sound else "must be host[:port] (as nginx checks Host)"


def _positive(value: Any) -> str | None:
    return None if value > 0 else "must be greater than 0"


def check_listen(value: Any) -> str | None:
    """A ``Field`` check for listen addresses (``host:port``, ``[v6]:port``, ``unix:/path``)."""
    for item in value:
        if item.startswith("unix:"):
            if len(item) == len("unix:"):
                return f"{item!r}: empty Unix socket path"
            continue
        try:
            split_host_port(item)
        except ValueError as exc:
            return str(exc)
    return None


SERVER_KEYS: dict[str, Field] = {
    "version": Field("int", 1, "config format version, always 1"),
    "daemon": Field("bool", False, "run in the background (as -d)"),
    "pid_file": Field("str", "/tmp/lbx.pid", "where the daemon writes its pid"),
    "error_log": Field("str", None, "log file when running as a daemon"),
    "upgrade_sock": Field("str", "/tmp/lbx_upgrade.sock", "socket for handing over listeners"),
    "user": Field("str", None, "user to run as after daemonizing"),
    "group": Field("str", None, "group to run as after daemonizing"),
    "working_directory": Field("str", None, "working directory of the daemon"),
    "threads": Field("int", 1, "worker processes sharing the listeners", minimum=1),
    "grace_period_seconds": Field(
        "number", 30, "on SIGTERM, how long in-flight requests may take to finish", minimum=0
    ),
    "graceful_shutdown_timeout_seconds": Field(
        "number", 5, "after the grace period, how long before connections are cut", minimum=0
    ),
    "upstream_keepalive_pool_size": Field(
        "int", 128, "idle upstream connections kept for reuse, all peers together", minimum=0
    ),
    "max_retries": Field("int", 16, "bound on upstream attempts per request", minimum=1),
    "ca_file": Field("str", None, "CA bundle for verifying upstream certificates"),
}

# Pingora keys that have no meaning in lbx: accepted so Pingora configs load, with a warning.
PINGORA_ONLY_KEYS = frozenset(
    {
        "listener_tasks_per_fd",
        "work_stealing",
        "s2n_config_cache_size",
        "client_bind_to_ipv4",
        "client_bind_to_ipv6",
        "upstream_connect_offload_threadpools",
        "upstream_connect_offload_thread_per_pool",
        "upstream_debug_ssl_keylog",
        "upgrade_sock_connect_accept_max_retries",
        "max_blocking_threads",
        "blocking_threads_ttl_seconds",
        "daemon_wait_for_ready",
        "daemon_ready_timeout_seconds",
        "daemon_notify_timeout_seconds",
    }
)

_MIN0: dict[str, Any] = {"minimum": 0}
_MIN1: dict[str, Any] = {"minimum": 1}
_NETS: dict[str, Any] = {"check": lambda v: _networks(v)}
_MODE: dict[str, Any] = {
    "check": lambda v: (
        None if v in ("append", "replace", "off") else "must be append, replace or off"
    )
}


def _networks(value: Any) -> str | None:
    import ipaddress

    for item in value:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            return f"{item!r} is not an IP address or network"
    return None


SERVICE_KEYS: dict[str, Field] = {
    "name": Field("str", None, "service name (default: service<N>)"),
    "listen": Field(
        "str_list", None, "addresses: host:port, [v6]:port or unix:/path", check=check_listen
    ),
    "upstreams": Field("any", None, "backends: 'ip:port' or {address, weight}"),
    "discovery": Field(
        "any", None, "where the backends come from: {source: NAME, ...} (docs/discovery.md)"
    ),
    "tls_listen": Field(
        "str_list", None, "addresses where clients connect with TLS", check=check_listen
    ),
    "certificates": Field("any", None, "for tls_listen: [{cert: file, key: file}, ...]"),
    "unknown_sni": Field(
        "str",
        "default",
        "a TLS client naming no configured certificate: default (first certificate) or reject",
        check=lambda v: None if v in ("default", "reject") else "must be default or reject",
    ),
    "client_ca": Field("str", None, "CA file for verifying client certificates (mTLS)"),
    "client_cert": Field(
        "str",
        "none",
        "client certificates: none, optional or required (with client_ca)",
        check=lambda v: (
            None
            if v in ("none", "optional", "required")
            else ("must be none, optional or required")
        ),
    ),
    "upgrades": Field(
        "str_list",
        ["websocket"],
        "protocols an Upgrade request may switch to through lbx (h2c never)",
        check=lambda v: "h2c is never passed on" if "h2c" in [p.lower() for p in v] else None,
    ),
    "underscores_in_headers": Field(
        "str",
        "pass",
        "request fields with '_' in the name: pass (look-alikes of the fields lbx interprets, "
        "such as Content_Length, are always dropped), drop (all, as nginx) or reject (400)",
        check=lambda v: None if v in UNDERSCORES_MODES else "must be pass, drop or reject",
    ),
    "tls": Field("bool", False, "connect to upstreams with TLS"),
    "sni": Field("str", "", "TLS server name sent to upstreams (and verified)"),
    "host": Field(
        "str",
        None,
        "Host header sent to upstreams (default: the client's)",
        check=check_host,
    ),
    "verify_cert": Field("bool", True, "verify upstream certificates"),
    "verify_hostname": Field("bool", True, "verify that the certificate matches the SNI"),
    "selection": Field("str", None, "selection algorithm (a registered selector name)"),
    "selection_options": Field("map", None, "options passed to the selection algorithm"),
    "hash_key": Field(
        "str",
        None,
        "what hashing algorithms hash: client_ip, path, uri, header:<name>, cookie:<name>",
        check=check_hash_key,
    ),
    "connect_timeout": Field("number", 10, "seconds to connect to an upstream", check=_positive),
    "read_timeout": Field(
        "number", 60, "seconds to wait for an upstream response head", check=_positive
    ),
    "idle_timeout": Field("number", 60, "seconds an idle upstream connection is kept", minimum=0),
    "keepalive_timeout": Field(
        "number", 60, "seconds an idle client connection is kept", minimum=0
    ),
    # HTTP limits and timeouts (docs/http.md); defaults close to nginx's.
    **{
        key: Field(kind, default, text, **extra)
        for key, kind, default, text, extra in (
            ("header_timeout", "number", 60, "seconds to receive a request head (408)", _MIN0),
            ("body_timeout", "number", 60, "seconds without request body bytes (408)", _MIN0),
            ("write_timeout", "number", 60, "seconds an upstream may not read (504)", _MIN0),
            ("keepalive_requests", "int", 1000, "requests per client connection", _MIN0),
            ("max_connections", "int", 10000, "open client connections per process", _MIN0),
            ("max_request_line", "int", 8192, "request target bytes (414)", _MIN1),
            ("max_header_size", "int", 32768, "request header block bytes (431)", _MIN1),
            ("max_headers", "int", 100, "request header fields (431)", _MIN1),
            ("max_body_size", "int", 1 << 30, "request body bytes (413); 0: no limit", _MIN0),
            ("max_upstream_connections", "int", 0, "per upstream peer; 0: no limit", _MIN0),
            ("upstream_queue_timeout", "number", 1, "wait for a peer's connection (503)", _MIN0),
            ("x_forwarded_for", "str", "append", "append, replace or off", _MODE),
            ("x_forwarded_proto", "str", "replace", "append, replace or off", _MODE),
            ("forwarded", "str", "off", "RFC 7239 Forwarded: append, replace or off", _MODE),
            (
                "trusted_proxies",
                "str_list",
                None,
                "clients whose forwarding headers are kept",
                _NETS,
            ),
            ("via", "bool", False, "add Via: 1.1 lbx in both directions", {}),
            # HTTP/2 (docs/http2.md); limits close to nginx's and HAProxy's.
            ("h2c", "bool", False, "HTTP/2 by prior knowledge on plaintext listeners", {}),
            (
                "upstream_http_version",
                "any",
                1,
                "to upstreams: 1, 2 (h2c prior knowledge or TLS ALPN h2; HTTP/1.1 when the "
                "backend refuses) or auto (TLS's ALPN chooses)",
                {
                    "check": lambda v: (
                        None if str(v) in ("1", "2", "auto") else "must be 1, 2 or auto"
                    )
                },
            ),
            ("max_h2_streams", "int", 100, "requests at once on an HTTP/2 upstream", _MIN1),
            (
                "h2_ping_interval",
                "number",
                30,
                "seconds of silence before an HTTP/2 upstream connection is PINGed; 0: never",
                _MIN0,
            ),
            ("http2", "bool", True, "offer HTTP/2 (ALPN h2) on tls_listen addresses", {}),
            ("h2_max_concurrent_streams", "int", 128, "HTTP/2 requests at once", _MIN1),
            (
                "h2_max_control_frames_per_second",
                "int",
                100,
                "SETTINGS, PING, PRIORITY, RST_STREAM, unknown frames: each, per connection",
                _MIN1,
            ),
            (
                "h2_max_empty_frames_per_second",
                "int",
                100,
                "empty DATA and CONTINUATION frames per connection",
                _MIN1,
            ),
            (
                "h2_max_window_updates_per_second",
                "int",
                1000,
                "WINDOW_UPDATE frames per connection, beyond two per DATA frame sent",
                _MIN1,
            ),
        )
    },
}
