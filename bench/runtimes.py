"""Suite 7 (RESULTS.md §7), runtimes: cold start and warm calls of each runtime's example, in one engine per sandbox.

One engine per sandbox with every runtime enabled (``runtimes: [python, node, exec, http, lambda]``)
and a generic pool of 2 sandboxes per runtime. Per runtime, copies of ``examples/<runtime>-hello``
(``examples/hello`` for python) are deployed under new names, then:

* **cold**: for each copy in turn, wait until that runtime's pool is full again, then its first
  call through the management API ``POST /v1/functions/{name}/invoke``: the client's time and the
  runner's ``init_ms`` (the ``X-Easyfaas-Init-Ms`` header: handler import for python and node,
  nothing to load for exec, server listening for http, bootstrap asking for its first event for
  lambda); from the call's activation record, the acquire (``wait_ms``: warm-up incl. init) and
  the first call after it (``duration_ms − wait_ms``);
* **warm**: N sequential keep-alive calls through the HTTP trigger to one warm copy per runtime,
  the runtimes alternating in blocks (load from other work hits all of them alike): p50/p99.

Same-run baselines: every runtime's figures divided by the python runtime's in the same engine,
and hyperfine of what each runtime starts (``python -I -S -c pass``, ``node -e 0``, the exec
example's ``handler.sh``, the http example's imports, ``bash`` + ``curl``) for reference.

    python bench/runtimes.py [--quick] [--sandbox process] [--json out.json]
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    ROOT,
    RawHttp,
    deploy_many,
    emit,
    engine,
    log,
    machine,
    parser,
    sandboxes,
    summary,
    wait_pool,
)  # fmt: skip

RUNTIMES = ["python", "node", "exec", "http", "lambda"]
EXAMPLES = {rt: ROOT / "examples" / ("hello" if rt == "python" else f"{rt}-hello") for rt in RUNTIMES}
POOL = 2
#: The PATH runners get: ``#!/usr/bin/env python3`` in a function resolves through it.
SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"


def missing_tools() -> dict[str, str]:
    """Runtimes whose example cannot run here, and why."""
    out = {}
    if not shutil.which("node"):
        out["node"] = "no node binary (apt-get install nodejs)"
    if not shutil.which("curl", path=SANDBOX_PATH) or not shutil.which("bash", path=SANDBOX_PATH):
        out["lambda"] = "examples/lambda-hello needs bash and curl"
    if not shutil.which("python3", path=SANDBOX_PATH):
        out["http"] = f"examples/http-hello needs python3 in {SANDBOX_PATH}"
    return out


def startup_reference(quick: bool) -> dict[str, Any]:
    """hyperfine of what each runtime starts, outside any engine: min/median/max ms."""
    from easyfaas_runtime_python.runtime import _real_executable

    if not shutil.which("hyperfine"):
        return {"error": "hyperfine is not installed (apt-get install -y hyperfine)"}
    py = _real_executable()

    def which(tool: str) -> str:  # as the runners find it: their clean PATH, not this shell's (pyenv shims)
        return shutil.which(tool, path=SANDBOX_PATH) or tool

    commands = {
        "python": (f"{py} -I -S -c pass", "the python runner's interpreter, as runners start"),
        "node": (f"{which('node')} -e 0", "node, empty script"),
        "exec": (
            f"/bin/sh {EXAMPLES['exec'] / 'handler.sh'}",
            "examples/exec-hello/handler.sh once (what every call runs)",
        ),
        "http": (
            f"{which('python3')} -c 'import http.server, json, urllib.parse'",
            "python3 with the http example's imports",
        ),
        "lambda": (
            f"{which('bash')} -c 'curl --version >/dev/null'",
            "bash + one curl (the bootstrap runs curl twice per call)",
        ),
    }
    runnable = {k: v for k, v in commands.items() if k not in missing_tools()}
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        export = Path(f.name)
    cmd = ["hyperfine", "-N", "-w", "0" if quick else "3", "-r", "2" if quick else "10", "--export-json", str(export)]
    try:
        subprocess.run(
            [*cmd, *(c for c, _ in runnable.values())], capture_output=True, text=True, timeout=120, check=True
        )
        data = json.loads(export.read_text())
    except (subprocess.SubprocessError, OSError, ValueError) as exc:
        return {"error": repr(exc)[-500:]}
    finally:
        export.unlink(missing_ok=True)
    out = {}
    for (rt, (command, label)), res in zip(runnable.items(), data["results"], strict=True):
        times = [t * 1000 for t in res["times"]]
        out[rt] = {"command": command, "label": label, **summary(times), "median": round(res["median"] * 1000, 3)}
    return out


def cold_calls(eng: Any, runtime: str, names: list[str], pool: int) -> dict[str, Any]:
    """The first call of each name through the management API, the runtime's pool full before each."""
    api = RawHttp.for_url(eng.endpoint)
    client, init, statuses, refill = [], [], [], []
    rids: list[str] = []
    try:
        for name in names:
            refill.append(wait_pool(eng, pool, timeout=20, runtime=runtime) * 1000)
            time.sleep(0.02)
            t0 = time.perf_counter_ns()
            status, headers, body = api.request("POST", f"/v1/functions/{name}/invoke", b'{"name": "bench"}',
                                                {"Content-Type": "application/json", **eng.auth_headers})  # fmt: skip
            client.append((time.perf_counter_ns() - t0) / 1e6)
            statuses.append(status)
            if status != 200 or "x-easyfaas-function-error" in headers:
                raise RuntimeError(f"{name}: HTTP {status}: {body[:300]!r}")
            if "x-easyfaas-init-ms" in headers:
                init.append(float(headers["x-easyfaas-init-ms"]))
            rids.append(headers.get("x-easyfaas-request-id", ""))
    finally:
        api.close()
    time.sleep(0.3)  # activation records are written every 0.25 s
    records = [r for r in (activation(eng, rid) for rid in rids) if r]
    return {"client_ms": summary(client), "init_ms": summary(init), "refill_wait_ms": summary(refill),
            "acquire_ms": summary([r["wait_ms"] for r in records]),
            "first_call_ms": summary([r["duration_ms"] - r["wait_ms"] for r in records]),
            "non_200": sum(1 for s in statuses if s != 200)}  # fmt: skip


