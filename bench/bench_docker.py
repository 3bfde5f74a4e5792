"""The docker sandbox driver alone: cold start, container creation, warm calls and idle memory.

Drives ``DockerSandbox`` directly, as the funclet does, with the real Python runtime, and measures
``python3 -I -S -c pass`` (the runtime's own interpreter) in the same run, for ratios:

* cold start: against a warm pool, a fresh function each time: warmup + LOAD + first INVOKE
  (sequential, n >= 30 of each kind; p50/p95/max), with the three steps broken down, for
  functions whose limits equal the generic container's (no update) and for others (one Engine
  API update of memory, pids and CPU);
* container creation (sequential ``create()``: API create + start + runner listening), pool refill
  rate with 4 in flight, and destroy;
* warm call round trip: sequential INVOKEs on one kept connection, beside the same runner started
  as a plain process (no container) to show what the container adds on the hot path;
* idle instance memory: USS/PSS/RSS of the runner, of docker-init (pid 1) and of the container's
  containerd shim after one call and a gc pass, the cgroup's usage, beside an idle ``python -I -S``.

    sudo python bench/bench_docker.py [--quick] [-n 60] [--json out.json]

Needs a running dockerd (``dockerd --iptables=false --bridge=none``). Reports figures, never judges.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from easyfaas import wire
from easyfaas.models import SandboxInfo, WarmupSpec
from easyfaas.sockets import connect_unix
from easyfaas_runtime_python import PythonRuntime
from easyfaas_sandbox_docker import DockerSandbox

HANDLER = """\
import gc

def handler(event, context):
    if event == "gc":
        gc.collect()
    return {"hello": event}
