"""The funclet process: a grpc.aio server on a unix socket in front of the sandbox manager.

Run as ``python -m easyfaas.funclet --profile FILE``; ``easyfaas up`` starts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import AsyncIterator
from typing import Any

import grpc

from easyfaas.errors import EasyFaaSError, LoadError
from easyfaas.funclet.manager import SandboxManager
from easyfaas.interfaces import Runtime
from easyfaas.models import SandboxInfo, WarmupSpec
from easyfaas.plugin.manager import Plugins
from easyfaas.profile import Profile
from easyfaas.v1 import funclet_pb2 as pb
from easyfaas.v1 import funclet_pb2_grpc as pb_grpc

__all__ = ["FuncletServicer", "build_manager", "choose_sandbox", "run_funclet"]

log = logging.getLogger(__name__)

PROCESS_WARNING = (
    "the 'process' sandbox gives functions NO isolation: they run as plain processes with the "
    "engine's privileges. Use it for development only"
)


def _sandbox_pb(info: SandboxInfo) -> pb.Sandbox:
    return pb.Sandbox(
        id=info.id, runtime=info.runtime, socket_path=info.socket_path, pid=info.pid,
        state=info.state, function_key=info.function_key,
    )  # fmt: skip


class FuncletServicer(pb_grpc.FuncletServicer):
    """Delegates each RPC to the sandbox manager; engine errors become gRPC status codes."""

    def __init__(self, manager: SandboxManager, node: str, sandbox: str) -> None:
        self.manager = manager
        self.node = node
        self.sandbox = sandbox

    async def Health(self, request: pb.HealthRequest, context: grpc.aio.ServicerContext[Any, Any]) -> pb.HealthReply:
        return pb.HealthReply(
            node=self.node, sandbox=self.sandbox, runtimes=sorted(self.manager.runtimes), pid=os.getpid(),
            pool_ready=self.manager.pool_ready(), isolation=self.manager.driver.ISOLATION,
        )  # fmt: skip

    async def CreateSandbox(self, request: pb.CreateSandboxRequest, context: grpc.aio.ServicerContext[Any, Any]) -> pb.Sandbox:
        async with _status(context):
            return _sandbox_pb(await self.manager.create(request.runtime))
        raise AssertionError("unreachable")  # pragma: no cover

    async def WarmUp(self, request: pb.WarmUpRequest, context: grpc.aio.ServicerContext[Any, Any]) -> pb.WarmUpReply:
        spec = WarmupSpec(
            function_key=f"{request.function}:{request.version}",
            code_dir=request.code_dir,
            memory_mb=request.memory_mb or 128,
            timeout_s=request.timeout_s or 30.0,
            pids_max=request.pids_max or 64,
            cpu_share=request.cpu_share or 1.0,
            env=dict(request.env),
        )
        async with _status(context):
            result = await self.manager.warm_up(
                request.runtime, spec, handler=request.handler, function=request.function, version=request.version
            )
            return pb.WarmUpReply(
                sandbox=_sandbox_pb(result.sandbox), init_ms=result.init_ms, bind_ms=result.bind_ms,
                from_pool=result.from_pool, logs=result.logs,
            )  # fmt: skip
        raise AssertionError("unreachable")  # pragma: no cover

    async def Reset(self, request: pb.SandboxRef, context: grpc.aio.ServicerContext[Any, Any]) -> pb.Sandbox:
        async with _status(context):
            return _sandbox_pb(await self.manager.reset(request.id))
        raise AssertionError("unreachable")  # pragma: no cover

    async def Destroy(self, request: pb.SandboxRef, context: grpc.aio.ServicerContext[Any, Any]) -> pb.DestroyReply:
        async with _status(context):
            await self.manager.destroy(request.id)
        return pb.DestroyReply()

    async def List(self, request: pb.ListRequest, context: grpc.aio.ServicerContext[Any, Any]) -> pb.ListReply:
        return pb.ListReply(sandboxes=[_sandbox_pb(info) for info in self.manager.sandboxes.values()])

    async def Stats(self, request: pb.SandboxRef, context: grpc.aio.ServicerContext[Any, Any]) -> pb.SandboxStats:
        async with _status(context):
            s = await self.manager.stats(request.id)
            return pb.SandboxStats(
                id=s.id, memory_rss=s.memory_rss, memory_uss=s.memory_uss, memory_peak=s.memory_peak,
                cpu_seconds=s.cpu_seconds, pids=s.pids,
            )  # fmt: skip
        raise AssertionError("unreachable")  # pragma: no cover

    async def WatchEvents(
        self, request: pb.WatchEventsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.InstanceEvent]:
        async for event in self.manager.watch():
            yield pb.InstanceEvent(
                sandbox_id=event.sandbox_id, kind=event.kind, exit_code=event.exit_code or 0,
                signal=event.signal or 0, message=event.message, has_exit_code=event.exit_code is not None,
            )  # fmt: skip


@contextlib.asynccontextmanager
async def _status(context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[None]:
    """Turn engine errors into gRPC statuses the client maps back (see ``map_grpc_errors``)."""
    try:
        yield
    except LoadError as exc:
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, _encode_error(exc))
    except EasyFaaSError as exc:
        await context.abort(grpc.StatusCode.INTERNAL, str(exc))
    except Exception as exc:
        log.exception("funclet request failed")
        await context.abort(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")


def _encode_error(exc: LoadError) -> str:
    import json

    return json.dumps({"message": exc.message, "details": exc.details})


def choose_sandbox(plugins: Plugins, name: str) -> str:
    """Resolve ``auto``: the namespace driver when it can work here, else the process driver."""
    if name != "auto":
        return name
    installed = {info.name for info in plugins.discover(["sandboxes"]) if info.error is None}
    if "namespace" in installed:
        plugins.load({"sandboxes": ["namespace"]})
        reason = plugins.get("sandboxes", "namespace").availability()
        if reason is None:
            return "namespace"
        log.warning("the namespace sandbox cannot work here (%s); falling back to 'process'", reason)
    return "process"


def build_manager(profile: Profile, plugins: Plugins) -> tuple[SandboxManager, str]:
    sandbox_name, options = profile.sandbox
    sandbox_name = choose_sandbox(plugins, sandbox_name)
    runtimes_opts = profile.runtimes
    plugins.load({"sandboxes": [sandbox_name], "runtimes": list(runtimes_opts)})
    runtimes: dict[str, Runtime] = {}
    for name, opts in runtimes_opts.items():
        profile.check_plugin_options(("runtimes", name), plugins.get("runtimes", name), opts)
        runtimes[name] = plugins.create_runtime(name, **opts)
    driver_cls = plugins.get("sandboxes", sandbox_name)
    profile.check_plugin_options(("funclet", "sandbox", sandbox_name), driver_cls, options)
    state_dir = profile.data_dir / "sandboxes" / sandbox_name
    state_dir.mkdir(parents=True, exist_ok=True)
    driver = plugins.create_sandbox(sandbox_name, state_dir=state_dir, **options)
    if sandbox_name == "process":
        log.warning(PROCESS_WARNING)
    pool = {name: size for name, size in profile.model.funclet.pool.items() if name in runtimes}
    return SandboxManager(driver, runtimes, pool), sandbox_name


async def run_funclet(profile: Profile, *, ready: asyncio.Event | None = None) -> None:
    """Serve until SIGTERM/SIGINT, then destroy every sandbox and remove the socket."""
    plugins = Plugins()
    manager, sandbox_name = build_manager(profile, plugins)
    socket_path = profile.funclet_socket
    socket_path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        socket_path.unlink()

    await manager.start()
    server = grpc.aio.server()
    servicer = FuncletServicer(manager, profile.model.node.name, sandbox_name)
    pb_grpc.add_FuncletServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    server.add_insecure_port(f"unix:{socket_path}")
    await server.start()
    os.chmod(socket_path, 0o600)
    log.info("funclet serving on %s with the %r sandbox", socket_path, sandbox_name)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        await server.stop(grace=2.0)
        await manager.stop()
        with contextlib.suppress(FileNotFoundError):
            socket_path.unlink()
        log.info("funclet stopped")
