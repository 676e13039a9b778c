"""The hook dispatcher: awaitable hooks on top of pluggy, halting, chaining and colour checks."""

from __future__ import annotations

import asyncio
import gc
import inspect
import warnings
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

import lbx
from lbx import hookimpl
from lbx._hookcall import HookCaller, Pending, resolve, suspends
from lbx.errors import PluginValidationError
from lbx.plugins import LbxPluginManager, load_plugin_arg

PLUGINS = Path(__file__).resolve().parent / "plugins"


def make_impl(hook: str, tag: str, result: Any = None, *, is_async: bool, **opts: Any) -> object:
    """A plugin object whose impl of ``hook`` records ``tag`` in ``ctx["calls"]``."""

    if is_async:

        async def impl(ctx: dict[str, Any]) -> Any:
            await asyncio.sleep(0)
            ctx.setdefault("calls", []).append(tag)
            return result

    else:

        def impl(ctx: dict[str, Any]) -> Any:
            ctx.setdefault("calls", []).append(tag)
            return result

    impl.__name__ = hook
    return type(tag, (), {hook: staticmethod(hookimpl(**opts)(impl))})()


async def awaited(pending: Any) -> Any:
    return await pending


def register_all(pm: LbxPluginManager, *plugins: object) -> None:
    for plugin in plugins:
        pm.register(plugin)


# -- order ----------------------------------------------------------------------------------------


def test_def_and_async_def_impls_all_run_last_registered_first() -> None:
    """``def`` and ``async def`` impls of an awaitable hook all run, the last registered first."""
    pm = LbxPluginManager()
    register_all(
        pm,
        make_impl("early_request_filter", "a", is_async=False),
        make_impl("early_request_filter", "b", is_async=True),
        make_impl("early_request_filter", "c", is_async=False),
        make_impl("early_request_filter", "d", is_async=True),
    )
    ctx: dict[str, Any] = {}
    asyncio.run(pm.ahook.early_request_filter(session=None, ctx=ctx))
    assert ctx["calls"] == ["d", "c", "b", "a"]


def test_tryfirst_and_trylast_are_respected() -> None:
    """``tryfirst`` runs first and ``trylast`` last whatever the registration order."""
    pm = LbxPluginManager()
    register_all(
        pm,
        make_impl("early_request_filter", "first", is_async=True, tryfirst=True),
        make_impl("early_request_filter", "plain1", is_async=False),
        make_impl("early_request_filter", "plain2", is_async=True),
    )
    pm.register(make_impl("early_request_filter", "last", is_async=False, trylast=True))
    ctx: dict[str, Any] = {}
    asyncio.run(pm.ahook.early_request_filter(session=None, ctx=ctx))
    assert ctx["calls"] == ["first", "plain2", "plain1", "last"]


def test_resolved_caller_uses_the_same_order_as_pluggy() -> None:
    """``resolve()`` calls impls in exactly the order pluggy's own call uses (sync hook)."""
    pm = LbxPluginManager()
    register_all(
        pm,
        make_impl("fail_to_connect", "a", is_async=False, trylast=True),
        make_impl("fail_to_connect", "b", is_async=False),
        make_impl("fail_to_connect", "c", is_async=False, tryfirst=True),
        make_impl("fail_to_connect", "d", is_async=False),
    )
    pluggy_ctx: dict[str, Any] = {}
    pm.hook.fail_to_connect(session=None, peer=None, ctx=pluggy_ctx, error=None)
    caller = resolve(pm, "fail_to_connect")
    assert caller is not None
    ctx: dict[str, Any] = {}
    caller.call_sync(None, None, ctx, None)
    assert ctx["calls"] == pluggy_ctx["calls"] == ["c", "d", "b", "a"]


# -- firstresult ----------------------------------------------------------------------------------


