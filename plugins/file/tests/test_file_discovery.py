"""lbx-file: a file of backends drives a service's backend set, under load, with no failed
request (issue 17's "done means" for the file source), and a bad file keeps the last good set."""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path

import anyio
import pytest

from lbx.testing import BackendThread, ClientLoad, LbxProcess, churn, churn_steps, http_get
from lbx_file import BadFile, FileDiscovery, read_backends

UPDATE = 0.2  # seconds: the file is polled this often
NAMES = [f"b{i}" for i in range(1, 7)]


def write_atomically(path: Path, text: str) -> None:
    """What a writer of the file should do: a temporary file renamed over the old one."""
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def backends_text(addresses: dict[str, str], step: dict[str, int]) -> str:
    return "backends:\n" + "".join(
        f"  - {{address: {addresses[name]}, weight: {weight}}}\n" for name, weight in step.items()
    )


def start(lbx, tmp_path: Path, threads: int, extra: str = "") -> LbxProcess:
    conf = tmp_path / "lbx.yaml"
    conf.write_text(
        f"threads: {threads}\nplugins: [roundrobin, file]\n{extra}services:\n"
        "  - listen: 127.0.0.1:0\n"
        f"    discovery: {{source: file, path: backends.yaml, update_frequency: {UPDATE}}}\n"
    )
    return lbx("-c", str(conf))


@pytest.mark.parametrize("threads", [1, 2])
def test_twenty_changes_under_load_fail_no_request(lbx, backends: BackendThread, tmp_path, threads):
    """Add, remove, reweight and replace backends 20 times under load: every request succeeds,
    no request sent after lbx applied a removal reaches the removed backend, and a new backend
    gets traffic (latencies printed)."""
    addresses = {name: backends.start(name).address for name in NAMES}
    steps = churn_steps(NAMES, 20)
    path = tmp_path / "backends.yaml"
    write_atomically(path, backends_text(addresses, steps[0]))
    proc = start(lbx, tmp_path, threads)
    logged = [len(proc.lines)]

    def applied() -> None:
        match = proc.wait_for(r"backends changed \(file\)", start=logged[0])
        logged[0] = proc.lines.index(match.string) + 1

    with ClientLoad(proc.address, clients=8, seconds=120) as load:
        report = churn(
            load,
            steps,
            lambda step: write_atomically(path, backends_text(addresses, step)),
            applied,
        )
    print(f"file source, threads: {threads}, update_frequency {UPDATE}s: {report.summary(load)}")
    assert report.changes == 20
    assert load.errors == [] and load.ok > 0
    assert report.stale == []
    assert len(report.first_request) == sum(
        1 for before, after in itertools.pairwise(steps) for name in after if name not in before
    )


def test_a_bad_file_keeps_the_last_good_set_and_says_where(lbx, backends, tmp_path):
    """A broken file is reported once, with the file and the line; traffic stays on the last
    good set; a fixed file is taken again."""
    one, two = backends.start("one"), backends.start("two")
    path = tmp_path / "backends.yaml"
    write_atomically(path, f"- {one.address}\n")
    proc = start(lbx, tmp_path, 1)
    mark = len(proc.lines)
    write_atomically(path, f"- {one.address}\n- address: {two.address}\n  wieght: 2\n")
    proc.wait_for(
        r"file discovery failed, keeping the last 1 backend: "
        r".*backends\.yaml:2: unknown key 'wieght'",
        start=mark,
    )
    failed_at = time.monotonic()
    with ClientLoad(proc.address, clients=2, seconds=60) as load:  # served while polls fail
        load.wait_served_by("one", failed_at + 5 * UPDATE)
    assert load.errors == [] and {name for _, name in load.answers} == {"one"}
    assert not any("works again" in line for line in proc.lines[mark:])
    write_atomically(path, f"- {one.address}\n- {{address: {two.address}, enabled: false}}\n")
    proc.wait_for(rf"backends changed \(file\): \+{two.address}", start=mark)
    write_atomically(path, f"- {one.address}\n- {two.address}\n")
    with ClientLoad(proc.address, clients=2, seconds=30) as load:
        load.wait_served_by("two", 0)
    assert load.errors == []
    assert sum(1 for line in proc.lines if "discovery failed" in line) == 1