def activation(eng: Any, rid: str) -> dict[str, Any] | None:
    import httpx

    if not rid:
        return None
    r = httpx.get(f"{eng.endpoint}/v1/activations/{rid}", headers=eng.auth_headers, timeout=10)
    return r.json() if r.status_code == 200 else None


def warm_calls(eng: Any, targets: dict[str, str], n: int, blocks: int = 5) -> dict[str, Any]:
    """``n`` sequential keep-alive calls through the HTTP trigger per runtime (to the function
    named in ``targets``), the runtimes alternating in blocks; p50/p99 per runtime."""
    clients = {rt: RawHttp.for_url(eng.http_url) for rt in targets}
    samples: dict[str, list[float]] = {rt: [] for rt in targets}

    def one(rt: str) -> float:
        t0 = time.perf_counter_ns()
        status, _, body = clients[rt].request("GET", f"/function/{targets[rt]}?name=bench")
        took = (time.perf_counter_ns() - t0) / 1e6
        if status != 200:
            raise RuntimeError(f"{rt}: HTTP {status}: {body[:300]!r}")
        return took

    try:
        for rt in targets:
            for _ in range(min(20, n)):
                one(rt)
        order = list(targets)
        for b in range(blocks):
            for rt in order if b % 2 == 0 else reversed(order):
                samples[rt] += [one(rt) for _ in range(max(1, n // blocks))]
    finally:
        for c in clients.values():
            c.close()
    return {rt: summary(v) for rt, v in samples.items()}


def run_sandbox(sandbox: str, quick: bool, runtimes: list[str]) -> dict[str, Any]:
    n_cold = 1 if quick else 10
    n_warm = 10 if quick else 100
    pool = 1 if quick else POOL
    out: dict[str, Any] = {"n_cold": n_cold, "n_warm": n_warm, "pool_per_runtime": pool, "runtimes": {}}
    t0 = time.perf_counter()
    with engine(sandbox, pool=dict.fromkeys(runtimes, pool), extra={"runtimes": runtimes}) as eng:
        out["engine_start_s"] = round(time.perf_counter() - t0, 2)
        names = {rt: [f"{rt}-cold-{i}" for i in range(n_cold)] for rt in runtimes}
        for rt in runtimes:
            log(f"runtimes {sandbox}: deploying {n_cold} copies of {EXAMPLES[rt].name} ({rt})")
            t0 = time.perf_counter()
            deploy_many(eng, EXAMPLES[rt], names[rt], threads=2)
            out["runtimes"][rt] = {"deploy_ms_each": round((time.perf_counter() - t0) * 1000 / n_cold, 1)}
        for rt in runtimes:
            log(f"runtimes {sandbox}: {n_cold} cold calls of {rt}")
            out["runtimes"][rt]["cold"] = cold_calls(eng, rt, names[rt], pool)
        log(f"runtimes {sandbox}: {n_warm} warm calls per runtime through the HTTP trigger, alternating")
        warm = warm_calls(eng, {rt: names[rt][0] for rt in runtimes}, n_warm)
        for rt in runtimes:
            out["runtimes"][rt]["warm_ms"] = warm[rt]
        py = out["runtimes"].get("python")
        if py:
            for r in out["runtimes"].values():
                r["vs_python"] = {
                    "init_p50": _ratio(r["cold"]["init_ms"].get("p50"), py["cold"]["init_ms"].get("p50")),
                    "cold_client_p50": _ratio(r["cold"]["client_ms"].get("p50"), py["cold"]["client_ms"].get("p50")),
                    "warm_p50": _ratio(r["warm_ms"].get("p50"), py["warm_ms"].get("p50")),
                    "warm_p99": _ratio(r["warm_ms"].get("p99"), py["warm_ms"].get("p99")),
                }
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def main() -> None:
    args = parser(__doc__ or "").parse_args()
    run, skipped = sandboxes(args.sandbox)
    result: dict[str, Any] = {"suite": "runtimes", "skipped": skipped, "sandboxes": {}}
    missing = missing_tools()
    runtimes = [rt for rt in RUNTIMES if rt not in missing]
    result["runtimes_skipped"] = missing
    log("runtimes: start-up of each runtime's program (hyperfine)")
    result["startup_reference"] = startup_reference(args.quick)
    for sandbox in run:
        try:
            result["sandboxes"][sandbox] = run_sandbox(sandbox, args.quick, runtimes)
        except Exception as exc:  # noqa: BLE001 - report and keep the other sandbox's figures
            log(f"runtimes {sandbox} failed: {exc!r}")
            result["sandboxes"][sandbox] = {"error": repr(exc)[-2000:]}
    result["machine"] = machine()
    emit(result, args.json)


if __name__ == "__main__":
    main()
