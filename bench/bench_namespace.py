"""The namespace sandbox driver alone: cold start, creation, pool refill and idle memory.

Usage: ``sudo .venv/bin/python bench/bench_namespace.py [--quick] [-n 60] [--json out.json]``.
"""

# Drives NamespaceSandbox directly, as the funclet does, with the real Python runtime, and times
# ``python -I -S -c pass`` (the runtime's own interpreter) in the same run for ratios:
# * cold start: against a warm pool, a fresh function each time, warmup + LOAD + first INVOKE
#   (sequential, n >= 30; p50/p95/max), with the three steps broken down;
# * sandbox creation (sequential), and the pool refill rate (4 creates in flight);
# * idle memory: USS/PSS/RSS of the runner and of its init after one call and a gc pass, beside an
#   idle ``python -I -S``; and the summed PSS of all idle instances plus the zygote.
# Figures only: the targets (cold p50 <= 5 ms, idle runner <= 2 MiB USS) are printed beside them.

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import emit, log, machine, summary

from easyfaas import wire
from easyfaas.models import WarmupSpec
from easyfaas_runtime_python import PythonRuntime
from easyfaas_sandbox_namespace import NamespaceSandbox

HANDLER = """\
import gc

def handler(event, context):
    if event == "gc":
        gc.collect()
    return {"hello": event}
"""
MiB = 1 << 20


async def ask(path: str, kind: int, meta: dict[str, Any], body: bytes = b"") -> tuple[int, dict[str, Any], bytes]:
    """One request on a fresh connection, as the funclet (LOAD) and the controller (INVOKE) open them."""
    reader, writer = await asyncio.open_unix_connection(path)
    try:
        writer.write(wire.encode(kind, 1, meta, body))
        await writer.drain()
        _, meta_len, body_len, got = wire.decode_header(await reader.readexactly(wire.HEADER.size))
        return got, wire.decode_meta(await reader.readexactly(meta_len)), await reader.readexactly(body_len)
    finally:
        writer.close()


def write_function(base: Path, i: int) -> str:
    code = base / f"fn{i}"
    code.mkdir()
    (code / "handler.py").write_text(HANDLER)
    os.chmod(code, 0o755)
    os.chmod(code / "handler.py", 0o644)
    return str(code)


def python_pass(interpreter: str, n: int) -> dict[str, float]:
    times = []
    for _ in range(n + 3):
        t0 = time.perf_counter()
        subprocess.run([interpreter, "-I", "-S", "-c", "pass"], check=True)
        times.append((time.perf_counter() - t0) * 1000)
    return summary(times[3:])


