"""Scale-out on NATS JetStream: async drain rate with 1, 2 and 3 engine nodes sharing one queue,
and how long a deploy on one node takes to reach the others. The drain runs with the shared
activation archive on (every record also goes to the ``<bucket>-activations`` bucket before the
call is acked); the run also reports when the bucket holds every drained call's record.

Stand-alone: ``python bench/bench_nats.py [--calls N] [--clients C] [--nodes 1,2,3] [--quick] [--json OUT]``.
Needs ``nats-server`` (Debian: apt-get install nats-server). Reports figures only; nothing is asserted.
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp

from easyfaas.client import ApiError
from easyfaas.testing import RunningEngine, write_function
from easyfaas.testing.nats import NatsServer, nats_unavailable

NOOP = "def handler(event, context):\n    return None\n"
_SUCCESS = re.compile(r'^easyfaas_async_attempts_total\{function="(?P<fn>[^"]+)",status="success"\} (?P<n>[0-9.e+]+)$', re.M)


def start_nodes(scratch: Path, nats: NatsServer, n: int, bucket: str) -> list[RunningEngine]:
    common = {"servers": [nats.url], "bucket": bucket}
    extra = {"storage": {"nats": common}, "queue": {"nats": common}}
    controller = {"keep_alive": "300s", "async_concurrency": 64}
    nodes = [
        RunningEngine(scratch / f"{bucket}-node{i}", pool={"python": 2}, extra=extra, controller=controller) for i in range(n)
    ]
    with ThreadPoolExecutor(n) as pool:
        list(pool.map(lambda node: node.start(), nodes))
    return nodes


async def archived_records(nats_url: str, bucket: str) -> int:
    """How many records the shared activation bucket holds (one per call)."""
    import nats

    nc = await nats.connect(nats_url)
    try:
        info = await nc.jetstream().stream_info(f"KV_{bucket}-activations")
        return int(info.state.messages)
    finally:
        await nc.close()


async def archive_lag(nats_url: str, bucket: str, expected: int, timeout: float = 60.0) -> float | None:
    """Seconds until the bucket holds ``expected`` records (``None``: not within ``timeout``)."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if await archived_records(nats_url, bucket) >= expected:
            return time.perf_counter() - start
        await asyncio.sleep(0.05)
    return None


async def successes(nodes: list[RunningEngine], function: str) -> int:
    total = 0
    async with aiohttp.ClientSession() as session:
        for node in nodes:
            async with session.get(f"{node.endpoint}/metrics", headers={"Authorization": f"Bearer {node.token}"}) as r:
                text = await r.text()
            total += sum(int(float(m["n"])) for m in _SUCCESS.finditer(text) if m["fn"] == function)
    return total


async def drain(nodes: list[RunningEngine], function: str, calls: int, clients: int) -> dict[str, Any]:
    """Accept ``calls`` round-robin over the nodes, then wait for the last successful run."""
    before = await successes(nodes, function)
    counter = iter(range(calls))
    latencies: list[float] = []

    async def client(session: aiohttp.ClientSession) -> None:
        for i in counter:
            node = nodes[i % len(nodes)]
            headers = {"Authorization": f"Bearer {node.token}", "X-Easyfaas-Invocation-Type": "Event"}
            t0 = time.perf_counter()
            async with session.post(f"{node.endpoint}/v1/functions/{function}/invoke", data=b'{"i": %d}' % i,
                                    headers=headers) as response:  # fmt: skip
                await response.read()
                if response.status != 202:
                    raise RuntimeError(f"call {i}: HTTP {response.status}")
            latencies.append(time.perf_counter() - t0)

    start = time.perf_counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients)) as session:
        await asyncio.gather(*(client(session) for _ in range(clients)))
    accepted_in = time.perf_counter() - start
    while await successes(nodes, function) - before < calls:
        await asyncio.sleep(0.05)
    elapsed = time.perf_counter() - start
    latencies.sort()
    return {
        "nodes": len(nodes), "calls": calls, "clients": clients, "seconds": elapsed, "completed_per_s": calls / elapsed,
        "accepted_per_s": calls / accepted_in, "accept_p50_ms": statistics.median(latencies) * 1000,
        "accept_p99_ms": latencies[max(0, int(len(latencies) * 0.99) - 1)] * 1000,
    }  # fmt: skip


def propagation(nodes: list[RunningEngine], scratch: Path, rounds: int) -> dict[str, Any]:
    """Deploy a new version on one node; time until every other node's registry names it."""
    first, others = nodes[0], nodes[1:]
    seen_ms: list[float] = []
    for r in range(rounds):
        directory = write_function(scratch / f"prop-{r}", NOOP.replace("None", repr(r)))
        version = str(first.deploy(directory, "moving")["version"])
        deployed = time.perf_counter()
        pending = set(range(len(others)))
        while pending:
            for i in list(pending):
                try:
                    if str(others[i].client.get("moving")["version"]) == version:
                        pending.discard(i)
                except ApiError:
                    pass
            time.sleep(0.001)
        seen_ms.append((time.perf_counter() - deployed) * 1000)
    seen_ms.sort()
    return {"rounds": rounds, "p50_ms": statistics.median(seen_ms), "max_ms": seen_ms[-1], "all_ms": seen_ms}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--calls", type=int, default=3000)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--nodes", default="1,2,3", help="node counts to measure, comma-separated")
    p.add_argument("--quick", action="store_true", help="a smoke run with few calls")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = p.parse_args()
    reason = nats_unavailable()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    calls = 300 if args.quick else args.calls
    scratch = Path(tempfile.mkdtemp(prefix="bench-nats-"))
    figures: dict[str, Any] = {"calls": calls, "clients": args.clients, "drain": []}
    try:
        with NatsServer(scratch / "nats-store") as nats:
            for n in (int(x) for x in args.nodes.split(",")):
                nodes = start_nodes(scratch, nats, n, f"bench{n}")
                try:
                    # A no-op of the default concurrency: 9 async calls at once per node.
                    nodes[0].deploy(write_function(scratch / "noop", NOOP), "noop")
                    asyncio.run(drain(nodes, "noop", 20 * n, 8))  # warm every node's instances up
                    result = asyncio.run(drain(nodes, "noop", calls, args.clients))
                    result["archive_lag_s"] = asyncio.run(archive_lag(nats.url, f"bench{n}", 20 * n + calls))
                    figures["drain"].append(result)
                    lag = "not within 60 s" if result["archive_lag_s"] is None else f"{result['archive_lag_s']:.2f} s later"
                    print(f"{n} node(s): {calls} async no-op calls drained at {result['completed_per_s']:.0f}/s "
                          f"({result['seconds']:.2f} s); accepted at {result['accepted_per_s']:.0f} 202/s "
                          f"(p50 {result['accept_p50_ms']:.2f} ms, p99 {result['accept_p99_ms']:.2f} ms); "
                          f"every record in the shared archive {lag}", flush=True)  # fmt: skip
                    if n >= 2:
                        prop = propagation(nodes, scratch, 5 if args.quick else 20)
                        figures[f"propagation_{n}_nodes"] = prop
                        print(f"{n} nodes: a deploy reached every other node in p50 {prop['p50_ms']:.1f} ms, "
                              f"max {prop['max_ms']:.1f} ms ({prop['rounds']} deploys)", flush=True)  # fmt: skip
                finally:
                    for node in nodes:
                        node.stop()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
