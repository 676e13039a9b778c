"""Profile lbx under wrk load with py-spy and list the functions that take the most time.

Same layout and command line as run.py scenario (a): lbx (round robin, TCP health check, the
Host hook of contrib/host_header.py) on CPU 0, the nginx backends and wrk on CPU 1.

    .venv/bin/pip install py-spy
    .venv/bin/python bench/profile_lbx.py --duration 10 [--native]

Writes the collapsed stacks (flamegraph.pl / speedscope input) to bench/results/ and prints the
top functions by own time (the sampled leaf frame) and by total time (anywhere on the stack).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

from run import CLIENT_CPU, HERE, VENV_BIN, free_port, start_backend, start_proxy, wrk

LINE = re.compile(r" \(([^:)]+)(?::\d+)?\)$")  # "func (file.py:12)" -> "func (file.py)"


def frame_name(frame: str) -> str:
    """A frame without its line number, with the path shortened to what identifies it."""
    frame = LINE.sub(lambda m: f" ({short(m.group(1))})", frame)
    return frame


def short(path: str) -> str:
    for marker in ("/core/lbx/", "/plugins/", "/site-packages/", "/lib/python3."):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def summarise(collapsed: str, top: int) -> str:
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    native: Counter[tuple[str, str]] = Counter()  # (C leaf, nearest Python caller)
    samples = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = [frame_name(f) for f in stack.split(";")]
        samples += n
        own[frames[-1]] += n
        for name in set(frames):
            total[name] += n
        if ".py)" not in frames[-1]:
            caller = next((f for f in reversed(frames) if ".py)" in f), "-")
            native[frames[-1], caller] += n
    out = [
        f"{samples} samples (idle excluded)",
        "",
        "| own % | total % | function |",
        "|---:|---:|---|",
    ]
    for name, n in own.most_common(top):
        out.append(f"| {100 * n / samples:.1f} | {100 * total[name] / samples:.1f} | `{name}` |")
    out += ["", "by total time:", "", "| total % | function |", "|---:|---|"]
    out += [f"| {100 * n / samples:.1f} | `{name}` |" for name, n in total.most_common(top)]
    if native:
        out += ["", "C leaves (with --native) by nearest Python caller:", ""]
        out += ["| % | C function | called from |", "|---:|---|---|"]
        for (leaf, caller), n in native.most_common(top):
            out.append(f"| {100 * n / samples:.1f} | `{leaf}` | `{caller}` |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--duration", type=int, default=10, help="seconds of sampling")
    ap.add_argument("--rate", type=int, default=250, help="samples per second")
    ap.add_argument("--native", action="store_true", help="include C frames (uvloop, httptools)")
    ap.add_argument("--top", type=int, default=15)
    args = ap.parse_args()
    py_spy = shutil.which("py-spy", path=str(VENV_BIN)) or shutil.which("py-spy")
    if not py_spy:
        sys.exit("py-spy is missing: .venv/bin/pip install py-spy")
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    raw = out_dir / f"profile-{time.strftime('%Y%m%d-%H%M%S')}.txt"
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="lbx-bench-") as tmpdir:
        tmp = Path(tmpdir)
        b1, b2, port = free_port(), free_port(), free_port()
        start_backend("nginx", b1, b2, tmp, stack, CLIENT_CPU)
        pid = start_proxy("lbx", port, b1, b2, tmp, stack)
        wrk(port, 2, 50)  # warm-up
        load = threading.Thread(target=wrk, args=(port, args.duration + 4, 50), daemon=True)
        load.start()
        time.sleep(1)
        cmd = [py_spy, "record", "--pid", str(pid), "--duration", str(args.duration)]
        cmd += ["--rate", str(args.rate), "--format", "raw", "--output", str(raw)]
        # --native needs to pause the process for each sample; otherwise don't.
        cmd.append("--native" if args.native else "--nonblocking")
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"py-spy failed:\n{done.stderr}")
        load.join()
    print(summarise(raw.read_text(), args.top))
    print(f"\ncollapsed stacks: {raw}")


if __name__ == "__main__":
    main()