def python_idle_memory(interpreter: str) -> dict[str, float]:
    import psutil

    proc = subprocess.Popen([interpreter, "-I", "-S", "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(1.0)
        info = psutil.Process(proc.pid).memory_full_info()
        return {"uss_mib": info.uss / MiB, "pss_mib": info.pss / MiB, "rss_mib": info.rss / MiB}
    finally:
        proc.kill()
        proc.wait()


def memory_of(pid: int) -> dict[str, float]:
    import psutil

    info = psutil.Process(pid).memory_full_info()
    return {"uss_mib": info.uss / MiB, "pss_mib": info.pss / MiB, "rss_mib": info.rss / MiB}


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    import psutil

    runtime = PythonRuntime()
    base = Path(tempfile.mkdtemp(prefix="efbench-ns-", dir="/tmp"))
    driver = NamespaceSandbox(state_dir=base / "state")
    result: dict[str, Any] = {"machine": machine(), "n": args.n}
    try:
        log("baseline: python -I -S -c pass")
        result["python_pass_ms"] = python_pass(runtime.interpreter, args.n)
        result["python_idle"] = python_idle_memory(runtime.interpreter)

        t0 = time.perf_counter()
        await driver.start({"python": runtime})
        result["driver_start_ms"] = (time.perf_counter() - t0) * 1000

        log(f"creating a pool of {args.n} sandboxes, one at a time")
        pool, create_ms = [], []
        for _ in range(args.n):
            t0 = time.perf_counter()
            pool.append(await driver.create(runtime))
            create_ms.append((time.perf_counter() - t0) * 1000)
        result["create_ms"] = summary(create_ms)

        log("cold starts: warmup + LOAD + first INVOKE of a fresh function")
        cold, warm_ms, load_ms, invoke_ms = [], [], [], []
        for i, info in enumerate(pool):
            code_dir = write_function(base, i)
            t0 = time.perf_counter()
            code = await driver.warmup(info.id, WarmupSpec(f"fn{i}:1", code_dir, 128, 30.0))
            t1 = time.perf_counter()
            load = {"code_dir": code, "handler": "handler.handler", "function": f"fn{i}", "version": "1",
                    "memory_mb": 128, "env": {}}  # fmt: skip
            kind, meta, _ = await ask(info.socket_path, wire.Kind.LOAD, load)
            t2 = time.perf_counter()
            kind2, meta2, body = await ask(info.socket_path, wire.Kind.INVOKE, {"rid": f"r{i}", "deadline": 0}, b'"x"')
            t3 = time.perf_counter()
            if kind != wire.Kind.LOADED or kind2 != wire.Kind.RESULT or json.loads(body) != {"hello": "x"}:
                raise RuntimeError(f"cold start {i} failed: {meta} {meta2} {body[:200]!r}")
            cold.append((t3 - t0) * 1000)
            warm_ms.append((t1 - t0) * 1000)
            load_ms.append((t2 - t1) * 1000)
            invoke_ms.append((t3 - t2) * 1000)
        result["cold_ms"] = summary(cold)
        result["cold_steps_p50_ms"] = {
            "warmup": statistics.median(warm_ms),
            "load": statistics.median(load_ms),
            "first_invoke": statistics.median(invoke_ms),
        }

        log(f"idle memory of the {len(pool)} instances after one call and a gc pass")
        for info in pool:
            await ask(info.socket_path, wire.Kind.INVOKE, {"rid": "gc", "deadline": 0}, b'"gc"')
        await asyncio.sleep(1.0)
        runners = [memory_of(info.pid) for info in pool]
        inits = [memory_of(psutil.Process(info.pid).ppid()) for info in pool]
        zygote = next(p for p in psutil.Process().children() if any("_zygote.py" in part for part in p.cmdline()))
        result["idle_runner"] = {k: statistics.median(m[k] for m in runners) for k in runners[0]}
        result["idle_init"] = {k: statistics.median(m[k] for m in inits) for k in inits[0]}
        result["zygote"] = memory_of(zygote.pid)
        total_pss = sum(m["pss_mib"] for m in runners + inits) + result["zygote"]["pss_mib"]
        result["summed_pss_mib"] = total_pss
        result["pss_per_instance_mib"] = total_pss / len(pool)

        destroy_ms = []
        for info in pool:
            t0 = time.perf_counter()
            await driver.destroy(info.id)
            destroy_ms.append((time.perf_counter() - t0) * 1000)
        result["destroy_ms"] = summary(destroy_ms)

        log(f"pool refill: {args.refill} creates, 4 in flight")
        sem = asyncio.Semaphore(4)

        async def one() -> str:
            async with sem:
                return (await driver.create(runtime)).id

        t0 = time.perf_counter()
        ids = await asyncio.gather(*(one() for _ in range(args.refill)))
        elapsed = time.perf_counter() - t0
        result["refill_per_s"] = args.refill / elapsed
        result["refill_sequential_per_s"] = 1000 / statistics.fmean(create_ms)
        await asyncio.gather(*(driver.destroy(i) for i in ids))
    finally:
        await driver.stop()
        shutil.rmtree(base, ignore_errors=True)
    return result


def table(r: dict[str, Any]) -> str:
    base = r["python_pass_ms"]["p50"]
    idle = r["python_idle"]["uss_mib"]

    def row(name: str, s: dict[str, float], note: str = "") -> str:
        return (f"{name:<34}{s['p50']:>9.2f}{s['p95']:>9.2f}{s['max']:>9.2f}{s['p50'] / base:>9.2f}x  {note}")  # fmt: skip

    lines = [
        f"namespace sandbox — n={r['n']}, {r['machine']['nproc']} CPUs, kernel {r['machine']['kernel']}",
        f"{'':<34}{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}{'vs pass':>10}",
        row("python -I -S -c pass", r["python_pass_ms"]),
        row("cold start (warmup+LOAD+INVOKE)", r["cold_ms"], "target p50 <= 5 ms"),
        row("sandbox creation (sequential)", r["create_ms"]),
        row("destroy", r["destroy_ms"]),
        "cold start steps, p50 ms: " + ", ".join(f"{k} {v:.2f}" for k, v in r["cold_steps_p50_ms"].items()),
        f"driver start (zygote up): {r['driver_start_ms']:.1f} ms",
        f"pool refill: {r['refill_per_s']:.0f} sandboxes/s with 4 in flight, "
        f"{r['refill_sequential_per_s']:.0f}/s one at a time",
        f"{'memory (MiB)':<34}{'USS':>9}{'PSS':>9}{'RSS':>9}{'USS vs':>10}",
    ]
    for name, key in (("idle python -I -S", "python_idle"), ("idle runner (after call + gc)", "idle_runner"),
                      ("its init (pid 1 reaper)", "idle_init"), ("zygote", "zygote")):  # fmt: skip
        m = r[key]
        lines.append(
            f"{name:<34}{m['uss_mib']:>9.2f}{m['pss_mib']:>9.2f}{m['rss_mib']:>9.2f}{m['uss_mib'] / idle:>9.2f}x"
        )
    lines.append(
        f"{r['n']} idle instances + zygote: {r['summed_pss_mib']:.0f} MiB summed PSS "
        f"({r['pss_per_instance_mib']:.2f} MiB per instance, init included)"
    )
    lines.append("target: idle runner <= 2 MiB USS")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=60, help="cold starts and sequential creates (default 60)")
    p.add_argument("--refill", type=int, default=60, help="sandboxes created for the refill rate")
    p.add_argument("--quick", action="store_true", help="smoke run: n=30, refill 20")
    p.add_argument("--json", type=Path, help="write the figures here as JSON")
    args = p.parse_args()
    if args.quick:
        args.n, args.refill = 30, 20
    args.n = max(args.n, 30)
    reason = NamespaceSandbox.availability()
    if reason is not None:
        emit({"skipped": reason}, args.json)
        return
    result = asyncio.run(measure(args))
    if args.json:
        emit(result, args.json)
    print(table(result))


if __name__ == "__main__":
    main()
