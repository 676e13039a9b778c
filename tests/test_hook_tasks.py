"""The task a request's hooks run in: one per client connection, never one per request.

Creating a task costs more than a request's phases without hooks (issue 18), so a connection's
requests run one after the other in its task. Hooks rely on it being a real asyncio task, the
same before and after they suspend: ``asyncio.timeout``, anyio's cancel scopes and
``current_task()`` are checked in a real lbx, and so are the context variables a request's
first phase sets (its response phases run after the upstream connection's read).
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from lbx.inprocess import InProcessProxy
from lbx.testing import http_connection, http_get

PLUGINS = Path(__file__).parent / "plugins"
GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


def count_tasks(proxy: InProcessProxy) -> list[object]:
    """The coroutines of the tasks made on ``proxy``'s loop from now on (not the test's own
    ``settle`` steps)."""
    made: list[object] = []

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        if getattr(getattr(coro, "cr_code", None), "co_name", "") != "steps":
            made.append(coro)
        return asyncio.Task(coro, loop=loop, **kwargs)

    proxy.loop.set_task_factory(factory)
    return made


def test_requests_on_a_connection_make_no_task():
    proxy = InProcessProxy()
    with proxy.client() as client:
        client.send(GET)  # the connection's task starts
        assert client.read_response().status == 200
        made = count_tasks(proxy)
        for _ in range(20):
            client.send(GET)
            assert client.read_response().status == 200
        assert made == []
    proxy.close()
    assert proxy.errors == []


def test_async_hooks_run_in_one_task_per_connection(tmp_path):
    plugin = tmp_path / "current_task.py"
    plugin.write_text(
        "import asyncio\n"
        "from lbx import hookimpl\n"
        "@hookimpl\n"
        "async def request_filter(session, ctx):\n"
        "    ctx['before'] = asyncio.current_task()\n"
        "    await asyncio.sleep(0)\n"  # really suspends
        "    ctx['after'] = asyncio.current_task()\n"
        "@hookimpl\n"
        "def upstream_response_filter(session, upstream_response, ctx):\n"
        "    tasks = {ctx['before'], ctx['after'], asyncio.current_task()}\n"
        "    upstream_response.insert_header('X-Tasks', ' '.join(str(id(t)) for t in tasks))\n"
    )
    proxy = InProcessProxy(plugins=["roundrobin", str(plugin)])
    made = count_tasks(proxy)
    seen = []
    with proxy.client() as client:
        for _ in range(3):
            client.send(GET)
            response = client.read_response()
            assert response.status == 200
            seen.append(response.get("X-Tasks"))
    proxy.close()
    assert len(set(seen)) == 1 and b" " not in seen[0]  # one task, the same for every hook
    assert len(made) == 1  # the connection's, made with its first request
    assert proxy.errors == []


# -- a real lbx ---------------------------------------------------------------------------------


def with_plugin(lbx: Any, backends: Any, plugin: str) -> Any:
    """A real lbx with ``tests/plugins/<plugin>``, round robin over one backend."""
    upstream = backends.start("a").address
    return lbx(
        "--plugin",
        "roundrobin",
        "--plugin",
        str(PLUGINS / plugin),
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        upstream,
    )


def test_hooks_keep_their_task_their_timeouts_and_their_context(lbx, backends):
    """``tests/plugins/task_aware.py`` in a real lbx: its hooks enter asyncio and anyio timeouts
    and suspend in them, see one task per request before and after, a timeout that fires is
    theirs to catch, and a context variable set in ``request_filter`` is the request's in
    ``upstream_response_filter``, with two clients' requests interleaved."""
    proc = with_plugin(lbx, backends, "task_aware.py")
    first, second = http_connection(proc.address), http_connection(proc.address)
    for index in range(3):
        for conn, path in ((first, f"/first/{index}"), (second, f"/second/{index}")):
            reply = http_get(proc.address, path, conn=conn)
            assert reply.status == 200
            assert reply.headers["X-Same-Task"] == "yes"
            assert reply.headers["X-Path-Seen"] == path
            assert reply.headers["X-Timed-Out"] == "no"
    reply = http_get(proc.address, "/timeout", conn=first)
    assert (reply.status, reply.headers["X-Timed-Out"]) == (200, "yes")
    assert reply.headers["X-Same-Task"] == "yes"
    first.close()
    second.close()
    assert http_get(proc.address, "/after").status == 200
    assert "Traceback" not in proc.output


def test_a_context_variable_follows_its_request(lbx, backends):
    """Plain ``def`` hooks, many clients at once: the response phases, which the upstream
    connection's read sets off, see the context of the request's client connection."""
    proc = with_plugin(lbx, backends, "context_sync.py")
    wrong: list[str] = []

    def client(number: int) -> None:
        conn = http_connection(proc.address)
        for index in range(20):
            path = f"/{number}/{index}"
            reply = http_get(proc.address, path, conn=conn)
            if reply.status != 200 or reply.headers["X-Path-Seen"] != path:
                wrong.append(f"{path}: {reply.status} {reply.headers['X-Path-Seen']}")
        conn.close()

    threads = [threading.Thread(target=client, args=(number,)) for number in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wrong == []
