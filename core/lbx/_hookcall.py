"""Calling hooks: awaitable hooks on top of pluggy, colour checks, and per-request dispatch.

pluggy has no async support (design-notes §3). The spec declares a hook's colour: an ``async
def`` spec is an *awaitable hook*, called here one impl at a time in pluggy's order, each result
awaited when it is awaitable, so a ``firstresult`` hook returns the first non-None *awaited*
value. A ``def`` spec is a sync hook and rejects ``async def`` impls at registration.

Per-request hooks are resolved once (``HookCaller`` snapshots the impl list); a hook nobody
implements resolves to None and the proxy skips it with one truthiness test.
"""

from __future__ import annotations

import inspect
import logging
import os
import types
from collections.abc import Awaitable, Callable, Generator
from typing import Any, Final

import pluggy

from lbx.errors import PluginValidationError

log: Final = logging.getLogger("lbx.hooks")

_NO_HALT: Final = object()
_NO_ARG: Final = object()
"""A spec argument ``HookCaller.run`` was not given: the spec has fewer (two to four)."""


_AWAITABLE_TYPES: Final[dict[type, bool]] = {}
_COROUTINE: Final = types.CoroutineType  # compiled: a C static (an imported name is a lookup)
"""Whether a result type is awaitable, by type: a failed ``hasattr`` on a class formats an
AttributeError, which costs more than the dict lookup (``upstream_peer`` returns a Peer on
every request)."""


def _is_awaitable(value: object) -> bool:
    """Whether an impl returned something to await: a coroutine, a Future, any ``__await__``
    object (``inspect.isawaitable`` minus legacy generator-based coroutines)."""
    kind = type(value)
    awaitable = _AWAITABLE_TYPES.get(kind)
    if awaitable is None:
        awaitable = _AWAITABLE_TYPES[kind] = hasattr(kind, "__await__")
    return awaitable


class Pending:
    """What ``HookCaller.run`` returns when an impl returned an awaitable other than a bare
    coroutine: await it for the hook's result (``if suspends(r): r = await r``)."""

    __slots__ = ("_rest",)

    def __init__(self, rest: Awaitable[Any]) -> None:
        self._rest = rest

    def __await__(self) -> Generator[Any, Any, Any]:
        return self._rest.__await__()


def suspends(result: object) -> bool:
    """Whether a result of ``HookCaller.run`` is to be awaited for the hook's result: a
    ``Pending``, or the coroutine of an ``async def`` impl, handed over bare (awaiting a
    ``Pending`` costs an object, its ``__await__`` call and a coroutine wrapper per hook)."""
    kind = type(result)
    return kind is Pending or kind is _COROUTINE


def halts_on(value: bool) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Mark a spec whose chain stops at the first impl returning ``value`` (True or False)."""

    def mark(function: Callable[..., Any]) -> Callable[..., Any]:
        function.lbx_halts_on = value  # type: ignore[attr-defined]  # marker read by HookCaller
        return function

    return mark


def chained(function: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a sync body-filter spec: each impl gets the previous impl's replacement chunk."""
    function.lbx_chained = True  # type: ignore[attr-defined]  # marker read by HookCaller
    function.lbx_direct = True  # type: ignore[attr-defined]  # chained hooks are called directly
    return function


