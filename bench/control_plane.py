"""Suite 5, control plane: funclet gRPC round trips, and deploy time.

Against a running engine's funclet (``FuncletClient`` on the socket the profile names):

* ``Health`` round trip (an empty unary gRPC call), beside a bare grpc.aio echo server over a
  unix socket measured in the same run (a second process, generic handler, 64 B payload);
* ``WarmUp`` round trip: bind a pooled sandbox to a small function and load its handler
  (the control-plane half of a cold start), waiting for the pool to refill between calls;
  the funclet's own ``bind_ms`` and the runner's ``init_ms`` beside it; then ``Destroy``;
* deploy of a small function, client-side (``RunningEngine.deploy``: pack, upload, unpack,
  trial load, store), with the pool refilled between deploys.

    python bench/control_plane.py [--quick] [--sandbox process] [--json out.json]
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import HELLO, PY, emit, engine, hello_dir, log, machine, parser, sandboxes, scratch, summary, wait_pool

POOL = 8


# -- bare grpc.aio echo baseline -----------------------------------------------------------------


def _identity(x: bytes) -> bytes:
    return x


async def echo_server(socket_path: str) -> None:
    import grpc

    async def call(request: bytes, context: Any) -> bytes:
        return request

    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        "Echo",
        {
            "Call": grpc.unary_unary_rpc_method_handler(
                call, request_deserializer=_identity, response_serializer=_identity
            )
        },
    )
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"unix:{socket_path}")
    await server.start()
    await server.wait_for_termination()


async def echo_rtt(socket_path: str, n: int) -> dict[str, Any]:
    import grpc

    async with grpc.aio.insecure_channel(f"unix:{socket_path}") as channel:
        call = channel.unary_unary("/Echo/Call", request_serializer=_identity, response_deserializer=_identity)
        payload = b"x" * 64
        for _ in range(max(20, n // 10)):
            await call(payload, wait_for_ready=True)
        times = []
        for _ in range(n):
            t0 = time.perf_counter_ns()
            await call(payload)
            times.append((time.perf_counter_ns() - t0) / 1e6)
    return summary(times)


def grpc_baseline(n: int) -> dict[str, Any]:
    tmp = tempfile.mkdtemp(prefix="efbench-grpc-")
    sock = os.path.join(tmp, "echo.sock")
    proc = subprocess.Popen([PY, __file__, "--echo-server", sock])
    try:
        deadline = time.monotonic() + 20
        while not os.path.exists(sock):
            if proc.poll() is not None or time.monotonic() > deadline:
                return {"error": "echo server did not start"}
            time.sleep(0.02)
        return asyncio.run(echo_rtt(sock, n))
    finally:
        proc.terminate()
        proc.wait(10)
        for name in os.listdir(tmp):
            os.unlink(os.path.join(tmp, name))
        os.rmdir(tmp)


# -- against the engine's funclet ----------------------------------------------------------------


async def funclet_round_trips(socket_path: str, code_dir: str, n_health: int, n_warm: int) -> dict[str, Any]:
    from easyfaas.controller.funclet_client import FuncletClient
    from easyfaas.models import FunctionSpec, FunctionVersion

    client = FuncletClient(socket_path)
    try:
        for _ in range(20):
            await client.health()
        times = []
        for _ in range(n_health):
            t0 = time.perf_counter_ns()
            await client.health()
            times.append((time.perf_counter_ns() - t0) / 1e6)
        out: dict[str, Any] = {"health_ms": summary(times)}

        spec = FunctionSpec.model_validate({"name": "cp-probe", "runtime": "python", "handler": "handler.handler"})
        fv = FunctionVersion(spec=spec, version="bench", code_dir=code_dir, code_sha256="", created_at=time.time())
        rtt, bind, init, destroy, refill, from_pool = [], [], [], [], [], 0
        for _ in range(n_warm):
            t0 = time.perf_counter()
            while (await client.health())["pool_ready"].get("python", 0) < POOL and time.perf_counter() - t0 < 20:
                await asyncio.sleep(0.02)
            refill.append((time.perf_counter() - t0) * 1000)
            await asyncio.sleep(0.02)
            t0n = time.perf_counter_ns()
            warm = await client.warm_up(fv)
            rtt.append((time.perf_counter_ns() - t0n) / 1e6)
            bind.append(warm.bind_ms)
            init.append(warm.init_ms)
            from_pool += bool(warm.from_pool)
            t0n = time.perf_counter_ns()
            await client.destroy(warm.sandbox.id)
            destroy.append((time.perf_counter_ns() - t0n) / 1e6)
        out["warm_up_ms"] = summary(rtt)
        out["warm_up_bind_ms"] = summary(bind)
        out["warm_up_runner_init_ms"] = summary(init)
        out["warm_up_from_pool"] = f"{from_pool}/{n_warm}"
        out["destroy_ms"] = summary(destroy)
        out["refill_wait_ms"] = summary(refill)
        return out
    finally:
        await client.close()


def run_sandbox(sandbox: str, quick: bool) -> dict[str, Any]:
    from easyfaas.profile import load_profile

    n_health = 100 if quick else 1000
    n_warm = 5 if quick else 30
    n_deploy = 5 if quick else 30
    with engine(sandbox, pool=POOL) as eng:
        socket_path = str(load_profile(eng.profile_path).funclet_socket)
        # Code the sandbox user can read (the namespace sandbox runs functions as an unprivileged uid).
        code = hello_dir(Path(eng.data_dir) / "data" / "bench-code")
        for p in (code.parent, code, *code.iterdir()):
            p.chmod(0o755)
        wait_pool(eng, POOL, timeout=60)
        log(f"control {sandbox}: funclet Health x{n_health}, WarmUp x{n_warm}")
        out = asyncio.run(funclet_round_trips(socket_path, str(code), n_health, n_warm))
        out["funclet_socket"] = socket_path

        log(f"control {sandbox}: {n_deploy} deploys")
        tmp = scratch("efbench-cp-")
        fdir = hello_dir(tmp / "hello")
        eng.deploy(HELLO, "cp-warmup")
        times = []
        for i in range(n_deploy):
            wait_pool(eng, POOL, timeout=20)
            time.sleep(0.02)
            t0 = time.perf_counter_ns()
            eng.deploy(fdir, f"cp-{i}")
            times.append((time.perf_counter_ns() - t0) / 1e6)
        out["deploy_ms"] = summary(times)
        redeploy = []
        for _ in range(max(3, n_deploy // 3)):
            wait_pool(eng, POOL, timeout=20)
            t0 = time.perf_counter_ns()
            eng.deploy(fdir, "cp-0")
            redeploy.append((time.perf_counter_ns() - t0) / 1e6)
        out["redeploy_same_name_ms"] = summary(redeploy)
    return out


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--echo-server", help=argparse_suppress())
    args = p.parse_args()
    if args.echo_server:
        asyncio.run(echo_server(args.echo_server))
        return
    run, skipped = sandboxes(args.sandbox)
    result: dict[str, Any] = {"suite": "control_plane", "skipped": skipped, "sandboxes": {}}
    log("control: bare grpc.aio echo baseline")
    result["grpc_echo_baseline_ms"] = grpc_baseline(100 if args.quick else 1000)
    for sandbox in run:
        try:
            result["sandboxes"][sandbox] = run_sandbox(sandbox, args.quick)
        except Exception as exc:  # noqa: BLE001 - report and keep the other sandbox's figures
            log(f"control {sandbox} failed: {exc!r}")
            result["sandboxes"][sandbox] = {"error": repr(exc)[-2000:]}
    result["machine"] = machine()
    emit(result, args.json)


def argparse_suppress() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
