"""Differential test: lbx against nginx on the requests that fool proxies (issue 14).

The same inputs go, each over a new connection, to nginx 1.x as a plain reverse proxy
(``proxy_pass``, ``proxy_http_version 1.1``, ``proxy_set_header Connection ""``, keep-alive to
the upstream, defaults otherwise: ``underscores_in_headers off``, ``ignore_invalid_headers on``)
and to lbx with its default config, each in front of its own capture upstream
(tests/differential.py). Inputs are generated (tests/request_gen.py): the hardening generator's
requests mutated byte-wise, and the classes of issue 14: look-alike field names, request lines
naming another protocol, malformed chunk framing, ``h2c`` in ``Upgrade`` lists.

The contract (``differential.contract``): where nginx refuses, lbx refuses too or forwards one
canonical request; lbx forwards only canonical requests (one Host, at most one framing field, no
hop-by-hop or look-alike field, ``Upgrade`` naming only websocket, the body a strict parser reads),
never more requests than the client sent, never a request line naming another protocol; its
refusals are 4xx/5xx with ``Connection: close`` and a close; a malformed chunked body is answered
400. Every broken rule is collected over all examples and reported at the end with the exact input
bytes and both outcomes (no shrinking: each example costs real exchanges). ``LBX_DIFF_SHRINK=1``
fails on the first broken rule instead and lets hypothesis shrink it.

Every class of input where nginx and lbx differ is recorded, with its shortest input and both
outcomes, and printed at the end of the module (run with ``-s``; ``LBX_DIFF_REPORT=path`` also
writes it to a file).

``LBX_DIFF_EXAMPLES`` sets the examples per class of input (80, CI-sized); examples are
derandomized unless ``LBX_DIFF_RANDOM=1``. Within a class, an input whose variant of what the
class is about (``request_gen.axis``: the protocol, the look-alike fields, the chunked body, the
Upgrade fields) was already sent is skipped before any exchange.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, Phase, assume, given, settings
from tests.differential import (
    NGINX,
    NGINX_MISSING,
    Nginx,
    Outcome,
    Side,
    contract,
    differences,
)
from tests.http_helpers import Upstream, write_conf
from tests.request_gen import CATEGORIES, Reference, axis
from tests.smuggling_cases import EXPLICIT_INPUTS

from lbx.testing import LbxProcess

EXAMPLES = int(os.environ.get("LBX_DIFF_EXAMPLES", "80"))
SHRINK = bool(os.environ.get("LBX_DIFF_SHRINK"))
RANDOM = bool(os.environ.get("LBX_DIFF_RANDOM"))

pytestmark = pytest.mark.skipif(NGINX is None, reason=NGINX_MISSING)


@dataclass
class Seen:
    """One class (of difference, or of broken rule): how often, and its shortest input."""

    count: int = 0
    data: bytes = b""
    lines: list[str] = field(default_factory=list)

    def add(self, data: bytes, lines: list[str]) -> None:
        self.count += 1
        if not self.data or len(data) < len(self.data):
            self.data, self.lines = data, lines


DIFFERENCES: dict[str, Seen] = {}
RUNS: dict[str, int] = {}  # inputs sent per class


class Pair:
    """nginx and lbx, each in front of its capture upstream; ``run`` sends to both at once."""

    def __init__(self, nginx: Side, lbx: Side) -> None:
        self.nginx = nginx
        self.lbx = lbx
        self.pool = ThreadPoolExecutor(2)

    def run(self, data: bytes, patience: float) -> tuple[Outcome, Outcome]:
        theirs = self.pool.submit(self.nginx.observe, data, patience=patience)
        ours = self.pool.submit(self.lbx.observe, data, patience=patience)
        return theirs.result(), ours.result()


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    nginx_upstream, lbx_upstream = Upstream(), Upstream()
    nginx = Nginx(tmp_path_factory.mktemp("nginx"), nginx_upstream.address)
    conf = write_conf(tmp_path_factory.mktemp("conf"), [lbx_upstream.address])
    try:
        with LbxProcess("-c", conf) as lbx:
            pair = Pair(
                Side("nginx", nginx.address, nginx_upstream, nginx.log_size, nginx.log_tail),
                Side(
                    "lbx",
                    lbx.address,
                    lbx_upstream,
                    lambda: len(lbx.lines),
                    lambda at: "\n".join(lbx.lines[at:]),
                ),
            )
            yield pair
            pair.pool.shutdown()
    finally:
        nginx.stop()
        nginx_upstream.close()
        lbx_upstream.close()


def render(title: str, seen: dict[str, Seen]) -> str:
    lines = [title]
    for name, item in sorted(seen.items()):
        lines.append(f"- {name} ({item.count}x), e.g. {item.data!r}")
        lines += [f"    {line}" for line in item.lines]
    return "\n".join(lines)


@pytest.fixture(scope="module", autouse=True)
def summary() -> Iterator[None]:
    """At the end of the module: every class where nginx and lbx differ (visible with -s)."""
    yield
    runs = ", ".join(f"{category} {count}" for category, count in sorted(RUNS.items()))
    text = render(
        f"nginx and lbx differ in {len(DIFFERENCES)} classes (inputs sent: {runs}):", DIFFERENCES
    )
    print("\n" + text)
    path = os.environ.get("LBX_DIFF_REPORT")
    if path:
        with open(path, "w") as report:
            report.write(text + "\n")


def compare(pair: Pair, category: str, data: bytes) -> tuple[dict[str, str], list[str]]:
    """Both systems on ``data``: the broken rules, and the lines that describe both outcomes."""
    reference = Reference(data)
    # An answer is due at once unless a strict parser reads the input as incomplete (then the
    # client half-closes after 0.3 s without an answer, to see how each proxy ends).
    incomplete = not reference.complete and not reference.error
    nginx, lbx = pair.run(data, 0.3 if incomplete else 2.0)
    lines = [nginx.summary(), lbx.summary()]
    for name in differences(category, data, nginx, lbx):
        DIFFERENCES.setdefault(name, Seen()).add(data, lines)
    return contract(data, reference, nginx, lbx), lines


def failure(broken: dict[str, Seen]) -> str:
    return render(f"lbx breaks {len(broken)} rule(s) of the contract:", broken)


@pytest.mark.parametrize("category", sorted(CATEGORIES))
def test_lbx_against_nginx(pair: Pair, category: str) -> None:
    """Generated inputs of one class: lbx keeps the contract, whatever nginx does."""
    broken: dict[str, Seen] = {}
    tried: set[bytes] = set()

    @settings(
        # The byte-wise mutations are tried 2,000 times on lbx alone (test_http_property.py).
        max_examples=EXAMPLES // 2 if category == "mutated" else EXAMPLES,
        deadline=None,
        derandomize=not RANDOM,
        database=None,
        phases=[Phase.explicit, Phase.generate, *([Phase.shrink] if SHRINK else [])],
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
        ],
    )
    @given(data=CATEGORIES[category]())
    def run(data: bytes) -> None:
        # One exchange per variant of what the class is about (see request_gen.axis); shrinking
        # needs to run an input again.
        key = axis(category, data)
        assume(SHRINK or key not in tried)
        tried.add(key)
        RUNS[category] = RUNS.get(category, 0) + 1
        rules, lines = compare(pair, category, data)
        for rule, detail in rules.items():
            broken.setdefault(rule, Seen()).add(data, [*lines, f"detail: {detail}"])
        if SHRINK:
            assert not rules, (data, rules, lines)

    run()
    assert not broken, failure(broken)


@pytest.mark.parametrize(("name", "data"), EXPLICIT_INPUTS, ids=[n for n, _ in EXPLICIT_INPUTS])
def test_issue14_inputs_against_nginx(pair: Pair, name: str, data: bytes) -> None:
    """The explicit inputs of tests/test_smuggling.py through both systems: the same contract
    (and their differences recorded)."""
    RUNS["explicit"] = RUNS.get("explicit", 0) + 1
    rules, lines = compare(pair, name.split("-", 1)[0], data)
    broken = {rule: Seen(1, data, [*lines, f"detail: {detail}"]) for rule, detail in rules.items()}
    assert not broken, failure(broken)
