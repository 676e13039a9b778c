"""lbx: a programmable HTTP load balancer for Python, in the spirit of Cloudflare's Pingora.

Plugins import what they need from here (``__all__``), and admin endpoints from ``lbx.admin``,
tests from ``lbx.testing``; everything else is internal (docs/plugins.md, "The plugin API").
"""

from lbx.config import Config, ConfigSchema, Field, ServiceConfig
from lbx.discovery import Discovered, Discovery, DiscoveryFactory, NoRoom, ServiceDiscovery
from lbx.errors import (
    ConfigError,
    DiscoveryError,
    ErrorSource,
    ErrorType,
    ProxyError,
    StartupError,
)
from lbx.hookspecs import hookimpl
from lbx.http import HeaderList, Headers, RequestHeader, ResponseHeader
from lbx.lb import (
    MAX_WEIGHT,
    Backend,
    Backends,
    Change,
    Health,
    LoadBalancer,
    backend_entry,
    check_weight,
)
from lbx.peer import Peer, upstream_tls_context
from lbx.plugins import LbxPluginManager as PluginManager
from lbx.plugins import get_plugin_manager
from lbx.rotation import Rotation
from lbx.selector import Selector, SelectorFactory
from lbx.session import Session
from lbx.views import Server, Service

__all__ = [
    "MAX_WEIGHT",
    "Backend",
    "Backends",
    "Change",
    "Config",
    "ConfigError",
    "ConfigSchema",
    "Discovered",
    "Discovery",
    "DiscoveryError",
    "DiscoveryFactory",
    "ErrorSource",
    "ErrorType",
    "Field",
    "HeaderList",
    "Headers",
    "Health",
    "LoadBalancer",
    "NoRoom",
    "Peer",
    "PluginManager",
    "ProxyError",
    "RequestHeader",
    "ResponseHeader",
    "Rotation",
    "Selector",
    "SelectorFactory",
    "Server",
    "Service",
    "ServiceConfig",
    "ServiceDiscovery",
    "Session",
    "StartupError",
    "backend_entry",
    "check_weight",
    "get_plugin_manager",
    "hookimpl",
    "upstream_tls_context",
]
