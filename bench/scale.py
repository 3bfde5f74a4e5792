"""Suite 4, scale: does a loaded node slow calls to one function?

Two engines run side by side with the same sandbox: an *empty* one (only the target
function, examples/hello) and a *loaded* one (the target plus 999 other functions deployed,
200 of them with a warm instance; controller keep_alive 600 s). Calls to the target go to
both in alternating blocks, 1,000 sequential keep-alive calls each, so machine drift hits
both alike. Reported: p50/p99 of each and loaded/empty (target: within 10 %), and a short
``wrk -c64`` throughput of each.

    python bench/scale.py [--quick] [--sandbox process] [--json out.json]
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    HELLO,
    RawHttp,
    deploy_many,
    emit,
    engine,
    hello_dir,
    log,
    machine,
    parser,
    sandboxes,
    scratch,
    summary,
    wrk,
)  # fmt: skip


def timed_calls(client: RawHttp, path: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        status, _, _ = client.request("GET", path)
        out.append((time.perf_counter_ns() - t0) / 1e6)
        if status != 200:
            raise RuntimeError(f"{path}: HTTP {status}")
    return out


def run_sandbox(sandbox: str, quick: bool) -> dict[str, Any]:
    functions = 15 if quick else 1000
    warm = 5 if quick else 200
    calls = 100 if quick else 1000
    blocks = 5
    out: dict[str, Any] = {"functions": functions, "warm_instances_wanted": warm}
    with ExitStack() as stack:
        # Start both engines at once (each start mostly waits for processes to come up).
        managers = [engine(sandbox, pool=8, keep_alive="600s") for _ in range(2)]
        with ThreadPoolExecutor(2) as ex:
            futures = [ex.submit(m.__enter__) for m in managers]
        for m, f in zip(managers, futures, strict=True):
            if f.exception() is None:
                stack.push(m.__exit__)
        empty, loaded = (f.result() for f in futures)
        for eng in (empty, loaded):
            eng.deploy(HELLO, "hello")
        tmp = scratch("efbench-scale-")
        others = [f"scale-{i}" for i in range(functions - 1)]
        log(f"scale {sandbox}: deploying {len(others)} functions to the loaded engine")
        out["deploy_s"] = round(deploy_many(loaded, hello_dir(tmp / "hello", concurrency=1), others), 2)
        log(f"scale {sandbox}: warming {warm} instances")
        t0 = time.perf_counter()
        client = RawHttp.for_url(loaded.http_url)
        for name in others[:warm]:
            status, _, body = client.request("GET", f"/function/{name}")
            if status != 200:
                raise RuntimeError(f"{name}: HTTP {status}: {body[:200]!r}")
        client.close()
        out["warm_s"] = round(time.perf_counter() - t0, 2)
        clients = {"empty": RawHttp.for_url(empty.http_url), "loaded": RawHttp.for_url(loaded.http_url)}
        samples: dict[str, list[float]] = {"empty": [], "loaded": []}
        for c in clients.values():
            timed_calls(c, "/function/hello", 50)  # warm-up
        log(f"scale {sandbox}: {calls} sequential calls to each, alternating blocks")
        for b in range(blocks):
            order = ("empty", "loaded") if b % 2 == 0 else ("loaded", "empty")
            for which in order:
                samples[which] += timed_calls(clients[which], "/function/hello", calls // blocks)
        for c in clients.values():
            c.close()
        out["loaded_instances"] = len(loaded.client.instances())
        out["loaded_functions"] = len(loaded.client.list())
        out["empty_instances"] = len(empty.client.instances())
        out["empty"] = summary(samples["empty"])
        out["loaded"] = summary(samples["loaded"])
        out["p50_ratio"] = round(out["loaded"]["p50"] / out["empty"]["p50"], 3)
        out["p99_ratio"] = round(out["loaded"]["p99"] / out["empty"]["p99"], 3)
        if not quick:
            log(f"scale {sandbox}: wrk c64 on each")
            out["wrk_empty"] = wrk(f"{empty.http_url}/function/hello", 64, 5)
            out["wrk_loaded"] = wrk(f"{loaded.http_url}/function/hello", 64, 5)
            out["rps_ratio"] = round(out["wrk_loaded"]["rps"] / out["wrk_empty"]["rps"], 3)
    return out


def main() -> None:
    args = parser(__doc__ or "").parse_args()
    run, skipped = sandboxes(args.sandbox)
    result: dict[str, Any] = {"suite": "scale", "skipped": skipped, "sandboxes": {}}
    for sandbox in run:
        try:
            result["sandboxes"][sandbox] = run_sandbox(sandbox, args.quick)
        except Exception as exc:  # noqa: BLE001 - report and keep the other sandbox's figures
            log(f"scale {sandbox} failed: {exc!r}")
            result["sandboxes"][sandbox] = {"error": repr(exc)[-2000:]}
    result["machine"] = machine()
    emit(result, args.json)


if __name__ == "__main__":
    main()