def test_a_missing_file_is_reported_once_until_it_is_back(lbx, backends, tmp_path):
    """A file that goes away keeps the last set and is one warning, however many polls find it
    missing (it was one per poll); its return is one line saying so."""
    one = backends.start("one")
    path = tmp_path / "backends.yaml"
    write_atomically(path, f"- {one.address}\n")
    proc = start(lbx, tmp_path, 1)
    mark = len(proc.lines)
    path.unlink()
    proc.wait_for(r"file discovery failed, keeping the last 1 backend: ", start=mark)
    failed_at = time.monotonic()
    with ClientLoad(proc.address, clients=2, seconds=60) as load:  # served while polls fail
        load.wait_served_by("one", failed_at + 5 * UPDATE)
    assert load.errors == [] and {name for _, name in load.answers} == {"one"}
    assert not any("works again" in line for line in proc.lines[mark:])  # it does not yet
    write_atomically(path, f"- {one.address}\n")
    proc.wait_for(r"service service0: file discovery works again", start=mark)
    assert sum(1 for line in proc.lines[mark:] if "discovery failed" in line) == 1


def test_a_file_missing_at_start_says_there_are_no_backends_yet(lbx, backends, tmp_path):
    """lbx starts without the file (nothing to keep: it says so), and serves once it comes."""
    one = backends.start("one")
    proc = start(lbx, tmp_path, 1)
    proc.wait_for(r"file discovery failed, no backends yet: .*backends\.yaml")
    write_atomically(tmp_path / "backends.yaml", f"- {one.address}\n")
    proc.wait_for(r"service service0: file discovery works again")
    proc.wait_for(rf"backends changed \(file\): \+{one.address} \(1 backend\)")
    assert http_get(proc.address).backend == "one"


def test_parse_errors_name_the_line(tmp_path):
    """Every kind of mistake in the file is one message with the file and the line."""
    path = tmp_path / "b.yaml"
    cases = {
        "- 127.0.0.1:1\n- a: b: c\n": ":2: invalid YAML",
        "- 127.0.0.1:1\n- {address: 127.0.0.1:2, weight: 0}\n": ":2: weight: expected a whole",
        "backends:\n  - 127.0.0.1:99999\n": ":2: '127.0.0.1:99999': port must be",
        "servers: []\n": ":1: unknown key 'servers'",
        "42\n": ":1: expected a list of backends",
        "- {adress: 127.0.0.1:2}\n": ":1: unknown key 'adress'; did you mean 'address'\\?",
        "- {address: 127.0.0.1:2, enabled: 1}\n": ":1: enabled: expected true or false, got 1",
        "- [127.0.0.1:2]\n": ":1: expected 'ip:port' or {address, weight, enabled}",
    }
    for text, expected in cases.items():
        path.write_text(text)
        with pytest.raises(BadFile, match=expected):
            read_backends(str(path))
    path.write_text('{"backends": [{"address": "127.0.0.1:1", "weight": 2, "enabled": false}]}')
    found = read_backends(str(path))
    assert [(b.addr, b.weight) for b in found.backends] == [("127.0.0.1:1", 2)]
    assert found.enabled == {"127.0.0.1:1": False}


def test_an_unchanged_file_is_not_read_again(tmp_path):
    """Polling costs a stat: the file is read only when its inode, size or mtime changed."""
    path = tmp_path / "b.yaml"
    write_atomically(path, "- 127.0.0.1:1\n")
    source = FileDiscovery(str(path))
    first = anyio.run(source.discover)
    assert anyio.run(source.discover) is first and source.reads == 1
    write_atomically(path, "- 127.0.0.1:2\n")
    assert [b.addr for b in anyio.run(source.discover).backends] == ["127.0.0.1:2"]
    assert source.reads == 2
