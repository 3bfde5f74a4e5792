"""The driver behind ``bench/run``: runs each suite in its own process, bounded in time, and
renders RESULTS.md. A suite that fails or times out is reported and the others still run."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BENCH, PY, log, machine, run_json
from report import render

#: (suite, time limit in seconds for a full run, for a quick run)
SUITES = [
    ("warm_calls", 300, 50),
    ("cold_starts", 150, 50),
    ("memory", 150, 50),
    ("scale", 240, 50),
    ("control_plane", 100, 50),
]
#: The whole full run must stay under 10 minutes.
BUDGET = 580.0


def main() -> None:
    p = argparse.ArgumentParser(prog="bench/run", description="Run every bench suite and write bench/RESULTS.md.")
    p.add_argument("--quick", action="store_true", help="CI smoke run, under 60 s: proves every suite still runs")
    p.add_argument(
        "--sandbox", action="append", choices=["process", "namespace"], help="default: both, where available"
    )
    p.add_argument("--only", action="append", choices=[s for s, _, _ in SUITES], help="run only these suites")
    p.add_argument(
        "--out", type=Path, help="directory for RESULTS.md and results.json (default bench/, quick: bench/quick/)"
    )
    args = p.parse_args()

    missing = [tool for tool in ("wrk", "hyperfine") if not shutil.which(tool)]
    if missing:
        sys.exit(f"bench/run needs {' and '.join(missing)}: apt-get update && apt-get install -y wrk hyperfine")
    from easyfaas.testing import sandbox_unavailable

    wanted = args.sandbox or ["process", "namespace"]
    available = [s for s in wanted if sandbox_unavailable(s) is None]
    out_dir = args.out or (BENCH / "quick" if args.quick else BENCH)
    out_dir.mkdir(parents=True, exist_ok=True)
    command = "bench/run " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    meta: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": command.strip(),
        "quick": args.quick,
        "machine": machine(),
        "loadavg_start": list(os.getloadavg()),
        "sandboxes": available,
        "durations_s": {},
    }
    suites = [(s, full, quick) for s, full, quick in SUITES if not args.only or s in args.only]
    results: dict[str, Any] = {"meta": meta, "suites": {}}
    started = time.monotonic()

    def run_one(suite: str, limit: float) -> None:
        cmd = [PY, str(BENCH / f"{suite}.py")]
        if args.quick:
            cmd.append("--quick")
        for sb in wanted:
            cmd += ["--sandbox", sb]
        log(f"== {suite} (limit {limit:.0f} s)")
        t0 = time.monotonic()
        load_before = os.getloadavg()[0]
        results["suites"][suite] = run_json(cmd, timeout=limit)
        meta["durations_s"][suite] = time.monotonic() - t0
        meta.setdefault("loadavg_1min", {})[suite] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
        err = results["suites"][suite].get("error")
        log(f"== {suite} done in {meta['durations_s'][suite]:.0f} s" + (f": FAILED {err[-300:]}" if err else ""))

    if args.quick:
        # Smoke only: three suites at a time keeps the whole run under a minute.
        order = ["cold_starts", "scale", "warm_calls", "memory", "control_plane"]  # longest first
        with ThreadPoolExecutor(3) as ex:
            list(ex.map(lambda s: run_one(s[0], s[2]), sorted(suites, key=lambda s: order.index(s[0]))))
    else:
        for i, (suite, limit, _) in enumerate(suites):
            remaining = BUDGET - (time.monotonic() - started)
            reserve = sum(min(60.0, lim / 3) for _, lim, _ in suites[i + 1 :])  # leave the later suites a chance
            run_one(suite, max(30.0, min(limit, remaining - reserve)))
    meta["total_s"] = time.monotonic() - started
    meta["loadavg_end"] = list(os.getloadavg())

    (out_dir / "results.json").write_text(json.dumps(results, indent=1, default=str))
    (out_dir / "RESULTS.md").write_text(render(results))
    log(f"wrote {out_dir / 'RESULTS.md'} in {meta['total_s']:.0f} s")
    failed = [
        s
        for s, r in results["suites"].items()
        if "error" in r or any("error" in v for v in (r.get("sandboxes") or {}).values())
    ]
    if failed:
        log(f"suites with failures: {', '.join(failed)}")
        sys.exit(1)


if __name__ == "__main__":
    main()
