"""Errors: the proxy's error taxonomy (Pingora's ErrorType and ErrorSource) and user errors."""

from __future__ import annotations

import enum


class ErrorSource(enum.Enum):
    """Which side of the proxy an error came from; decides the default status code."""

    UPSTREAM = "upstream"
    DOWNSTREAM = "downstream"
    INTERNAL = "internal"


class ErrorType(enum.Enum):
    """What went wrong, with Pingora's names."""

    CONNECT_TIMEDOUT = "ConnectTimedout"
    CONNECT_REFUSED = "ConnectRefused"
    CONNECT_NO_ROUTE = "ConnectNoRoute"
    CONNECT_ERROR = "ConnectError"
    TLS_HANDSHAKE_FAILURE = "TLSHandshakeFailure"
    INVALID_HTTP_HEADER = "InvalidHTTPHeader"
    H1_ERROR = "H1Error"
    H2_ERROR = "H2Error"
    READ_ERROR = "ReadError"
    WRITE_ERROR = "WriteError"
    READ_TIMEDOUT = "ReadTimedout"
    WRITE_TIMEDOUT = "WriteTimedout"
    CONNECTION_CLOSED = "ConnectionClosed"
    HTTP_STATUS = "HTTPStatus"
    NO_UPSTREAM = "NoUpstream"
    INTERNAL_ERROR = "InternalError"


_TIMEOUTS = frozenset(
    {ErrorType.CONNECT_TIMEDOUT, ErrorType.READ_TIMEDOUT, ErrorType.WRITE_TIMEDOUT}
)


class ProxyError(Exception):
    """An error on the request path, as hooks see it.

    ``retry`` may be set by ``fail_to_connect`` / ``error_while_proxy`` impls to ask the kernel for
    another attempt (bounded by ``max_retries``). ``status`` is the code to answer for
    ``ErrorType.HTTP_STATUS`` errors.
    """

    def __init__(
        self,
        etype: ErrorType,
        source: ErrorSource,
        context: str = "",
        *,
        status: int | None = None,
        retry: bool = False,
    ) -> None:
        super().__init__(etype, source, context)
        self.etype = etype
        self.source = source
        self.context = context
        self.status = status
        self.retry = retry

    def __str__(self) -> str:
        text = f"{self.source.value} {self.etype.value}"
        if self.status is not None:
            text += f" {self.status}"
        if self.context:
            text += f" context: {self.context}"
        cause = self.__cause__
        if cause is not None and repr(cause) != self.context:  # (often the context already)
            text += f" cause: {cause!r}"
        return text

    def caused_by(self, cause: BaseException) -> ProxyError:
        """Set the cause and return the error: ``raise ProxyError(...).caused_by(exc) from exc``.

        The request path is compiled with mypyc, which drops the cause of ``raise ... from``
        (the ``from`` stays for readers and linters).
        """
        self.__cause__ = cause
        return self

    @classmethod
    def http_status(cls, status: int, context: str = "") -> ProxyError:
        """An error that the kernel answers with exactly ``status``."""
        return cls(ErrorType.HTTP_STATUS, ErrorSource.INTERNAL, context, status=status)

    @classmethod
    def refused(cls, status: int, reason: str) -> ProxyError:
        """The error of a request lbx refused (the client's fault: ``DOWNSTREAM``), answered
        with ``status``."""
        return cls(ErrorType.HTTP_STATUS, ErrorSource.DOWNSTREAM, reason, status=status)

    def default_status(self) -> int:
        """Pingora's default `fail_to_proxy` mapping; 0 means "send nothing, close"."""
        if self.status is not None:
            return self.status
        if self.source is ErrorSource.UPSTREAM:
            if self.etype in _TIMEOUTS:
                return 504
            return 502
        if self.source is ErrorSource.DOWNSTREAM:
            if self.etype in (
                ErrorType.READ_ERROR,
                ErrorType.WRITE_ERROR,
                ErrorType.CONNECTION_CLOSED,
            ):
                return 0
            return 400
        return 500


class ConfigError(Exception):
    """A bad config file, CLI flag or plugin argument: printed as one line, exit code 2."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.file = file
        self.line = line

    def __str__(self) -> str:
        where = ""
        if self.file is not None:
            where = f"{self.file}:{self.line}: " if self.line is not None else f"{self.file}: "
        return where + self.message


class PluginLoadError(ConfigError):
    """A ``--plugin`` argument or YAML ``plugins:`` entry that cannot be loaded."""


class PluginValidationError(PluginLoadError):
    """A plugin whose hook impls break the contract (wrong colour, wrapper on an awaitable hook)."""


class StartupError(Exception):
    """The server cannot start (a port in use, no listeners handed over): one line, exit 1."""


class DiscoveryError(Exception):
    """A discovery source cannot give the backends now (a missing file, a name server or etcd
    that does not answer): lbx keeps the last set and shows the message as it is, in the log
    and in ``lbx status``, so it should say what failed and where (the path, name or endpoint).
    Any other exception a source raises is shown with its type."""


def first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first of the errors (nested groups too) that decide what a failure is: lbx's own
    (``StartupError``, ``ConfigError``) if any, else the first one."""
    expected, _ = group.split((StartupError, ConfigError))
    found: BaseException = expected if expected is not None else group
    while isinstance(found, BaseExceptionGroup):
        found = found.exceptions[0]
    return found


def plural(count: int, noun: str) -> str:
    """``1 backend``, ``2 backends``: counts in log lines and messages."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def describe(exc: BaseException) -> str:
    """An exception as one line: the message of lbx's own errors and the system's, the type
    and message of anything else (``KeyError: 'x'`` says more than ``'x'``)."""
    if isinstance(exc, (StartupError, ConfigError, DiscoveryError, OSError)):
        return str(exc) or type(exc).__name__
    message = str(exc)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__
