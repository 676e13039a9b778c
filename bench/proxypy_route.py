"""proxy.py (PyPI ``proxy.py``) reverse-proxy plugin: every path to the benchmark backends.

Runs inside bench/.venv-proxypy, started by bench/run.py as
``proxy --enable-reverse-proxy --plugins proxypy_route.Route`` with ``PYTHONPATH=bench`` and
``BENCH_UPSTREAMS="http://127.0.0.1:B1 http://127.0.0.1:B2"``. proxy.py picks one of the
upstreams at random for each request and opens a new upstream connection for each client
connection (it has no upstream pool). It runs ``--threaded``: the default (threadless) mode of
proxy.py 2.4.10 dies under load here (``FileNotFoundError`` in ``Threadless._update_work_events``).
"""

import os

from proxy.http.server import ReverseProxyBasePlugin  # type: ignore[import-not-found]

UPSTREAMS = [u.encode() for u in os.environ["BENCH_UPSTREAMS"].split()]


class Route(ReverseProxyBasePlugin):  # type: ignore[misc]
    def routes(self) -> list[tuple[str, list[bytes]]]:
        return [(r"/.*", UPSTREAMS)]