def test_async_none_defers_to_next_impl_for_firstresult() -> None:
    """An ``async def`` ``upstream_peer`` returning None lets the next impl decide."""
    pm = LbxPluginManager()
    register_all(
        pm,
        make_impl("upstream_peer", "winner", "peer-b", is_async=False),
        make_impl("upstream_peer", "declines", None, is_async=True),
    )
    ctx: dict[str, Any] = {}
    result = asyncio.run(pm.ahook.upstream_peer(session=None, ctx=ctx))
    assert result == "peer-b"
    assert ctx["calls"] == ["declines", "winner"]


def test_first_awaited_non_none_wins_and_later_impls_do_not_run() -> None:
    """The first non-None *awaited* value is returned and the remaining impls never run."""
    pm = LbxPluginManager()
    register_all(
        pm,
        make_impl("upstream_peer", "never-async", "peer-z", is_async=True),
        make_impl("upstream_peer", "never-sync", "peer-y", is_async=False),
        make_impl("upstream_peer", "wins", "peer-a", is_async=True),
        make_impl("upstream_peer", "declines", None, is_async=True),
    )
    ctx: dict[str, Any] = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = asyncio.run(pm.ahook.upstream_peer(session=None, ctx=ctx))
        gc.collect()
    assert result == "peer-a"
    assert ctx["calls"] == ["declines", "wins"]
    assert [w for w in caught if issubclass(w.category, RuntimeWarning)] == []


def test_firstresult_with_only_declining_impls_returns_none() -> None:
    """When every impl declines, a firstresult hook returns None (not an empty list)."""
    pm = LbxPluginManager()
    register_all(
        pm,
        make_impl("upstream_peer", "a", None, is_async=True),
        make_impl("upstream_peer", "b", None, is_async=False),
    )
    ctx: dict[str, Any] = {}
    assert asyncio.run(pm.ahook.upstream_peer(session=None, ctx=ctx)) is None
    assert ctx["calls"] == ["b", "a"]


def test_builtin_default_peer_runs_after_a_user_plugin() -> None:
    """In a real manager a user ``upstream_peer`` runs before the trylast built-in."""
    pm = lbx.get_plugin_manager([])
    pm.register(make_impl("upstream_peer", "user", "user-peer", is_async=True))
    caller = resolve(pm, "upstream_peer")
    assert caller is not None and len(caller) == 2
    ctx: dict[str, Any] = {}
    # The user impl answers, so default_peer (which would need a real session) never runs.
    assert asyncio.run(caller(session=None, ctx=ctx)) == "user-peer"


# -- run: no coroutine while impls are plain functions -----------------------------------------


def test_run_with_sync_impls_returns_the_result_itself() -> None:
    """``run`` calls ``def`` impls directly: the result comes back without anything to await."""
    pm = LbxPluginManager()
    register_all(
        pm,
        make_impl("upstream_peer", "winner", "peer-b", is_async=False),
        make_impl("upstream_peer", "declines", None, is_async=False),
    )
    caller = resolve(pm, "upstream_peer")
    assert caller is not None
    ctx: dict[str, Any] = {}
    assert caller.run(None, ctx) == "peer-b"
    assert ctx["calls"] == ["declines", "winner"]


def test_run_hands_over_at_the_first_awaitable_and_keeps_the_semantics() -> None:
    """After a sync impl declines, an ``async def`` impl makes ``run`` return ``Pending``; awaiting
    it finishes the chain in order and halts as the spec says."""
    pm = LbxPluginManager()
    register_all(
        pm,
        make_impl("request_filter", "not-reached", True, is_async=False),
        make_impl("request_filter", "answers", True, is_async=False),
        make_impl("request_filter", "async-none", None, is_async=True),
        make_impl("request_filter", "sync-false", False, is_async=False),
    )
    caller = resolve(pm, "request_filter")
    assert caller is not None
    ctx: dict[str, Any] = {}
    pending = caller.run(None, ctx)
    assert type(pending) is Pending and suspends(pending)
    assert ctx["calls"] == ["sync-false"]
    assert asyncio.run(awaited(pending)) is True
    assert ctx["calls"] == ["sync-false", "async-none", "answers"]