def direct(function: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a sync per-request spec that lbx calls impl by impl, bypassing pluggy (no wrappers)."""
    function.lbx_direct = True  # type: ignore[attr-defined]  # marker read by validate_impls
    return function


def is_awaitable_spec(caller: pluggy.HookCaller) -> bool:
    return caller.spec is not None and inspect.iscoroutinefunction(caller.spec.function)


def validate_impls(caller: pluggy.HookCaller, plugin: object) -> None:
    """Reject impls that break the hook's colour: raise ``PluginValidationError``."""
    if caller.spec is None:
        return
    awaitable = is_awaitable_spec(caller)
    called_directly = awaitable or getattr(caller.spec.function, "lbx_direct", False)
    for impl in caller.get_hookimpls():
        if impl.plugin is not plugin:
            continue
        where = f"{impl.plugin_name}.{caller.name}"
        function = impl.function
        is_async = inspect.iscoroutinefunction(function) or inspect.isasyncgenfunction(function)
        if not awaitable and is_async:
            raise PluginValidationError(
                f"plugin {impl.plugin_name!r}: {caller.name} is a sync hook, so {where} must be "
                f"'def', not 'async def' (it runs where nothing can await it)"
            )
        if called_directly and (impl.wrapper or impl.hookwrapper):
            raise PluginValidationError(
                f"plugin {impl.plugin_name!r}: {where} cannot be a wrapper: "
                f"{caller.name} is called by lbx one impl at a time"
            )


class HookCaller:
    """A resolved per-request hook: its impls in call order, called without pluggy's machinery.

    Build it when the plugin set is final; it does not follow later (un)registrations.
    """

    __slots__ = (
        "_impls",
        "argnames",
        "awaitable",
        "chained",
        "collects",
        "firstresult",
        "halt",
        "name",
    )

    def only_calls(self, function: Callable[..., Any]) -> bool:
        """Whether ``function`` is the hook's one impl (the caller may call it directly)."""
        return len(self._impls) == 1 and self._impls[0][0] is function

    def __init__(self, caller: pluggy.HookCaller) -> None:
        assert caller.spec is not None, f"{caller.name} has no spec"
        self.name = caller.name
        self.argnames: tuple[str, ...] = tuple(caller.spec.argnames)
        """The spec's arguments: the order the request path passes them in (``run(*args)``)."""
        self.awaitable = is_awaitable_spec(caller)
        self.firstresult = bool(caller.spec.opts.get("firstresult"))
        self.halt = getattr(caller.spec.function, "lbx_halts_on", _NO_HALT)
        self.chained = bool(getattr(caller.spec.function, "lbx_chained", False))
        self.collects = not self.firstresult and self.halt is _NO_HALT
        """Whether the hook's result is the list of its impls' non-None results."""
        # pluggy calls the last registered (and tryfirst) impls first: reversed get_hookimpls().
        # An impl that takes the spec's arguments in order gets them as they are (None here);
        # one that takes fewer, or another order, gets the ones it names picked out.
        self._impls: tuple[tuple[Callable[..., Any], tuple[int, ...] | None], ...] = tuple(
            (impl.function, _positions(self.argnames, tuple(impl.argnames)))
            for impl in reversed(caller.get_hookimpls())
        )

    def __bool__(self) -> bool:
        return bool(self._impls)

    def __len__(self) -> int:
        return len(self._impls)

    async def __call__(self, **kwargs: Any) -> Any:
        """Run an awaitable hook at setup time: sequentially, awaiting each result, halting per
        the spec; a hook that neither halts nor takes a first result returns the list of its
        impls' non-None results."""
        args = self.positional(kwargs)
        results: list[Any] = []
        for function, positions in self._impls:
            result = function(*args) if positions is None else function(*_pick(args, positions))
            if result is not None and _is_awaitable(result):
                result = await result
            if result is None:
                continue
            if self.halt is not _NO_HALT:
                if result is self.halt:
                    return result
            elif self.firstresult:
                return result
            else:
                results.append(result)
        return results if self.collects else None

    def positional(self, kwargs: dict[str, Any]) -> list[Any]:
        """Keyword arguments as ``run`` takes them, in the spec's order (all are required)."""
        if kwargs.keys() != set(self.argnames):
            raise TypeError(
                f"{self.name}() takes {', '.join(self.argnames)}; got {', '.join(kwargs)}"
            )
        return [kwargs[name] for name in self.argnames]

    def run(self, a: Any, b: Any, c: Any = _NO_ARG, d: Any = _NO_ARG) -> Any:
        """Run an awaitable hook on the request path, without a coroutine of its own.

        ``a`` to ``d`` are the spec's arguments in order (every per-request awaitable hook has
        two to four): on the request path a keyword dict per call, and picking each impl's
        arguments out of it, cost more than a no-op impl, and so would a tuple of them.

        Returns what decides the request: the first non-None result of a firstresult hook; for
        a halting hook its halting value when an impl returned it (compare with ``is``); the
        results of other hooks are not collected. As soon as an impl returns an awaitable the
        rest comes as something to await (``if suspends(r): r = await r``), which runs it at
        once, in the caller's task: a ``Pending``, or when the last impl is an ``async def``,
        its coroutine itself (awaited from compiled code, it costs no exception when it
        returns None).
        """
        impls = self._impls
        last = len(impls) - 1
        for index, (function, positions) in enumerate(impls):
            result = _call(function, positions, a, b, c, d)
            if result is None:
                continue
            coroutine = type(result) is _COROUTINE  # an ``async def`` impl's: the usual awaitable
            if coroutine or _is_awaitable(result):
                if index == last:
                    return result if coroutine else Pending(result)
                return Pending(self._finish(index, result, _given(a, b, c, d)))
            if self._ends_chain(result):
                return result
        return None

    async def _finish(self, index: int, awaitable: Any, args: tuple[Any, ...]) -> Any:
        """``run`` from the impl at ``index``, whose result ``awaitable`` is awaited first."""
        impls = self._impls
        result = await awaitable
        while True:
            if result is not None and self._ends_chain(result):
                return result
            index += 1
            if index == len(impls):
                return None
            function, positions = impls[index]
            result = function(*args) if positions is None else function(*_pick(args, positions))
            if result is not None and _is_awaitable(result):
                result = await result

    def _ends_chain(self, result: Any) -> bool:
        """Whether an impl's non-None result is the hook's result on the request path: the
        halting value, or the first result of a firstresult hook."""
        if self.halt is not _NO_HALT:
            return result is self.halt
        return self.firstresult

    def call_sync(self, *args: Any) -> list[Any]:
        """Run a sync per-request hook (``fail_to_connect``, ``error_while_proxy``)."""
        return [
            function(*args) if positions is None else function(*_pick(args, positions))
            for function, positions in self._impls
        ]

    def call_first(self, a: Any, b: Any) -> Any:
        """Run a sync firstresult per-request hook of two arguments (``selection_key``): the
        first non-None result, or None."""
        for function, positions in self._impls:
            result = _call(function, positions, a, b, _NO_ARG, _NO_ARG)
            if result is not None:
                return result
        return None

    def chain(self, session: Any, body: bytes, end_of_stream: bool, ctx: Any) -> bytes:
        """Run a chained body filter: each non-None result replaces the chunk for the next impl.

        The body filter specs take ``(session, body, end_of_stream, ctx)``.
        """
        for function, positions in self._impls:
            result = _call(function, positions, session, body, end_of_stream, ctx)
            if result is not None:
                body = result
        return body


def _call(
    function: Callable[..., Any], positions: tuple[int, ...] | None, a: Any, b: Any, c: Any, d: Any
) -> Any:
    """``function`` with the spec's arguments ``a`` to ``d`` (the last ones ``_NO_ARG`` when the
    spec has fewer), or the ones it names (``positions``): called with them as they are, no
    tuple is built (compiled, the call is a vectorcall of two to four arguments)."""
    if positions is not None:
        return function(*_pick(_given(a, b, c, d), positions))
    if c is _NO_ARG:
        return function(a, b)
    if d is _NO_ARG:
        return function(a, b, c)
    return function(a, b, c, d)


def _given(a: Any, b: Any, c: Any, d: Any) -> tuple[Any, ...]:
    """The spec's arguments of a ``run`` call as a tuple (for the less usual paths)."""
    if c is _NO_ARG:
        return (a, b)
    return (a, b, c) if d is _NO_ARG else (a, b, c, d)


def _pick(args: tuple[Any, ...] | list[Any], positions: tuple[int, ...]) -> list[Any]:
    """The arguments an impl names, out of all the spec's."""
    return [args[i] for i in positions]


def _positions(spec: tuple[str, ...], names: tuple[str, ...]) -> tuple[int, ...] | None:
    """Where an impl's arguments are among the spec's; None when they are the spec's own."""
    if names == spec:
        return None
    return tuple(spec.index(name) for name in names)


class TracingHookCaller(HookCaller):
    """``LBX_DEBUG_HOOKS=1``: log every call and result, for sync and awaitable hooks alike."""

    __slots__ = ()

    def run(self, a: Any, b: Any, c: Any = _NO_ARG, d: Any = _NO_ARG) -> Any:
        log.debug("hook %s(%s)", self.name, ", ".join(self.argnames))
        result = super().run(a, b, c, d)
        if suspends(result):
            return Pending(self._traced(result))
        log.debug("hook %s -> %r", self.name, result)
        return result

    async def _traced(self, pending: Any) -> Any:
        result = await pending
        log.debug("hook %s -> %r", self.name, result)
        return result

    async def __call__(self, **kwargs: Any) -> Any:
        log.debug("hook %s(%s)", self.name, ", ".join(self.argnames))
        return await self._traced(super().__call__(**kwargs))

    def call_sync(self, *args: Any) -> list[Any]:
        log.debug("hook %s(%s)", self.name, ", ".join(self.argnames))
        result = super().call_sync(*args)
        log.debug("hook %s -> %r", self.name, result)
        return result

    def chain(self, session: Any, body: bytes, end_of_stream: bool, ctx: Any) -> bytes:
        log.debug("hook %s(%d bytes, end_of_stream=%s)", self.name, len(body), end_of_stream)
        return super().chain(session, body, end_of_stream, ctx)


def resolve(pm: pluggy.PluginManager, name: str) -> HookCaller | None:
    """The resolved caller for hook ``name``, or None when no plugin implements it."""
    caller = getattr(pm.hook, name)
    cls = TracingHookCaller if os.environ.get("LBX_DEBUG_HOOKS") else HookCaller
    resolved = cls(caller)
    return resolved if resolved else None


class AsyncHookRelay:
    """``pm.ahook.<name>(**kwargs)``: awaitable hooks, resolved afresh on each attribute access.

    For setup-time calls. The request path resolves its hooks once through ``resolve``.
    """

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self._pm = pm

    def __getattr__(self, name: str) -> HookCaller:
        caller = getattr(self._pm.hook, name)
        if not is_awaitable_spec(caller):
            raise AttributeError(f"{name} is not an awaitable hook; call pm.hook.{name}()")
        cls = TracingHookCaller if os.environ.get("LBX_DEBUG_HOOKS") else HookCaller
        return cls(caller)
