"""Suite 2, cold starts: the first call of fresh functions against a warm generic pool.

All functions (copies of examples/hello under new names, so each first call starts a new
instance) are deployed first: each deploy does a trial load of the handler in a sandbox,
which drains the pool. Then, for each function in turn, wait until the funclet's pool is full
again (``pool_ready`` in ``/v1/health``; the wait is reported as the refill time), and time
the first call at the client:

* through the HTTP trigger (raw keep-alive client), n >= 30; the controller's own figures come
  from the activation records: ``wait_ms`` (acquire = warm-up gRPC + connect) and ``init_ms``
  (the runner's handler import);
* through the management API ``POST /v1/functions/{name}/invoke``, which returns
  ``X-Easyfaas-Init-Ms`` on cold calls, n >= 30.

With ``--sandbox docker`` (bench/run's lean variant) only the HTTP-trigger path is measured:
a container takes ~0.5 s to create, and the pool is refilled before every cold call.

Beside it, in the same run: interpreter start-up with hyperfine (``python3 -c pass`` as found
on PATH, and the runner's interpreter with and without ``-I -S``).

    python bench/cold_starts.py [--quick] [--sandbox process] [--json out.json]
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
    RawHttp,
    deploy_many,
    emit,
    engine,
    hello_dir,
    log,
    machine,
    parser,
    pool_ready,
    sandboxes,
    scratch,
    summary,
    wait_pool,
)  # fmt: skip

POOL = 8


def interpreter_startup(quick: bool) -> dict[str, Any]:
    """hyperfine over interpreter start-up commands; min/median/max ms per command."""
    from easyfaas_runtime_python.runtime import _real_executable

    runner_py = _real_executable()
    commands: dict[str, str] = {}
    path_py3 = shutil.which("python3")
    if path_py3:
        commands[f"python3 -c pass  (python3 on PATH = {path_py3})"] = f"{path_py3} -c pass"
    commands[f"{runner_py} -c pass  (the runner's interpreter)"] = f"{runner_py} -c pass"
    commands[f"{runner_py} -I -S -c pass  (how runners start)"] = f"{runner_py} -I -S -c pass"
    commands[f"{sys.executable} -c pass  (the engine's venv)"] = f"{sys.executable} -c pass"
    if not shutil.which("hyperfine"):
        return {"error": "hyperfine is not installed (apt-get install -y hyperfine)"}
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        export = Path(f.name)
    runs = "3" if quick else "30"
    cmd = ["hyperfine", "-N", "-w", "1" if quick else "3", "-r", runs, "--export-json", str(export), *commands.values()]
    try:
        subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True)
        data = json.loads(export.read_text())
    finally:
        export.unlink(missing_ok=True)
    out = {}
    for label, res in zip(commands, data["results"], strict=True):
        times = [t * 1000 for t in res["times"]]
        out[label] = {**summary(times), "median": round(res["median"] * 1000, 3)}
    return {"cmd": " ".join(cmd[:7]) + " ...", "results": out}


def activation(eng: Any, name: str) -> dict[str, Any]:
    rows = eng.client.activations(name, limit=1)
    return rows[0] if rows else {}


def run_sandbox(sandbox: str, quick: bool) -> dict[str, Any]:
    n = 3 if quick else 30
    # docker: a container takes ~0.5 s to create, so every cold call waits that long for the pool to
    # refill; only the HTTP-trigger path is measured (bench/run's 10-minute budget).
    n_api = 0 if sandbox == "docker" else n
    pool = 2 if quick and sandbox == "docker" else POOL  # the smoke run: fewer containers to create
    out: dict[str, Any] = {"n": n, "n_api": n_api, "pool": pool}
    if sandbox == "docker":
        out["note"] = "HTTP-trigger path only (no management-API path, no whole-pool refill): bench/run's time budget"
    with engine(sandbox, pool=pool) as eng:
        tmp = scratch("efbench-cold-")
        fdir = hello_dir(tmp / "hello")
        http_names = [f"cold-http-{i}" for i in range(n)]
        api_names = [f"cold-api-{i}" for i in range(n_api)]
        log(f"cold {sandbox}: deploying {2 * n} functions")
        out["deploy_s"] = round(deploy_many(eng, fdir, http_names + api_names), 2)
        out["pool_full_after_deploys_s"] = round(wait_pool(eng, pool, timeout=60), 3)

        client = RawHttp.for_url(eng.http_url)
        client.request("GET", "/function/nonexistent")  # open the connection
        totals, refills, statuses = [], [], []
        log(f"cold {sandbox}: {n} cold calls through the HTTP trigger")
        for name in http_names:
            refills.append(wait_pool(eng, pool, timeout=20) * 1000)
            time.sleep(0.02)
            t0 = time.perf_counter_ns()
            status, _, _ = client.request("GET", f"/function/{name}")
            totals.append((time.perf_counter_ns() - t0) / 1e6)
            statuses.append(status)
        client.close()
        time.sleep(0.3)
        acts = [activation(eng, name) for name in http_names]
        out["http"] = {
            "client_ms": summary(totals),
            "controller_acquire_ms": summary([a["wait_ms"] for a in acts if a.get("wait_ms") is not None]),
            "runner_init_ms": summary([a["init_ms"] for a in acts if a.get("init_ms") is not None]),
            "controller_duration_ms": summary([a["duration_ms"] for a in acts if a.get("duration_ms") is not None]),
            "non_200": sum(1 for s in statuses if s != 200),
        }
        out["refill_wait_ms"] = summary(refills)

        api = RawHttp.for_url(eng.endpoint)
        api_totals, init_hdr = [], []
        if n_api:
            log(f"cold {sandbox}: {n_api} cold calls through the management API")
        for name in api_names:
            wait_pool(eng, pool, timeout=20)
            time.sleep(0.02)
            t0 = time.perf_counter_ns()
            status, headers, _ = api.request("POST", f"/v1/functions/{name}/invoke", b"{}",
                                             {"Content-Type": "application/json", **eng.auth_headers})  # fmt: skip
            api_totals.append((time.perf_counter_ns() - t0) / 1e6)
            if "x-easyfaas-init-ms" in headers:
                init_hdr.append(float(headers["x-easyfaas-init-ms"]))
        api.close()
        out["api"] = {"client_ms": summary(api_totals), "x_easyfaas_init_ms": summary(init_hdr)}

        if quick or sandbox == "docker":
            return out
        # Refill, measured alone: drain the whole pool with cold starts, then time until it is full again.
        names = [f"cold-refill-{i}" for i in range(pool)]
        deploy_many(eng, fdir, names)
        wait_pool(eng, pool, timeout=60)
        t0 = time.perf_counter()
        for name in names:
            eng.call(name, method="GET")
        drained = pool_ready(eng)
        wait_pool(eng, pool, timeout=60, poll=0.01)
        out["refill_of_whole_pool"] = {"sandboxes": pool, "ready_after_drain": drained,
                                       "seconds_from_first_call": round(time.perf_counter() - t0, 3)}  # fmt: skip
    return out


def main() -> None:
    args = parser(__doc__ or "").parse_args()
    run, skipped = sandboxes(args.sandbox)
    result: dict[str, Any] = {"suite": "cold_starts", "skipped": skipped, "sandboxes": {}}
    log("cold: interpreter start-up (hyperfine)")
    try:
        result["interpreters"] = interpreter_startup(args.quick)
    except Exception as exc:  # noqa: BLE001
        result["interpreters"] = {"error": repr(exc)}
    for sandbox in run:
        try:
            result["sandboxes"][sandbox] = run_sandbox(sandbox, args.quick)
        except Exception as exc:  # noqa: BLE001 - report and keep the other sandbox's figures
            log(f"cold {sandbox} failed: {exc!r}")
            result["sandboxes"][sandbox] = {"error": repr(exc)[-2000:]}
    result["machine"] = machine()
    emit(result, args.json)


if __name__ == "__main__":
    main()