def test_run_does_not_collect_but_a_setup_call_does() -> None:
    """On the request path the results of a collecting hook are dropped (nobody reads them);
    a setup-time call (``pm.ahook``) returns them, sync and awaited alike, in call order."""
    pm = LbxPluginManager()
    register_all(
        pm,
        make_impl("logging", "c", 3, is_async=False),
        make_impl("logging", "b", 2, is_async=True),
        make_impl("logging", "a", 1, is_async=False),
    )
    caller = resolve(pm, "logging")
    assert caller is not None
    ctx: dict[str, Any] = {}
    pending = caller.run(None, ctx, None)
    assert type(pending) is Pending
    assert asyncio.run(awaited(pending)) is None
    assert ctx["calls"] == ["a", "b", "c"]
    assert asyncio.run(pm.ahook.logging(session=None, ctx={}, error=None)) == [1, 2, 3]


def test_run_hands_over_the_last_impls_coroutine_as_it_is() -> None:
    """The last impl's coroutine is handed over bare and awaited by the caller: an ``async def``
    impl starts when awaited, and its value comes back unfiltered (callers compare with ``is``)."""
    pm = LbxPluginManager()
    register_all(
        pm,
        make_impl("request_filter", "async-false", False, is_async=True),
        make_impl("request_filter", "sync-none", None, is_async=False),
    )
    caller = resolve(pm, "request_filter")
    assert caller is not None
    ctx: dict[str, Any] = {}
    pending = caller.run(None, ctx)
    assert inspect.iscoroutine(pending) and suspends(pending)  # no Pending around it
    assert ctx["calls"] == ["sync-none"]
    assert asyncio.run(awaited(pending)) is False
    assert ctx["calls"] == ["sync-none", "async-false"]


def test_a_suspended_async_impl_sees_the_cancellation_of_its_task() -> None:
    """An ``async def`` impl runs in the task that awaits the ``Pending``, so cancelling the task
    reaches the impl (as with a plain ``await``)."""
    seen: list[str] = []

    class Waits:
        @hookimpl
        async def request_filter(self, ctx: dict[str, Any]) -> bool | None:
            seen.append("started")
            try:
                await asyncio.get_running_loop().create_future()  # never resolved
            except asyncio.CancelledError:
                seen.append("cancelled")
                raise
            return None

    pm = LbxPluginManager()
    pm.register(Waits())
    caller = resolve(pm, "request_filter")
    assert caller is not None

    async def main() -> None:
        pending = caller.run(None, {})
        assert suspends(pending) and seen == []  # it starts when awaited
        task = asyncio.get_running_loop().create_task(awaited(pending))
        await asyncio.sleep(0)
        assert seen == ["started"]
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert seen == ["started", "cancelled"]


# -- halting --------------------------------------------------------------------------------------


def test_request_filter_halts_at_first_true() -> None:
    """``request_filter`` stops at the first True; None and False continue the chain."""
    pm = LbxPluginManager()
    register_all(
        pm,
        make_impl("request_filter", "not-reached", True, is_async=False),
        make_impl("request_filter", "answers", True, is_async=True),
        make_impl("request_filter", "false", False, is_async=False),
        make_impl("request_filter", "none", None, is_async=True),
    )
    ctx: dict[str, Any] = {}
    assert asyncio.run(pm.ahook.request_filter(session=None, ctx=ctx)) is True
    assert ctx["calls"] == ["none", "false", "answers"]


def test_request_filter_without_true_returns_none() -> None:
    """When no ``request_filter`` answers, the result is None and every impl ran."""
    pm = LbxPluginManager()
    register_all(
        pm,
        make_impl("request_filter", "a", False, is_async=True),
        make_impl("request_filter", "b", None, is_async=False),
    )
    ctx: dict[str, Any] = {}
    assert asyncio.run(pm.ahook.request_filter(session=None, ctx=ctx)) is None
    assert ctx["calls"] == ["b", "a"]