"""
MiB = 1 << 20


def log(*args: Any) -> None:
    print(f"[{time.strftime('%H:%M:%S')}]", *args, file=sys.stderr, flush=True)


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[max(0, min(len(s) - 1, round(p / 100 * len(s) + 0.5) - 1))]


def summary(values_ms: list[float]) -> dict[str, float]:
    return {
        "n": len(values_ms),
        "min": round(min(values_ms), 3),
        "p50": round(pct(values_ms, 50), 3),
        "p95": round(pct(values_ms, 95), 3),
        "p99": round(pct(values_ms, 99), 3),
        "max": round(max(values_ms), 3),
        "mean": round(statistics.fmean(values_ms), 3),
    }


async def open_conn(path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_unix_connection(sock=await connect_unix(path))


async def exchange(
    conn: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    kind: int,
    rid: int,
    meta: dict[str, Any],
    body: bytes = b"",
) -> tuple[int, dict[str, Any], bytes]:
    reader, writer = conn
    writer.write(wire.encode(kind, rid, meta, body))
    await writer.drain()
    _, meta_len, body_len, got = wire.decode_header(await reader.readexactly(wire.HEADER.size))
    return got, wire.decode_meta(await reader.readexactly(meta_len)), await reader.readexactly(body_len)


async def ask(path: str, kind: int, meta: dict[str, Any], body: bytes = b"") -> tuple[int, dict[str, Any], bytes]:
    """One request on a fresh connection, as the funclet (LOAD) and the controller (first INVOKE) open them."""
    conn = await open_conn(path)
    try:
        return await exchange(conn, kind, 1, meta, body)
    finally:
        conn[1].close()


def write_function(base: Path, i: int) -> str:
    code = base / f"fn{i}"
    code.mkdir()
    (code / "handler.py").write_text(HANDLER)
    os.chmod(code, 0o755)
    os.chmod(code / "handler.py", 0o644)
    return str(code)


def load_meta(code: str, name: str) -> dict[str, Any]:
    return {
        "code_dir": code,
        "handler": "handler.handler",
        "function": name,
        "version": "1",
        "memory_mb": 128,
        "env": {},
    }


def python_pass(interpreter: str, n: int) -> dict[str, float]:
    times = []
    for _ in range(n + 3):
        t0 = time.perf_counter()
        subprocess.run([interpreter, "-I", "-S", "-c", "pass"], check=True)
        times.append((time.perf_counter() - t0) * 1000)
    return summary(times[3:])


def memory_of(pid: int) -> dict[str, float]:
    import psutil

    info = psutil.Process(pid).memory_full_info()
    return {"uss_mib": info.uss / MiB, "pss_mib": info.pss / MiB, "rss_mib": info.rss / MiB}


def python_idle_memory(interpreter: str) -> dict[str, float]:
    proc = subprocess.Popen([interpreter, "-I", "-S", "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(1.0)
        return memory_of(proc.pid)
    finally:
        proc.kill()
        proc.wait()


async def warm_round_trips(path: str, calls: int) -> dict[str, float]:
    conn = await open_conn(path)
    times = []
    try:
        for rid in range(1, calls + 51):
            t0 = time.perf_counter()
            kind, meta, _ = await exchange(conn, wire.Kind.INVOKE, rid, {"rid": f"w{rid}", "deadline": 0}, b'"x"')
            if kind != wire.Kind.RESULT:
                raise RuntimeError(f"warm call failed: {meta}")
            times.append((time.perf_counter() - t0) * 1000)
    finally:
        conn[1].close()
    return summary(times[50:])


async def bare_runner(runtime: PythonRuntime, base: Path, calls: int) -> tuple[dict[str, float], dict[str, float]]:
    """The same runner as a plain child process, no container: the hot path's floor and its idle memory."""
    runner_dir = base / "bare-runner"
    runner_dir.mkdir()
    for name, source in runtime.runner_files().items():
        shutil.copyfile(source, runner_dir / name)
    sock = str(base / "bare.sock")
    proc = subprocess.Popen(runtime.runner_command(str(runner_dir), sock), env={"PATH": "/usr/bin:/bin"})
    try:
        for _ in range(1000):
            if os.path.exists(sock):
                break
            await asyncio.sleep(0.005)
        kind, meta, _ = await ask(sock, wire.Kind.LOAD, load_meta(write_function(base, 10_000), "bare"))
        if kind != wire.Kind.LOADED:
            raise RuntimeError(f"bare runner LOAD failed: {meta}")
        times = await warm_round_trips(sock, calls)
        await ask(sock, wire.Kind.INVOKE, {"rid": "gc", "deadline": 0}, b'"gc"')
        await asyncio.sleep(1.0)
        return times, memory_of(proc.pid)
    finally:
        proc.kill()
        proc.wait()


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    import psutil

    runtime = PythonRuntime()
    base = Path(tempfile.mkdtemp(prefix="efbench-docker-", dir="/tmp"))
    driver = DockerSandbox(state_dir=base / "state")
    result: dict[str, Any] = {
        "machine": {"nproc": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version()},
        "n": args.n,
    }
    try:
        log("baseline: python -I -S -c pass")
        result["python_pass_ms"] = python_pass(runtime.interpreter, args.n)
        result["python_idle"] = python_idle_memory(runtime.interpreter)

        t0 = time.perf_counter()
        await driver.start({"python": runtime})
        result["driver_start_ms"] = (time.perf_counter() - t0) * 1000

        log(f"creating a pool of {2 * args.n} containers, one at a time")
        pool: list[SandboxInfo] = []
        create_ms = []
        for _ in range(2 * args.n):
            t0 = time.perf_counter()
            pool.append(await driver.create(runtime))
            create_ms.append((time.perf_counter() - t0) * 1000)
        result["create_ms"] = summary(create_ms)
        result["python_pass_ms_after"] = python_pass(runtime.interpreter, 10)  # drift check, same run

        log("cold starts: warmup + LOAD + first INVOKE of a fresh function, pool warm")
        log(
            "  first n with the generic limits (128 MB, 64 pids, 1 CPU: no update), then n with others (96 MB, 32 pids)"
        )
        cold, warm_ms, load_ms, invoke_ms, destroy_ms = [], [], [], [], []
        kept: list[SandboxInfo] = []
        for i, info in enumerate(pool):
            code_dir = write_function(base, i)
            spec = (
                WarmupSpec(f"fn{i}:1", code_dir, 128, 30.0)
                if i < args.n
                else WarmupSpec(f"fn{i}:1", code_dir, 96, 30.0, pids_max=32, cpu_share=1.0)
            )
            t0 = time.perf_counter()
            code = await driver.warmup(info.id, spec)
            t1 = time.perf_counter()
            kind, meta, _ = await ask(info.socket_path, wire.Kind.LOAD, load_meta(code, f"fn{i}"))
            t2 = time.perf_counter()
            kind2, meta2, body = await ask(info.socket_path, wire.Kind.INVOKE, {"rid": f"r{i}", "deadline": 0}, b'"x"')
            t3 = time.perf_counter()
            if kind != wire.Kind.LOADED or kind2 != wire.Kind.RESULT or json.loads(body) != {"hello": "x"}:
                raise RuntimeError(f"cold start {i} failed: {meta} {meta2} {body[:200]!r}")
            cold.append((t3 - t0) * 1000)
            warm_ms.append((t1 - t0) * 1000)
            load_ms.append((t2 - t1) * 1000)
            invoke_ms.append((t3 - t2) * 1000)
            if len(kept) < 5 and i >= args.n:
                kept.append(info)  # measured for warm calls and idle memory below
            else:
                t0 = time.perf_counter()
                await driver.destroy(info.id)
                destroy_ms.append((time.perf_counter() - t0) * 1000)
        n = args.n
        result["cold_generic_limits_ms"] = summary(cold[:n])
        result["cold_ms"] = summary(cold[n:])
        for key, part in (("cold_generic_steps_p50_ms", slice(None, n)), ("cold_steps_p50_ms", slice(n, None))):
            result[key] = {
                "warmup": statistics.median(warm_ms[part]),
                "load": statistics.median(load_ms[part]),
                "first_invoke": statistics.median(invoke_ms[part]),
            }
        result["destroy_ms"] = summary(destroy_ms)

        log(f"warm calls: {args.calls} sequential INVOKEs on one connection, container vs bare runner")
        result["warm_ms"] = await warm_round_trips(kept[0].socket_path, args.calls)
        result["warm_bare_ms"], result["idle_bare_runner"] = await bare_runner(runtime, base, args.calls)

        log("idle memory after one call and a gc pass")
        for info in kept:
            await ask(info.socket_path, wire.Kind.INVOKE, {"rid": "gc", "deadline": 0}, b'"gc"')
        await asyncio.sleep(1.0)
        runners = [memory_of(info.pid) for info in kept]
        inits = [psutil.Process(info.pid).parent() for info in kept]
        shims = [p.parent() for p in inits if p is not None]
        result["idle_runner"] = {k: statistics.median(m[k] for m in runners) for k in runners[0]}
        init_mem = [memory_of(p.pid) for p in inits if p is not None]
        shim_mem = [memory_of(p.pid) for p in shims if p is not None]
        result["idle_init"] = {k: statistics.median(m[k] for m in init_mem) for k in init_mem[0]}
        result["idle_shim"] = {k: statistics.median(m[k] for m in shim_mem) for k in shim_mem[0]}
        result["shim_name"] = shims[0].name() if shims and shims[0] is not None else "?"
        stats = [await driver.stats(info.id) for info in kept]
        result["idle_cgroup_usage_mib"] = statistics.median(s.memory_peak for s in stats) / MiB
        for info in kept:
            await driver.destroy(info.id)

        log(f"pool refill: {args.refill} creates, 4 in flight")
        sem = asyncio.Semaphore(4)

        async def one() -> str:
            async with sem:
                return (await driver.create(runtime)).id

        t0 = time.perf_counter()
        ids = await asyncio.gather(*(one() for _ in range(args.refill)))
        result["refill_per_s"] = args.refill / (time.perf_counter() - t0)
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
        return f"{name:<36}{s['p50']:>9.2f}{s['p95']:>9.2f}{s['max']:>9.2f}{s['p50'] / base:>9.2f}x  {note}"

    lines = [
        f"docker sandbox — n={r['n']}, {r['machine']['nproc']} CPUs, kernel {r['machine']['kernel']}",
        f"{'':<36}{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}{'vs pass':>10}",
        row("python -I -S -c pass", r["python_pass_ms"]),
        row("  (again, after the creates)", r["python_pass_ms_after"]),
        row("cold start, generic limits", r["cold_generic_limits_ms"], "no limits update; target p50 <= 5 ms"),
        row("cold start, function's own limits", r["cold_ms"], "with the Engine API update"),
        row("container creation (sequential)", r["create_ms"]),
        row("destroy", r["destroy_ms"]),
        row("warm call round trip (container)", r["warm_ms"]),
        row("warm call round trip (bare runner)", r["warm_bare_ms"]),
        "cold start steps, p50 ms, generic limits: "
        + ", ".join(f"{k} {v:.2f}" for k, v in r["cold_generic_steps_p50_ms"].items()),
        "cold start steps, p50 ms, own limits:     "
        + ", ".join(f"{k} {v:.2f}" for k, v in r["cold_steps_p50_ms"].items()),
        f"driver start (image check, anchors): {r['driver_start_ms']:.1f} ms",
        f"pool refill: {r['refill_per_s']:.1f} containers/s with 4 in flight, "
        f"{r['refill_sequential_per_s']:.1f}/s one at a time",
        f"{'memory (MiB)':<36}{'USS':>9}{'PSS':>9}{'RSS':>9}{'USS vs':>10}",
    ]
    for name, key in (
        ("idle python -I -S", "python_idle"),
        ("idle runner, no container", "idle_bare_runner"),
        ("idle runner (after call + gc)", "idle_runner"),
        ("its docker-init (pid 1)", "idle_init"),
        (f"its shim ({r['shim_name']})", "idle_shim"),
    ):
        m = r[key]
        lines.append(
            f"{name:<36}{m['uss_mib']:>9.2f}{m['pss_mib']:>9.2f}{m['rss_mib']:>9.2f}{m['uss_mib'] / idle:>9.2f}x"
        )
    lines.append(f"cgroup memory peak of an idle container: {r['idle_cgroup_usage_mib']:.2f} MiB")
    lines.append("target: idle runner <= 2 MiB USS (DESIGN §8; the shim is Docker's per-container cost)")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument(
        "-n", type=int, default=30, help="cold starts of each kind (at least 30; default 30); 2n sequential creates"
    )
    p.add_argument("--refill", type=int, default=20, help="containers created for the refill rate")
    p.add_argument("--calls", type=int, default=2000, help="sequential warm calls")
    p.add_argument("--quick", action="store_true", help="smoke run: refill 8, 300 warm calls")
    p.add_argument("--json", type=Path, help="write the figures here as JSON")
    args = p.parse_args()
    if args.quick:
        args.refill, args.calls = 8, 300
    args.n = max(args.n, 30)
    reason = DockerSandbox.availability()
    if reason is not None:
        text = json.dumps({"skipped": reason})
        if args.json:
            args.json.write_text(text)
        print(text)
        return
    result = asyncio.run(measure(args))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    print(table(result))


if __name__ == "__main__":
    main()
