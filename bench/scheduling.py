"""Suite 8 (RESULTS.md §8), scheduling (issue #4): the controller's time per call apart from the handler's, and bursts.

**Overhead per call.** A no-op Python function (``return None``), warm. N sequential keep-alive
calls through the HTTP trigger and N through the management API's invoke, and, as the same-run
baseline, N INVOKEs sent straight to a *bare runner*: the same Python runner and handler started
as a plain process outside any engine, on one unix connection, like the controller's. The three
alternate in blocks. Per call:

* ``client_ms``: at the client (raw keep-alive socket);
* ``duration_ms`` and ``wait_ms`` from the call's activation record (``GET /v1/activations``,
  matched by ``X-Easyfaas-Request-Id``): the controller's invoke from acquiring a slot to the
  reply, and the acquire alone;
* the handler's own time: the RESULT frame's ``ms`` (the runner's clock around the handler).
  The engine does not keep it in the activation record, so it is read from the bare runner's
  RESULT frames (same runner file, interpreter and handler).

Reported: ``duration_ms − handler ms`` (controller + hop to the runner + the runner's framing),
``duration_ms − bare-runner round trip`` (the controller's own bookkeeping beyond one bare hop),
``client − duration_ms`` (the trigger's HTTP layer and event building), and ``wait_ms``.

**Burst.** A function with ``concurrency`` N = 4 whose handler sleeps 50 ms (capacity N / 50 ms
= 80 calls/s), its N instances warm; the engine's queue is ``queue_size`` 50 (``max_queue_wait``
10 s, the default). M = 400 parallel calls through the HTTP trigger at once (one connection
each): how many are accepted (200) and throttled (429) and at what rate, p50/p99 of the accepted,
any 5xx. The accepted rate is set beside the function's capacity N / sleep.

    python bench/scheduling.py [--quick] [--sandbox process] [--json out.json]
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RawHttp, emit, engine, log, machine, parser, sandboxes, scratch, summary

NOOP = "def handler(event, context):\n    return None\n"
SLEEP = "import time\n\n\ndef handler(event, context):\n    time.sleep({seconds})\n    return None\n"
BURST_CONCURRENCY = 4
BURST_SLEEP_S = 0.05
QUEUE_SIZE = 50


# --------------------------------------------------------------------------------------------
# the bare runner: the Python runtime's runner as a plain process, spoken to directly


class BareRunner:
    """The python runtime's runner started as a plain child process (no sandbox, no engine),
    with ``source`` loaded; ``invoke()`` is one INVOKE on a kept connection."""

    def __init__(self, base: Path, source: str) -> None:
        from easyfaas import wire
        from easyfaas_runtime_python import PythonRuntime

        self.wire = wire
        runtime = PythonRuntime()
        runner_dir = base / "bare-runner"
        runner_dir.mkdir()
        for name, src in runtime.runner_files().items():
            shutil.copyfile(src, runner_dir / name)
        code = base / "bare-code"
        code.mkdir()
        (code / "handler.py").write_text(source)
        self.sock_path = str(base / "bare.sock")
        self.proc = subprocess.Popen(runtime.runner_command(str(runner_dir), self.sock_path),
                                     env={"PATH": "/usr/bin:/bin"}, cwd=str(base))  # fmt: skip
        load = {"code_dir": str(code), "handler": "handler.handler", "function": "bare", "version": "1",
                "memory_mb": 128, "env": {}}  # fmt: skip
        with self._connect() as s:
            wire.send_frame(s, wire.Kind.LOAD, 0, load)
            kind, _, meta, _ = wire.recv_frame(s)
            if kind != wire.Kind.LOADED:
                raise RuntimeError(f"bare runner LOAD failed: {meta}")
        self.sock = self._connect()
        self.rid = 0

    def _connect(self) -> socket.socket:
        """A connection to the runner, once it listens (the socket file appears at bind, before listen)."""
        deadline = time.monotonic() + 10
        while True:
            sock = socket.socket(socket.AF_UNIX)
            try:
                sock.connect(self.sock_path)
                return sock
            except (FileNotFoundError, ConnectionRefusedError):
                sock.close()
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the bare runner did not start listening") from None
                time.sleep(0.005)

    def invoke(self) -> tuple[float, float]:
        """One call: (client round trip ms, the RESULT frame's ``ms``)."""
        self.rid += 1
        meta = {"rid": f"b{self.rid}", "deadline": (time.time() + 30) * 1000, "log_cap": 1 << 20}
        t0 = time.perf_counter_ns()
        self.wire.send_frame(self.sock, self.wire.Kind.INVOKE, self.rid, meta, b"{}")
        kind, _, got, _ = self.wire.recv_frame(self.sock)
        took = (time.perf_counter_ns() - t0) / 1e6
        if kind != self.wire.Kind.RESULT:
            raise RuntimeError(f"bare runner call failed: {got}")
        return took, float(got.get("ms", float("nan")))

    def close(self) -> None:
        self.sock.close()
        self.proc.kill()
        self.proc.wait()


# --------------------------------------------------------------------------------------------
# overhead per call


def overhead(eng: Any, bare: BareRunner, n: int, blocks: int = 5) -> dict[str, Any]:
    http = RawHttp.for_url(eng.http_url)
    api = RawHttp.for_url(eng.endpoint)
    api_headers = {"Content-Type": "application/json", **eng.auth_headers}
    client: dict[str, dict[str, float]] = {"http": {}, "api": {}}
    bare_rtt: list[float] = []
    handler_ms: list[float] = []

    def via(path: str) -> None:
        t0 = time.perf_counter_ns()
        if path == "http":
            status, headers, body = http.request("GET", "/function/noop")
        else:
            status, headers, body = api.request("POST", "/v1/functions/noop/invoke", b"{}", api_headers)
        took = (time.perf_counter_ns() - t0) / 1e6
        if status != 200:
            raise RuntimeError(f"{path}: HTTP {status}: {body[:300]!r}")
        client[path][headers["x-easyfaas-request-id"]] = took

    def direct() -> None:
        rtt, ms = bare.invoke()
        bare_rtt.append(rtt)
        handler_ms.append(ms)

    steps = {"http": lambda: via("http"), "api": lambda: via("api"), "bare": direct}
    try:
        for step in steps.values():  # warm: connections open, code paths hot
            for _ in range(50):
                step()
        client = {"http": {}, "api": {}}
        bare_rtt.clear()
        handler_ms.clear()
        records: dict[str, dict[str, Any]] = {}
        seen = max((r["seq"] for r in eng.client.activations("noop", limit=1)), default=0)
        order = list(steps)
        for b in range(blocks):
            for key in order if b % 2 == 0 else reversed(order):
                for _ in range(n // blocks):
                    steps[key]()
            # The API returns at most 1,000 records, the newest first: collect them per block.
            rows = eng.client.activations("noop", limit=1000, since=seen)
            records.update((r["id"], r) for r in rows)
            seen = max((r["seq"] for r in rows), default=seen)
    finally:
        http.close()
        api.close()
    handler_p50 = summary(handler_ms)["p50"]
    bare_p50 = summary(bare_rtt)["p50"]
    out: dict[str, Any] = {
        "n": n,
        "handler_ms_in_runner": summary(handler_ms),
        "bare_runner_round_trip_ms": summary(bare_rtt),
        "handler_source": "RESULT frame meta `ms` of the bare runner (the engine does not record it)",
    }
    for path, calls in client.items():
        recs = [(ms, records[rid]) for rid, ms in calls.items() if rid in records]
        duration = [r["duration_ms"] for _, r in recs]
        out[path] = {
            "client_ms": summary(list(calls.values())),
            "matched_records": len(recs),
            "duration_ms": summary(duration),
            "wait_ms": summary([r["wait_ms"] for _, r in recs]),
            "outside_invoke_ms": summary([ms - r["duration_ms"] for ms, r in recs]),
            "duration_minus_handler_ms": summary([d - handler_p50 for d in duration]),
            "duration_minus_bare_round_trip_ms": summary([d - bare_p50 for d in duration]),
            "client_minus_handler_ms": summary([ms - handler_p50 for ms in calls.values()]),
        }
        c50 = out[path]["client_ms"].get("p50")
        out[path]["client_vs_bare_round_trip"] = round(c50 / bare_p50, 2) if c50 and bare_p50 else None
    return out


# --------------------------------------------------------------------------------------------
# burst


async def _burst(url: str, m: int) -> dict[str, Any]:
    import aiohttp

    results: list[tuple[int, float, float]] = []  # (status, latency ms, end time)
    gate = asyncio.Event()

    async def one(session: aiohttp.ClientSession) -> None:
        await gate.wait()
        t0 = time.perf_counter()
        try:
            async with session.get(url) as r:
                await r.read()
                status = r.status
        except aiohttp.ClientError:
            status = -1
        t1 = time.perf_counter()
        results.append((status, (t1 - t0) * 1000, t1))

    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        tasks = [asyncio.create_task(one(session)) for _ in range(m)]
        await asyncio.sleep(0.05)  # every task waiting at the gate
        start = time.perf_counter()
        gate.set()
        await asyncio.gather(*tasks)
    elapsed = max(t for _, _, t in results) - start
    statuses = Counter(s for s, _, _ in results)
    ok = [ms for s, ms, _ in results if s == 200]
    throttled = [ms for s, ms, _ in results if s == 429]
    last_ok = max((t for s, _, t in results if s == 200), default=start) - start
    return {
        "calls": m, "seconds": round(elapsed, 3), "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "accepted": len(ok), "throttled": len(throttled),
        "server_errors": sum(v for k, v in statuses.items() if k >= 500), "client_errors": statuses.get(-1, 0),
        "accepted_per_s": round(len(ok) / last_ok, 1) if last_ok > 0 else None,
        "throttled_per_s": round(len(throttled) / elapsed, 1) if elapsed > 0 else None,
        "accepted_ms": summary(ok), "throttled_ms": summary(throttled),
    }  # fmt: skip


def burst(eng: Any, m: int) -> dict[str, Any]:
    from concurrent.futures import ThreadPoolExecutor

    url = f"{eng.http_url}/function/sleeper"
    with ThreadPoolExecutor(BURST_CONCURRENCY) as ex:  # the N instances started and warm
        statuses = list(ex.map(lambda _: eng.call("sleeper", method="GET").status_code, range(BURST_CONCURRENCY)))
    if any(s != 200 for s in statuses):
        raise RuntimeError(f"sleeper warm-up: {statuses}")
    capacity = BURST_CONCURRENCY / BURST_SLEEP_S
    out = asyncio.run(_burst(url, m))
    out.update({"concurrency": BURST_CONCURRENCY, "sleep_ms": BURST_SLEEP_S * 1000, "queue_size": QUEUE_SIZE,
                "max_queue_wait_s": 10.0, "capacity_per_s": capacity,
                "accepted_rate_vs_capacity": round(out["accepted_per_s"] / capacity, 3) if out["accepted_per_s"] else None,
                "instances_after": sum(1 for i in eng.client.instances() if i["function"] == "sleeper")})  # fmt: skip
    return out


def run_sandbox(sandbox: str, quick: bool) -> dict[str, Any]:
    from easyfaas.testing import write_function

    n = 100 if quick else 1000
    m = 60 if quick else 400
    tmp = scratch("efbench-sched-")
    out: dict[str, Any] = {}
    with engine(sandbox, pool=2, controller={"queue_size": QUEUE_SIZE}) as eng:
        eng.deploy(write_function(tmp / "noop", NOOP, runtime="python"), "noop")
        eng.deploy(write_function(tmp / "sleeper", SLEEP.format(seconds=BURST_SLEEP_S), runtime="python",
                                  concurrency=BURST_CONCURRENCY), "sleeper")  # fmt: skip
        bare = BareRunner(tmp, NOOP)
        try:
            log(f"scheduling {sandbox}: {n} sequential no-op calls each via HTTP trigger, API, bare runner")
            out["overhead"] = overhead(eng, bare, n)
        finally:
            bare.close()
        log(f"scheduling {sandbox}: burst of {m} parallel calls, concurrency {BURST_CONCURRENCY}")
        out["burst"] = burst(eng, m)
    return out


def main() -> None:
    args = parser(__doc__ or "").parse_args()
    run, skipped = sandboxes(args.sandbox)
    result: dict[str, Any] = {"suite": "scheduling", "skipped": skipped, "sandboxes": {}}
    for sandbox in run:
        try:
            result["sandboxes"][sandbox] = run_sandbox(sandbox, args.quick)
        except Exception as exc:  # noqa: BLE001 - report and keep the other sandbox's figures
            log(f"scheduling {sandbox} failed: {exc!r}")
            result["sandboxes"][sandbox] = {"error": repr(exc)[-2000:]}
    result["machine"] = machine()
    emit(result, args.json)


if __name__ == "__main__":
    main()
