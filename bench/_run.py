"""The driver behind ``bench/run``: runs each suite in its own process, bounded in time, and
renders RESULTS.md. A suite that fails or times out is reported and the others still run."""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shlex
import shutil
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BENCH, PY, SANDBOXES, log, machine, run_json, start_dockerd, stop_dockerd
from report import render

#: (suite, time limit in seconds for a full run, for a quick run)
SUITES = [
    ("warm_calls", 300, 50),
    ("cold_starts", 150, 50),
    ("memory", 150, 70),
    ("scale", 240, 50),
    ("control_plane", 100, 50),
    ("runtimes", 120, 50),
    ("scheduling", 90, 50),
    ("async_calls", 120, 50),
    ("scale_out", 90, 50),
]
#: The suites that also measure the docker sandbox (a container takes ~0.5 s to create: the
#: others would not fit in the budget with it). Each runs a lean variant for docker.
DOCKER_SUITES = {"warm_calls", "cold_starts", "memory"}
#: The smoke run (--quick) proves each suite's code paths run, not each sandbox: a suite runs
#: in the sandboxes it has code of its own for (default: process only), so that the whole smoke
#: run stays around a minute on this 2-core VM.
QUICK_SANDBOXES = {
    "warm_calls": ("process", "docker"),
    "cold_starts": ("process", "docker"),
    "memory": ("process", "namespace", "docker"),
}
#: The whole full run must stay under 10 minutes.
BUDGET = 580.0


def _on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def main() -> None:
    p = argparse.ArgumentParser(prog="bench/run", description="Run every bench suite and write bench/RESULTS.md.")
    p.add_argument("--quick", action="store_true", help="CI smoke run, under 60 s: proves every suite still runs")
    p.add_argument("--sandbox", action="append", choices=SANDBOXES, help="default: all three, where available")
    p.add_argument("--only", action="append", choices=[s for s, _, _ in SUITES], help="run only these suites")
    p.add_argument(
        "--out", type=Path, help="directory for RESULTS.md and results.json (default bench/, quick: bench/quick/)"
    )
    args = p.parse_args()

    missing = [tool for tool in ("wrk", "hyperfine") if not shutil.which(tool)]
    if missing:
        sys.exit(f"bench/run needs {' and '.join(missing)}: apt-get update && apt-get install -y wrk hyperfine")
    from easyfaas.testing import sandbox_unavailable

    wanted = args.sandbox or list(SANDBOXES)
    skipped: dict[str, str] = {}
    dockerd = None
    started = time.monotonic()
    if "docker" in wanted:
        # As the docker driver's tests do: start dockerd when none answers (root, binary present),
        # and stop it at the end; else docker is skipped with the reason, in RESULTS.md.
        signal.signal(signal.SIGTERM, _on_sigterm)  # so that atexit stops our dockerd
        dockerd, reason = start_dockerd()
        if dockerd is not None:
            atexit.register(stop_dockerd, dockerd)
        if reason is not None:
            skipped["docker"] = reason
            wanted = [s for s in wanted if s != "docker"]
    for s in wanted:
        reason = sandbox_unavailable(s)
        if reason is not None:
            skipped[s] = reason
    available = [s for s in wanted if s not in skipped]
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
        "skipped_sandboxes": skipped,
        "docker_suites": sorted(DOCKER_SUITES),
        "dockerd": "started for this run"
        if dockerd is not None
        else "already running"
        if "docker" in available
        else None,
        "dockerd_start_s": round(time.monotonic() - started, 1),
        "durations_s": {},
    }
    suites = [(s, full, quick) for s, full, quick in SUITES if not args.only or s in args.only]
    results: dict[str, Any] = {"meta": meta, "suites": {}}

    def run_one(suite: str, limit: float) -> None:
        cmd = [PY, str(BENCH / f"{suite}.py")]
        if args.quick:
            cmd.append("--quick")
        sbs = [sb for sb in wanted if sb != "docker" or suite in DOCKER_SUITES]
        if args.quick:
            sbs = [sb for sb in sbs if sb in QUICK_SANDBOXES.get(suite, ("process",))] or sbs[:1]
        if not sbs:
            results["suites"][suite] = {"skipped": {sb: "not measured by this suite" for sb in wanted}, "sandboxes": {}}
            return
        for sb in sbs:
            cmd += ["--sandbox", sb]
        log(f"== {suite} (limit {limit:.0f} s)")
        t0 = time.monotonic()
        load_before = os.getloadavg()[0]
        results["suites"][suite] = run_json(cmd, timeout=limit)
        meta["durations_s"][suite] = time.monotonic() - t0
        meta.setdefault("loadavg_1min", {})[suite] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
        err = results["suites"][suite].get("error")
        log(f"== {suite} done in {meta['durations_s'][suite]:.0f} s" + (f": FAILED {err[-300:]}" if err else ""))

    try:
        if args.quick:
            # Smoke only: three suites at a time keeps the whole run around a minute.
            order = ["memory", "cold_starts", "warm_calls", "runtimes", "scale", "scheduling", "async_calls",
                     "scale_out", "control_plane"]  # longest first  # fmt: skip
            with ThreadPoolExecutor(3) as ex:
                list(ex.map(lambda s: run_one(s[0], s[2]), sorted(suites, key=lambda s: order.index(s[0]))))
        else:
            for i, (suite, limit, _) in enumerate(suites):
                remaining = BUDGET - (time.monotonic() - started)
                reserve = sum(min(60.0, lim / 3) for _, lim, _ in suites[i + 1 :])  # leave the later suites a chance
                run_one(suite, max(30.0, min(limit, remaining - reserve)))
    finally:
        if dockerd is not None:
            stop_dockerd(dockerd)
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
