"""Suite 9 (RESULTS.md §9), async calls (issue #6): how fast the engine accepts Event calls (202/s) and drains them.

The logic is bench/bench_async.py's (imported; that script still runs on its own with more
options). Per sandbox, an engine with ``async_concurrency`` 64 and a no-op Python function of the
default concurrency (10 instances), warmed with 50 async calls, then:

* **drain**: C = 32 concurrent keep-alive clients POST ``calls`` Event invocations
  (``X-Easyfaas-Invocation-Type: Event``) to the management API as fast as they get 202s, while
  the dispatcher runs them; then wait for the last successful run
  (``easyfaas_async_attempts_total{status="success"}`` on /metrics). Reported: the accept rate
  (202/s, p50/p99 of a 202) and the end-to-end rate (calls / time from the first POST to the last
  run);
* the same with an idempotency key per call;
* **same-run baseline**: the same C clients making ``calls`` *synchronous* invokes of the same
  function (200/s), right after: the ratios async accept / sync and async end-to-end / sync.

    python bench/async_calls.py [--quick] [--sandbox process] [--json out.json]
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_async import NOOP, drain
from common import emit, engine, log, machine, parser, sandboxes, scratch, summary

CLIENTS = 32
#: A drain that has not finished by then is reported as a failure (bench_async.drain waits for ever).
DRAIN_TIMEOUT = 90.0


def bounded(coro: Any) -> Any:
    async def run() -> Any:
        return await asyncio.wait_for(coro, DRAIN_TIMEOUT)

    return asyncio.run(run())


async def sync_calls(eng: Any, function: str, calls: int, clients: int) -> dict[str, Any]:
    """``calls`` synchronous invokes (RequestResponse) from ``clients`` concurrent keep-alive clients."""
    import aiohttp

    url = f"{eng.endpoint}/v1/functions/{function}/invoke"
    headers = {"Authorization": f"Bearer {eng.token}"} if eng.token else {}
    latencies: list[float] = []
    counter = iter(range(calls))

    async def client(session: aiohttp.ClientSession) -> None:
        for i in counter:
            t0 = time.perf_counter()
            async with session.post(url, data=b'{"i": %d}' % i, headers=headers) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"sync call {i}: HTTP {response.status}")
            latencies.append((time.perf_counter() - t0) * 1000)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients)) as session:
        start = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(clients)))
        elapsed = time.perf_counter() - start
    return {"calls": calls, "clients": clients, "seconds": round(elapsed, 3),
            "calls_per_s": round(calls / elapsed, 1), "latency_ms": summary(latencies)}  # fmt: skip


def run_sandbox(sandbox: str, quick: bool) -> dict[str, Any]:
    from easyfaas.testing import write_function

    calls = 200 if quick else 2000
    tmp = scratch("efbench-async-")
    out: dict[str, Any] = {"calls": calls, "clients": CLIENTS, "async_concurrency": 64}
    with engine(sandbox, pool=2, keep_alive="300s", controller={"async_concurrency": 64}) as eng:
        eng.deploy(write_function(tmp / "noop", NOOP, runtime="python"), "noop")
        bounded(drain(eng, "noop", 50, 8))  # warm the instances up
        log(f"async {sandbox}: {calls} Event calls from {CLIENTS} clients, then drained")
        out["drain"] = bounded(drain(eng, "noop", calls, CLIENTS))
        log(f"async {sandbox}: the same with idempotency keys")
        out["drain_with_idempotency_keys"] = bounded(drain(eng, "noop", calls, CLIENTS, keyed=True))
        log(f"async {sandbox}: {calls} synchronous calls from {CLIENTS} clients (baseline)")
        out["sync"] = asyncio.run(sync_calls(eng, "noop", calls, CLIENTS))
    sync = out["sync"]["calls_per_s"]
    for key in ("drain", "drain_with_idempotency_keys"):
        d = out[key]
        d["accept_vs_sync"] = round(d["accept"]["accepted_per_s"] / sync, 3) if sync else None
        d["completed_vs_sync"] = round(d["completed_per_s"] / sync, 3) if sync else None
    return out


def main() -> None:
    args = parser(__doc__ or "").parse_args()
    run, skipped = sandboxes(args.sandbox)
    result: dict[str, Any] = {"suite": "async_calls", "skipped": skipped, "sandboxes": {}}
    for sandbox in run:
        try:
            result["sandboxes"][sandbox] = run_sandbox(sandbox, args.quick)
        except Exception as exc:  # noqa: BLE001 - report and keep the other sandbox's figures
            log(f"async {sandbox} failed: {exc!r}")
            result["sandboxes"][sandbox] = {"error": repr(exc)[-2000:]}
    result["machine"] = machine()
    emit(result, args.json)


if __name__ == "__main__":
    main()