def test_proxy_upstream_filter_halts_at_first_false() -> None:
    """``proxy_upstream_filter`` stops at the first False; True and None continue."""
    pm = LbxPluginManager()
    register_all(
        pm,
        make_impl("proxy_upstream_filter", "not-reached", None, is_async=True),
        make_impl("proxy_upstream_filter", "stops", False, is_async=True),
        make_impl("proxy_upstream_filter", "true", True, is_async=False),
        make_impl("proxy_upstream_filter", "none", None, is_async=True),
    )
    ctx: dict[str, Any] = {}
    assert asyncio.run(pm.ahook.proxy_upstream_filter(session=None, ctx=ctx)) is False
    assert ctx["calls"] == ["none", "true", "stops"]


def test_proxy_upstream_filter_true_does_not_halt() -> None:
    """True from ``proxy_upstream_filter`` means "continue": later impls still run."""
    pm = LbxPluginManager()
    register_all(
        pm,
        make_impl("proxy_upstream_filter", "b", None, is_async=False),
        make_impl("proxy_upstream_filter", "a", True, is_async=True),
    )
    ctx: dict[str, Any] = {}
    assert asyncio.run(pm.ahook.proxy_upstream_filter(session=None, ctx=ctx)) is None
    assert ctx["calls"] == ["a", "b"]


def test_non_firstresult_hook_collects_non_none_results_in_order() -> None:
    """A plain awaitable hook returns the non-None results in call order."""
    pm = LbxPluginManager()
    register_all(
        pm,
        make_impl("early_request_filter", "a", 1, is_async=True),
        make_impl("early_request_filter", "b", None, is_async=False),
        make_impl("early_request_filter", "c", 3, is_async=False),
        make_impl("early_request_filter", "d", 4, is_async=True),
    )
    ctx: dict[str, Any] = {}
    assert asyncio.run(pm.ahook.early_request_filter(session=None, ctx=ctx)) == [4, 3, 1]
    assert ctx["calls"] == ["d", "c", "b", "a"]


def test_exception_in_an_impl_propagates_and_stops_the_chain() -> None:
    """An impl that raises stops the hook call with that exception."""

    class Raises:
        @hookimpl
        async def logging(self, ctx: dict[str, Any]) -> None:
            raise LookupError("from the impl")

    pm = LbxPluginManager()
    pm.register(make_impl("logging", "after", is_async=False))
    pm.register(Raises())
    ctx: dict[str, Any] = {}
    with pytest.raises(LookupError, match="from the impl"):
        asyncio.run(pm.ahook.logging(session=None, ctx=ctx, error=None))
    assert "calls" not in ctx


def test_impls_receive_only_the_arguments_they_declare() -> None:
    """Opt-in arguments: each impl gets exactly the keyword parameters it names."""
    seen: list[tuple[Any, ...]] = []

    class OnlyCtx:
        @hookimpl
        def logging(self, ctx: dict[str, Any]) -> None:
            seen.append(("ctx", ctx["n"]))

    class All:
        @hookimpl
        async def logging(self, session: Any, ctx: dict[str, Any], error: Any) -> None:
            seen.append((session, ctx["n"], error))

    pm = LbxPluginManager()
    register_all(pm, OnlyCtx(), All())
    asyncio.run(pm.ahook.logging(session="s", ctx={"n": 1}, error="e"))
    assert seen == [("s", 1, "e"), ("ctx", 1)]


