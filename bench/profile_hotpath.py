"""Where the controller's CPU goes on warm calls: py-spy on the controller during a wrk run.

Not part of ``bench/run`` (sampling slows the controller down). Needs ``pip install py-spy``.

    python bench/profile_hotpath.py [--sandbox process] [--function hello|hello-mux] [--seconds 8] [-c 64]

Prints the controller's CPU µs per request, then the main thread's inclusive and self time per
function as % of main-thread samples and as µs per request (share × CPU/request; a rough split,
py-spy's own sampling cost included). Threads other than the event loop (grpc poller, executor
workers) are left out: py-spy counts them busy while they wait.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import HELLO, TICK, cpu_ticks, engine, hello_dir, scratch, wrk


def aggregate(raw: Path, top: int) -> tuple[int, list[tuple[str, int]], list[tuple[str, int]]]:
    incl: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n_text = line.rpartition(" ")
        if not stack or not stack.startswith("_run_module_as_main"):
            continue  # not the event loop's thread
        n = int(n_text)
        total += n
        names = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        for name in set(names):
            incl[name] += n
        own[names[-1]] += n
    return total, incl.most_common(top), own.most_common(top)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sandbox", default="process")
    p.add_argument("--function", default="hello", choices=["hello", "hello-mux"])
    p.add_argument("--seconds", type=int, default=8)
    p.add_argument("-c", "--connections", type=int, default=64)
    p.add_argument("--top", type=int, default=40)
    args = p.parse_args()
    if not shutil.which("py-spy"):
        sys.exit("needs py-spy: .venv/bin/pip install py-spy")
    with engine(args.sandbox) as eng:
        eng.deploy(HELLO, "hello")
        eng.deploy(hello_dir(scratch("efbench-prof-") / "mux", concurrency=1, instance_concurrency=64), "hello-mux")
        url = f"{eng.http_url}/function/{args.function}"
        wrk(url, args.connections, 3)
        pid = eng.children()["controller"]
        raw = Path(tempfile.mkstemp(suffix=".txt")[1])
        spy = subprocess.Popen(
            [
                "py-spy",
                "record",
                "-r",
                "250",
                "-d",
                str(args.seconds + 1),
                "-f",
                "raw",
                "-o",
                str(raw),
                "--pid",
                str(pid),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        t0 = cpu_ticks([pid])
        res = wrk(url, args.connections, args.seconds)
        cpu_us = (cpu_ticks([pid]) - t0) / TICK * 1e6 / max(1, res["requests"])
        spy.wait()
    total, incl, own = aggregate(raw, args.top)
    raw.unlink(missing_ok=True)
    print(
        f"{args.function} c{args.connections} [{args.sandbox}]: {res['rps']:.0f} req/s (under py-spy), controller {cpu_us:.0f} µs CPU/request"
    )
    for title, rows in (("inclusive", incl), ("self", own)):
        print(f"--- main thread, {title} ({total} samples)")
        for name, n in rows:
            print(f"{100 * n / total:5.1f}%  {cpu_us * n / total:6.1f} µs/req  {name}")


if __name__ == "__main__":
    main()
