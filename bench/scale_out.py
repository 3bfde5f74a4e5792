"""Suite 10 (RESULTS.md §10), scale-out on NATS JetStream (issue #10): async drain rate with 1,
2 and 3 engine nodes sharing one queue, with the shared activation archive on, and how long a
deploy on one node takes to reach the others.

The logic is bench/bench_nats.py's (imported; that script still runs on its own with more
options). A real ``nats-server -js`` on a free port; nodes with ``storage``/``queue: nats`` on
loopback, the process sandbox (the nodes share this VM's 2 cores: the figures show what the
shared queue costs, not how nodes add capacity). Same-run baseline: one node on the default
SQLite queue, drained the same way. Skipped, with the reason, when ``nats-server`` is missing.

    python bench/scale_out.py [--quick] [--json out.json]
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from async_calls import CLIENTS, bounded
from bench_nats import NOOP, archive_lag, drain, propagation, start_nodes
from common import emit, engine, log, machine, parser

from easyfaas.testing import write_function
from easyfaas.testing.nats import NatsServer, nats_unavailable


def measure(quick: bool) -> dict[str, Any]:
    calls = 150 if quick else 1000
    rounds = 3 if quick else 10
    out: dict[str, Any] = {"calls": calls, "clients": CLIENTS, "drain": [], "propagation": {}}
    scratch = Path(tempfile.mkdtemp(prefix="efbench-nats-"))
    try:
        with engine("process", pool=2, keep_alive="300s", controller={"async_concurrency": 64}) as eng:
            eng.deploy(write_function(scratch / "noop-local", NOOP), "noop")
            bounded(drain([eng], "noop", 20, 8))
            log(f"scale-out: baseline, one node on the SQLite queue, {calls} calls")
            out["baseline_sqlite"] = bounded(drain([eng], "noop", calls, CLIENTS))
        with NatsServer(scratch / "nats-store") as nats:
            for n in (1, 2, 3):
                nodes = start_nodes(scratch, nats, n, f"bench{n}")
                try:
                    nodes[0].deploy(write_function(scratch / f"noop{n}", NOOP), "noop")
                    bounded(drain(nodes, "noop", 20 * n, 8))  # every node's instances warm
                    log(f"scale-out: {n} node(s) on NATS, {calls} calls")
                    result = bounded(drain(nodes, "noop", calls, CLIENTS))
                    result["archive_lag_s"] = asyncio.run(archive_lag(nats.url, f"bench{n}", 20 * n + calls))
                    out["drain"].append(result)
                    if n >= 2:
                        out["propagation"][str(n)] = propagation(nodes, scratch, rounds)
                finally:
                    for node in nodes:
                        node.stop()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    base = out["baseline_sqlite"]["completed_per_s"]
    for d in out["drain"]:
        d["vs_sqlite"] = round(d["completed_per_s"] / base, 3) if base else None
    for p in out["propagation"].values():
        p.pop("all_ms", None)
    return out


def main() -> None:
    args = parser(__doc__ or "").parse_args()
    result: dict[str, Any] = {"suite": "scale_out", "skipped": {}, "sandboxes": {}}
    reason = nats_unavailable()
    if reason:
        result["skipped"]["process"] = reason
    else:
        try:
            result["sandboxes"]["process"] = measure(args.quick)
        except Exception as exc:  # noqa: BLE001 - report it in RESULTS.md
            log(f"scale-out failed: {exc!r}")
            result["sandboxes"]["process"] = {"error": repr(exc)[-2000:]}
    result["machine"] = machine()
    emit(result, args.json)


if __name__ == "__main__":
    main()