def test_run_gives_each_impl_the_arguments_it_declares_for_two_to_four() -> None:
    """On the request path too (``run``, ``call_first``): specs of two, three and four
    arguments; impls that take all of them, fewer, or another order; before and after an
    ``async def`` impl (the rest of the chain then runs from the awaitable)."""
    seen: list[tuple[Any, ...]] = []

    class Fewer:
        @hookimpl
        async def early_request_filter(self, ctx: dict[str, Any]) -> None:
            seen.append(("early", ctx["n"]))

        @hookimpl
        def logging(self, error: Any, session: Any) -> None:
            seen.append(("logging", error, session))

        @hookimpl
        def connected_to_upstream(self, peer: Any, reused: bool) -> None:
            seen.append(("connected", peer, reused))

        @hookimpl
        def selection_key(self, ctx: dict[str, Any]) -> bytes:
            return b"key-%d" % ctx["n"]

    class All:
        @hookimpl
        def early_request_filter(self, session: Any, ctx: dict[str, Any]) -> None:
            seen.append(("early all", session, ctx["n"]))

        @hookimpl
        async def logging(self, session: Any, ctx: dict[str, Any], error: Any) -> None:
            seen.append(("logging all", session, ctx["n"], error))

        @hookimpl
        def connected_to_upstream(
            self, session: Any, reused: bool, peer: Any, ctx: dict[str, Any]
        ) -> None:
            seen.append(("connected all", session, reused, peer, ctx["n"]))

    pm = LbxPluginManager()
    register_all(pm, Fewer(), All())  # All registered last: its impls run first
    ctx = {"n": 7}

    def run(hook: str, *args: Any) -> Any:
        caller = resolve(pm, hook)
        assert caller is not None
        result = caller.run(*args)
        return asyncio.run(awaited(result)) if suspends(result) else result

    run("early_request_filter", "s", ctx)
    run("logging", "s", ctx, "e")
    run("connected_to_upstream", "s", True, "p", ctx)
    key_caller = resolve(pm, "selection_key")
    assert key_caller is not None and key_caller.call_first("s", ctx) == b"key-7"
    assert seen == [
        ("early all", "s", 7),
        ("early", 7),
        ("logging all", "s", 7, "e"),
        ("logging", "e", "s"),
        ("connected all", "s", True, "p", 7),
        ("connected", "p", True),
    ]


def test_ahook_refuses_a_sync_hook() -> None:
    """``pm.ahook.<sync hook>`` is an AttributeError pointing to ``pm.hook``."""
    pm = LbxPluginManager()
    with pytest.raises(AttributeError, match=r"pm\.hook\.configure"):
        _ = pm.ahook.configure


def test_ahook_follows_later_registrations() -> None:
    """``pm.ahook`` resolves afresh, so an impl registered later is called."""
    pm = LbxPluginManager()
    ctx: dict[str, Any] = {}
    assert asyncio.run(pm.ahook.server_started(server=None)) == []
    pm.register(make_impl("logging", "late", is_async=True))
    asyncio.run(pm.ahook.logging(session=None, ctx=ctx, error=None))
    assert ctx["calls"] == ["late"]


def test_resolved_caller_is_a_snapshot() -> None:
    """A ``HookCaller`` from ``resolve()`` keeps the impls it was built with."""
    pm = LbxPluginManager()
    pm.register(make_impl("logging", "early", is_async=False))
    caller = resolve(pm, "logging")
    assert isinstance(caller, HookCaller)
    pm.register(make_impl("logging", "late", is_async=False))
    ctx: dict[str, Any] = {}
    asyncio.run(caller(session=None, ctx=ctx, error=None))
    assert ctx["calls"] == ["early"]


