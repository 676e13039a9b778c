"""lbx: a programmable HTTP load balancer for Python, in the spirit of Cloudflare's Pingora.

Plugins import what they need from here; everything else is internal.
"""

from lbx.config import Config, ConfigSchema, Field, ServiceConfig
from lbx.errors import ConfigError, ErrorSource, ErrorType, ProxyError
from lbx.hookspecs import hookimpl
from lbx.http import Headers, RequestHeader, ResponseHeader
from lbx.lb import Backend, Backends, Health, LoadBalancer
from lbx.peer import Peer
from lbx.plugins import get_plugin_manager
from lbx.selector import Selector, SelectorFactory
from lbx.session import Session

__all__ = [
    "Backend",
    "Backends",
    "Config",
    "ConfigError",
    "ConfigSchema",
    "ErrorSource",
    "ErrorType",
    "Field",
    "Headers",
    "Health",
    "LoadBalancer",
    "Peer",
    "ProxyError",
    "RequestHeader",
    "ResponseHeader",
    "Selector",
    "SelectorFactory",
    "ServiceConfig",
    "Session",
    "get_plugin_manager",
    "hookimpl",
]
