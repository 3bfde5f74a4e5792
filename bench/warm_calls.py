"""Suite 1, warm calls: the HTTP trigger to a warm Python hello, beside the bare hop baseline.

For each sandbox: an engine with examples/hello deployed as shipped (concurrency 10,
instance_concurrency 1) and a second copy shaped like the baseline (one instance,
instance_concurrency 64: one multiplexed connection to one worker). The baseline
(bench/baseline_hop.py) runs at the same time and is measured right before the engine at
each connection count, so every ratio compares two figures taken a few seconds apart.

* ``wrk -t2 -cN -d8s --latency`` at N = 1, 16, 64 (c1 runs with -t1: wrk needs c >= t):
  Requests/sec, 50 %, 99 %; CPU µs per request of the serving processes at c64.
* 1,000 sequential warm calls with a raw keep-alive socket client (and with httpx): p50/p99.

With ``--sandbox docker`` (bench/run's lean variant): c1 and the sequential calls only, pool of 2.

    python bench/warm_calls.py [--quick] [--sandbox process] [--json out.json]
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    BENCH,
    HELLO,
    PY,
    TICK,
    RawHttp,
    cpu_ticks,
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


class Server:
    """bench/baseline_hop.py in the background; ``pids`` are the front and its worker."""

    def __init__(self, *args: str) -> None:
        from easyfaas.testing import free_port

        self.port = free_port()
        self.proc = subprocess.Popen([PY, str(BENCH / "baseline_hop.py"), "--port", str(self.port), *args],
                                     stdout=subprocess.PIPE, text=True)  # fmt: skip
        self.url = f"http://127.0.0.1:{self.port}"
        self.pids = [self.proc.pid]
        if "--bare" not in args:
            line = self.proc.stdout.readline() if self.proc.stdout else ""
            if line.startswith("worker "):
                self.pids.append(int(line.split()[1]))
        import httpx

        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(self.url + "/function/hello", timeout=1)
                break
            except httpx.HTTPError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("baseline server did not start") from None
                time.sleep(0.05)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def measured_wrk(url: str, conns: int, duration: int, groups: dict[str, list[int]]) -> dict[str, Any]:
    """wrk, plus the CPU the serving processes used: µs per request per group and in total."""
    before = {name: cpu_ticks(pids) for name, pids in groups.items()}
    res = wrk(url, conns, duration)
    used = {name: (cpu_ticks(pids) - before[name]) / TICK for name, pids in groups.items()}
    if res.get("requests"):
        total = sum(used.values())
        res["cpu_us_per_req"] = round(total * 1e6 / res["requests"], 1)
        res["cpu_vcpu"] = round(total / duration, 2)
        res["cpu_us_per_req_by"] = {name: round(u * 1e6 / res["requests"], 1) for name, u in used.items()}
    return res


def alternating_sequential(targets: dict[str, tuple[str, str]], path: str, n: int, blocks: int = 5) -> dict[str, Any]:
    """``n`` sequential keep-alive calls per target, in blocks that alternate between targets
    (so load from other work on the machine hits all of them alike); p50/p99 per target.
    A target is (base URL, "raw" for the raw socket client or "httpx")."""
    import httpx

    clients: dict[str, Any] = {}
    for key, (url, kind) in targets.items():
        clients[key] = RawHttp.for_url(url) if kind == "raw" else httpx.Client(base_url=url, timeout=30)

    def one(key: str) -> float:
        client = clients[key]
        t0 = time.perf_counter_ns()
        status = client.request("GET", path)[0] if isinstance(client, RawHttp) else client.get(path).status_code
        took = (time.perf_counter_ns() - t0) / 1e6
        if status != 200:
            raise RuntimeError(f"{key}: HTTP {status}")
        return took

    samples: dict[str, list[float]] = {key: [] for key in targets}
    try:
        for key in targets:
            for _ in range(50):
                one(key)
        keys = list(targets)
        for b in range(blocks):
            for key in keys if b % 2 == 0 else reversed(keys):
                samples[key] += [one(key) for _ in range(n // blocks)]
    finally:
        for client in clients.values():
            client.close()
    return {key: summary(values) for key, values in samples.items()}


def instance_pids(eng: Any) -> list[int]:
    return [int(i["pid"]) for i in eng.client.instances() if i.get("pid")]


def run_sandbox(sandbox: str, quick: bool, base: Server) -> dict[str, Any]:
    duration = 1 if quick else 8
    # docker: c1 and the sequential calls only (bench/run's 10-minute budget); the hop from the
    # controller to a runner in a container is the same unix socket as in the other sandboxes.
    docker = sandbox == "docker"
    conns = [1] if docker else [64] if quick else [1, 16, 64]
    seq_n = 50 if quick else 1000
    out: dict[str, Any] = {}
    if docker:
        out["note"] = "c1 and sequential calls only (no c16/c64, no hello-mux): bench/run's time budget"
    with engine(sandbox, pool=2 if docker else 8) as eng:
        tmp = scratch("efbench-warm-")
        eng.deploy(HELLO, "hello")
        if not docker:
            eng.deploy(hello_dir(tmp / "mux", concurrency=1, instance_concurrency=64), "hello-mux")
        engine_url = f"{eng.http_url}/function/hello"
        mux_url = f"{eng.http_url}/function/hello-mux"
        base_url = f"{base.url}/function/hello"
        for url in (engine_url, base_url) if docker else (engine_url, mux_url, base_url):
            if docker:  # warm: one instance started, the connection open
                wrk(url, 1, 1)
            elif not quick:  # warm: instances started, connections open (1 s is ~5,000 calls)
                wrk(url, 64, 1)
        roles = eng.children()

        def groups() -> dict[str, list[int]]:
            return {
                "controller": [roles["controller"]],
                "funclet": [roles.get("funclet", 0)],
                "instances": instance_pids(eng),
            }

        base_groups = {"front": base.pids[:1], "worker": base.pids[1:]}
        for c in conns:
            log(f"warm {sandbox} c{c}: baseline")
            b = measured_wrk(base_url, c, duration, base_groups)
            log(f"warm {sandbox} c{c}: engine")
            e = measured_wrk(engine_url, c, duration, groups())
            row: dict[str, Any] = {
                "baseline": b,
                "engine": e,
                "rps_ratio": round(e["rps"] / b["rps"], 3) if b["rps"] else None,
            }
            if c == 64:
                log(f"warm {sandbox} c{c}: engine, baseline-shaped function")
                m = measured_wrk(mux_url, c, duration, groups())
                row["engine_mux"] = m
                row["mux_rps_ratio"] = round(m["rps"] / b["rps"], 3) if b["rps"] else None
            out[f"c{c}"] = row
        log(f"warm {sandbox}: {seq_n} sequential calls, engine and baseline in alternating blocks")
        out["sequential"] = alternating_sequential(
            {"engine_raw": (eng.http_url, "raw"), "baseline_raw": (base.url, "raw"),
             "engine_httpx": (eng.http_url, "httpx"), "baseline_httpx": (base.url, "httpx")},
            "/function/hello", seq_n,
        )  # fmt: skip
        out["instances_after"] = len(eng.client.instances())
    return out


def main() -> None:
    args = parser(__doc__ or "").parse_args()
    run, skipped = sandboxes(args.sandbox)
    result: dict[str, Any] = {"suite": "warm_calls", "skipped": skipped, "sandboxes": {}}
    base = Server()
    try:
        if not args.quick:
            bare = Server("--bare")
            try:
                log("warm: bare aiohttp+uvloop (no hop) c64, for reference")
                wrk(bare.url + "/", 64, 3)
                result["bare_c64"] = measured_wrk(bare.url + "/", 64, 10, {"server": bare.pids})
            finally:
                bare.stop()
        for sandbox in run:
            try:
                result["sandboxes"][sandbox] = run_sandbox(sandbox, args.quick, base)
            except Exception as exc:  # noqa: BLE001 - report and keep the other sandbox's figures
                log(f"warm {sandbox} failed: {exc!r}")
                result["sandboxes"][sandbox] = {"error": repr(exc)[-2000:]}
    finally:
        base.stop()
    result["machine"] = machine()
    emit(result, args.json)


if __name__ == "__main__":
    main()