def test_debug_hooks_tracing_logs_calls(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """``LBX_DEBUG_HOOKS=1`` logs the call and the result of an awaitable hook."""
    monkeypatch.setenv("LBX_DEBUG_HOOKS", "1")
    pm = LbxPluginManager()
    pm.register(make_impl("upstream_peer", "a", "peer-a", is_async=True))
    caplog.set_level("DEBUG", logger="lbx.hooks")
    assert asyncio.run(pm.ahook.upstream_peer(session=None, ctx={})) == "peer-a"
    messages = [record.getMessage() for record in caplog.records]
    assert "hook upstream_peer(session, ctx)" in messages
    assert "hook upstream_peer -> 'peer-a'" in messages


# -- chained body filters -------------------------------------------------------------------------


def test_chained_body_filter_passes_each_replacement_on() -> None:
    """Each ``response_body_filter`` impl sees the previous replacement; None keeps the chunk."""
    seen: list[tuple[str, bytes, bool]] = []

    class Upper:
        @hookimpl
        def response_body_filter(self, body: bytes, end_of_stream: bool) -> bytes:
            seen.append(("upper", body, end_of_stream))
            return body.upper()

    class Keep:
        @hookimpl
        def response_body_filter(self, body: bytes) -> None:
            seen.append(("keep", body, False))

    class Wrap:
        @hookimpl(tryfirst=True)
        def response_body_filter(self, body: bytes, ctx: dict[str, Any]) -> bytes:
            seen.append(("wrap", body, False))
            return b"<" + body + ctx["suffix"]

    pm = LbxPluginManager()
    register_all(pm, Upper(), Keep(), Wrap())
    caller = resolve(pm, "response_body_filter")
    assert caller is not None and caller.chained
    result = caller.chain(None, b"abc", True, {"suffix": b">"})
    assert result == b"<ABC>"
    assert seen == [("wrap", b"abc", False), ("keep", b"<abc>", False), ("upper", b"<abc>", True)]


def test_chained_body_filter_all_none_keeps_the_chunk() -> None:
    """When every body filter returns None the chunk passes unchanged (same object)."""

    class Observe:
        @hookimpl
        def request_body_filter(self, body: bytes) -> None:
            return None

    pm = LbxPluginManager()
    pm.register(Observe())
    caller = resolve(pm, "request_body_filter")
    assert caller is not None
    chunk = b"payload"
    assert caller.chain(None, chunk, False, {}) is chunk


@pytest.mark.parametrize(
    "hook", ["response_body_filter", "request_body_filter", "upstream_peer", "logging", "configure"]
)
def test_resolve_returns_none_without_impls(hook: str) -> None:
    """``resolve()`` gives None for a hook nobody implements, so the proxy can skip it."""
    pm = LbxPluginManager()
    assert resolve(pm, hook) is None


def test_resolve_describes_the_hook_spec() -> None:
    """A resolved caller knows its colour, firstresult and halting value from the spec."""
    pm = LbxPluginManager()
    register_all(
        pm,
        make_impl("upstream_peer", "a", is_async=True),
        make_impl("request_filter", "b", is_async=True),
        make_impl("proxy_upstream_filter", "c", is_async=True),
        make_impl("fail_to_connect", "d", is_async=False),
    )
    peer = resolve(pm, "upstream_peer")
    request = resolve(pm, "request_filter")
    proxy = resolve(pm, "proxy_upstream_filter")
    connect = resolve(pm, "fail_to_connect")
    assert peer is not None and peer.awaitable and peer.firstresult and not peer.chained
    assert request is not None and request.halt is True and not request.firstresult
    assert proxy is not None and proxy.halt is False
    assert connect is not None and not connect.awaitable


# -- colour checks at registration ----------------------------------------------------------------


@pytest.mark.parametrize(
    "hook", ["fail_to_connect", "register_selectors", "response_body_filter", "configure"]
)
def test_async_impl_of_sync_hook_is_refused(hook: str) -> None:
    """An ``async def`` impl of a sync hook is refused at registration and not left registered."""
    params = {
        "fail_to_connect": "error",
        "register_selectors": "register",
        "response_body_filter": "body",
        "configure": "config",
    }[hook]
    namespace: dict[str, Any] = {}
    exec(f"async def {hook}({params}):\n    return None\n", namespace)
    plugin = type("AsyncOnSync", (), {hook: staticmethod(hookimpl(namespace[hook]))})()
    pm = LbxPluginManager()
    with pytest.raises(PluginValidationError) as excinfo:
        pm.register(plugin, name="async_on_sync")
    message = str(excinfo.value)
    assert "async_on_sync" in message
    assert f"{hook} is a sync hook" in message
    assert "'async def'" in message
    assert not pm.is_registered(plugin)
    assert pm.get_plugin("async_on_sync") is None
    assert getattr(pm.hook, hook).get_hookimpls() == []


def test_async_generator_impl_of_sync_hook_is_refused() -> None:
    """An async generator impl of a sync hook is refused like an ``async def`` one."""

    class AsyncGen:
        @hookimpl
        async def fail_to_connect(self, error: Any) -> Any:
            yield None

    pm = LbxPluginManager()
    with pytest.raises(PluginValidationError, match="sync hook"):
        pm.register(AsyncGen(), name="asyncgen")
    assert pm.get_plugin("asyncgen") is None


def test_async_impl_of_sync_hook_refused_when_loaded_from_file() -> None:
    """Loading a plugin file with an ``async def fail_to_connect`` fails and leaves no trace."""
    pm = LbxPluginManager()
    with pytest.raises(PluginValidationError, match=r"fail_to_connect is a sync hook"):
        load_plugin_arg(pm, str(PLUGINS / "async_impl_of_sync_hook.py"))
    assert not pm.has_plugin("async_impl_of_sync_hook")
    assert pm.hook.fail_to_connect.get_hookimpls() == []


def test_refused_plugin_leaves_other_impls_in_place() -> None:
    """Refusing one plugin unregisters only that plugin's impls."""
    pm = LbxPluginManager()
    good = make_impl("fail_to_connect", "good", is_async=False)
    pm.register(good, name="good")

    class Bad:
        @hookimpl
        def logging(self) -> None:
            return None

        @hookimpl
        async def fail_to_connect(self) -> None:
            return None

    with pytest.raises(PluginValidationError):
        pm.register(Bad(), name="bad")
    assert [impl.plugin_name for impl in pm.hook.fail_to_connect.get_hookimpls()] == ["good"]
    assert pm.hook.logging.get_hookimpls() == []


def test_wrapper_on_awaitable_hook_is_refused() -> None:
    """``@hookimpl(wrapper=True)`` on an awaitable hook is refused at registration."""

    class Wrapper:
        @hookimpl(wrapper=True)
        def request_filter(self) -> Generator[None, Any, Any]:
            result = yield
            return result

    pm = LbxPluginManager()
    plugin = Wrapper()
    with pytest.raises(PluginValidationError, match=r"request_filter cannot be a wrapper"):
        pm.register(plugin, name="wrapper")
    assert not pm.is_registered(plugin)


def test_old_style_hookwrapper_on_awaitable_hook_is_refused() -> None:
    """``@hookimpl(hookwrapper=True)`` on an awaitable hook is refused too."""

    class Wrapper:
        @hookimpl(hookwrapper=True)
        def upstream_peer(self) -> Generator[None, Any, None]:
            yield

    pm = LbxPluginManager()
    with pytest.raises(PluginValidationError, match="cannot be a wrapper"):
        pm.register(Wrapper(), name="hookwrapper")
    assert pm.get_plugin("hookwrapper") is None


def test_wrapper_on_chained_body_filter_is_refused() -> None:
    """A wrapper around a chained body filter is refused (impls are called one at a time)."""

    class Wrapper:
        @hookimpl(wrapper=True)
        def response_body_filter(self) -> Generator[None, Any, Any]:
            return (yield)

    pm = LbxPluginManager()
    with pytest.raises(PluginValidationError, match="cannot be a wrapper"):
        pm.register(Wrapper(), name="bodywrapper")


def test_wrapper_on_plain_sync_hook_is_allowed() -> None:
    """A wrapper on a sync start-up hook (``configure``) is fine: pluggy calls it."""
    calls: list[str] = []

    class Wrapper:
        @hookimpl(wrapper=True)
        def configure(self) -> Generator[None, Any, Any]:
            calls.append("before")
            result = yield
            calls.append("after")
            return result

    class Plain:
        @hookimpl
        def configure(self) -> None:
            calls.append("impl")

    pm = LbxPluginManager()
    register_all(pm, Plain(), Wrapper())
    pm.hook.configure(config=None, plugin_manager=pm)
    assert calls == ["before", "impl", "after"]


def test_misspelled_hook_is_refused_with_did_you_mean() -> None:
    """An impl named ``upstreams_peer`` is refused, suggesting ``upstream_peer``."""
    pm = LbxPluginManager()
    with pytest.raises(PluginValidationError) as excinfo:
        load_plugin_arg(pm, str(PLUGINS / "misspelled_hook.py"))
    message = str(excinfo.value)
    assert "'upstreams_peer' is not an lbx hook" in message
    assert "did you mean 'upstream_peer'?" in message
    assert "misspelled_hook" in message
    assert not pm.has_plugin("misspelled_hook")


def test_unknown_hook_without_close_match_is_refused() -> None:
    """An impl of a made-up hook with no close match is refused without a suggestion."""

    class Odd:
        @hookimpl
        def zzz_quux(self) -> None:
            return None

    pm = LbxPluginManager()
    with pytest.raises(PluginValidationError) as excinfo:
        pm.register(Odd(), name="odd")
    assert "'zzz_quux' is not an lbx hook" in str(excinfo.value)
    assert "did you mean" not in str(excinfo.value)


def test_unknown_argument_is_refused_by_pluggy() -> None:
    """An impl asking for a parameter the hook does not pass is refused at registration."""
    pm = LbxPluginManager()
    with pytest.raises(Exception, match="request") as excinfo:
        load_plugin_arg(pm, str(PLUGINS / "unknown_argument.py"))
    assert "PluginValidationError" in type(excinfo.value).__name__
    assert not pm.has_plugin("unknown_argument")
    assert pm.hook.request_filter.get_hookimpls() == []


def test_pluggy_validation_errors_become_lbx_errors() -> None:
    """pluggy's own validation failures are raised as lbx's ``PluginValidationError``."""
    pm = LbxPluginManager()
    with pytest.raises(PluginValidationError, match="unknown_argument"):
        load_plugin_arg(pm, str(PLUGINS / "unknown_argument.py"))


def test_optionalhook_of_unknown_hook_is_accepted() -> None:
    """``optionalhook=True`` marks an impl for a hook that may not exist: it is accepted."""

    class Optional:
        @hookimpl(optionalhook=True)
        def some_future_hook(self) -> None:
            return None

    pm = LbxPluginManager()
    assert pm.register(Optional(), name="optional") == "optional"


def test_async_fixture_plugin_file_registers_and_defers() -> None:
    """The ``async_hooks`` fixture plugin loads; its deferring impls let the next one win."""
    pm = LbxPluginManager()
    pm.register(make_impl("upstream_peer", "fallback", "peer-x", is_async=False, trylast=True))
    load_plugin_arg(pm, str(PLUGINS / "async_hooks.py"))
    ctx: dict[str, Any] = {}

    async def run() -> tuple[Any, Any]:
        handled = await pm.ahook.request_filter(session=None, ctx=ctx)
        peer = await pm.ahook.upstream_peer(session=None, ctx=ctx)
        await pm.ahook.logging(session=None, ctx=ctx, error=None)
        return handled, peer

    assert asyncio.run(run()) == (None, "peer-x")
    assert ctx["calls"] == [
        "async_hooks.request_filter",
        "async_hooks.upstream_peer",
        "fallback",
        "async_hooks.logging",
    ]


# -- arguments ------------------------------------------------------------------------------------


def test_impl_gets_the_arguments_it_names_in_any_order() -> None:
    """An impl may take some of the spec's arguments, in any order (pluggy's rule)."""
    seen: list[tuple[Any, ...]] = []

    class Plugin:
        @hookimpl
        def error_while_proxy(self, client_reused: bool, error: Any, session: Any) -> None:
            seen.append((client_reused, error, session))

    class AllOfThem:
        @hookimpl
        def error_while_proxy(
            self, session: Any, peer: Any, ctx: Any, error: Any, client_reused: bool
        ) -> None:
            seen.append((session, peer, ctx, error, client_reused))

    pm = LbxPluginManager()
    register_all(pm, Plugin(), AllOfThem())
    caller = resolve(pm, "error_while_proxy")
    assert caller is not None
    caller.call_sync("session", "peer", "ctx", "error", True)
    assert seen == [("session", "peer", "ctx", "error", True), (True, "error", "session")]


def test_awaitable_hook_called_without_an_argument_names_them() -> None:
    """A setup-time call (``pm.ahook``) must pass every argument of the spec."""
    pm = LbxPluginManager()
    pm.register(make_impl("logging", "a", is_async=False))
    with pytest.raises(TypeError, match=r"logging\(\) takes session, ctx, error; got session, ctx"):
        asyncio.run(pm.ahook.logging(session=None, ctx={}))
