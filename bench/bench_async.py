"""Asynchronous calls: how fast the engine accepts them (durable 202s per second) and drains them.

Stand-alone: ``python bench/bench_async.py [--calls N] [--clients C] [--sandbox S] [--quick] [--json OUT]``.
Reports figures only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from easyfaas.testing import RunningEngine, write_function

NOOP = "def handler(event, context):\n    return None\n"
_SUCCESS = re.compile(r'^easyfaas_async_attempts_total\{function="(?P<fn>[^"]+)",status="success"\} (?P<n>[0-9.e+]+)$', re.M)


async def accept(engine: RunningEngine, function: str, calls: int, clients: int, *, keyed: bool) -> dict[str, Any]:
    """``calls`` Event invocations from ``clients`` concurrent keep-alive connections."""
    url = f"{engine.endpoint}/v1/functions/{function}/invoke"
    headers = {"Authorization": f"Bearer {engine.token}", "X-Easyfaas-Invocation-Type": "Event"}
    latencies: list[float] = []
    counter = iter(range(calls))

    async def client(session: aiohttp.ClientSession) -> None:
        for i in counter:
            extra = {"X-Easyfaas-Idempotency-Key": f"k{i}"} if keyed else {}
            t0 = time.perf_counter()
            async with session.post(url, data=b'{"i": %d}' % i, headers={**headers, **extra}) as response:
                await response.read()
                if response.status != 202:
                    raise RuntimeError(f"call {i}: HTTP {response.status}")
            latencies.append(time.perf_counter() - t0)

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        start = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(clients)))
        elapsed = time.perf_counter() - start
    latencies.sort()
    return {
        "calls": calls, "clients": clients, "seconds": elapsed, "accepted_per_s": calls / elapsed,
        "p50_ms": statistics.median(latencies) * 1000, "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
    }  # fmt: skip


async def successes(engine: RunningEngine, function: str) -> int:
    async with aiohttp.ClientSession() as session, session.get(f"{engine.endpoint}/metrics",
                                                                headers={"Authorization": f"Bearer {engine.token}"}) as r:  # fmt: skip
        text = await r.text()
    return sum(int(float(m["n"])) for m in _SUCCESS.finditer(text) if m["fn"] == function)


async def drain(engine: RunningEngine, function: str, calls: int, clients: int, *, keyed: bool = False) -> dict[str, Any]:
    """Accept ``calls`` as fast as the clients go (the dispatcher runs them meanwhile), then wait
    for the last successful run: the accept rate, and the end-to-end rate from first 202 to last run."""
    before = await successes(engine, function)
    start = time.perf_counter()
    accepted = await accept(engine, function, calls, clients, keyed=keyed)
    while await successes(engine, function) - before < calls:
        await asyncio.sleep(0.05)
    elapsed = time.perf_counter() - start
    return {"calls": calls, "seconds": elapsed, "completed_per_s": calls / elapsed, "accept": accepted}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--calls", type=int, default=5000)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--sandbox", default="process", choices=["process", "namespace"])
    p.add_argument("--quick", action="store_true", help="a smoke run with few calls")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = p.parse_args()
    calls = 200 if args.quick else args.calls

    scratch = Path(tempfile.mkdtemp(prefix="bench-async-"))
    figures: dict[str, Any] = {"sandbox": args.sandbox}
    try:
        with RunningEngine(scratch, sandbox=args.sandbox, pool={"python": 2},
                           controller={"keep_alive": "300s", "async_concurrency": 64}) as engine:  # fmt: skip
            # A no-op function of the default concurrency (10 instances, 9 of them for async calls).
            engine.deploy(write_function(scratch / "noop", NOOP), "noop")
            asyncio.run(drain(engine, "noop", 50, 8))  # warm the instances up
            figures["drain"] = asyncio.run(drain(engine, "noop", calls, args.clients))
            figures["drain_with_idempotency_keys"] = asyncio.run(drain(engine, "noop", calls, args.clients, keyed=True))
            # Synchronous calls of the same function over the same API, for scale.
            sync_start = time.perf_counter()
            for _ in range(min(calls, 500)):
                engine.client.invoke("noop", b"{}")
            figures["sync_api_calls_per_s_one_client"] = min(calls, 500) / (time.perf_counter() - sync_start)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    for label, key in (("", "drain"), (" with idempotency keys", "drain_with_idempotency_keys")):
        drained = figures[key]
        accepted = drained["accept"]
        print(f"async{label} ({args.sandbox}, no-op, {accepted['clients']} clients, {calls} calls): "
              f"accept {accepted['accepted_per_s']:.0f} 202/s (p50 {accepted['p50_ms']:.2f} ms, p99 {accepted['p99_ms']:.2f} ms); "
              f"end to end {drained['completed_per_s']:.0f} runs/s ({drained['seconds']:.2f} s)")  # fmt: skip
    print(f"for scale, sync API calls from one client: {figures['sync_api_calls_per_s_one_client']:.0f}/s")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    sys.exit(main())
