"""``FuncletClient``: the controller's typed view of the funclet's gRPC service.

It owns the channel; callers pass and receive engine dataclasses, never protobuf messages.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import grpc

from easyfaas.errors import FuncletUnavailableError, LoadError, SandboxError
from easyfaas.models import FunctionVersion, SandboxEvent, SandboxInfo, SandboxStats
from easyfaas.v1 import funclet_pb2 as pb
from easyfaas.v1 import funclet_pb2_grpc as pb_grpc

__all__ = ["FuncletClient", "WarmUp", "map_grpc_errors"]

#: Status codes after which the same call may succeed if repeated (the funclet restarting).
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


@dataclass(frozen=True)
class WarmUp:
    sandbox: SandboxInfo
    init_ms: float
    bind_ms: float
    from_pool: bool
    logs: str


@contextlib.contextmanager
def map_grpc_errors(what: str) -> Iterator[None]:
    """Re-raise ``grpc.RpcError`` as engine errors; retryable ones as ``FuncletUnavailableError``."""
    try:
        yield
    except grpc.RpcError as exc:
        code = exc.code() if hasattr(exc, "code") else None
        details = exc.details() if hasattr(exc, "details") else str(exc)
        if code == grpc.StatusCode.FAILED_PRECONDITION:
            try:
                payload = json.loads(details or "{}")
            except ValueError:
                payload = {"message": details}
            raise LoadError(payload.get("message", details), details=payload.get("details") or {}) from exc
        if code in RETRYABLE:
            raise FuncletUnavailableError(f"funclet unavailable during {what}: {details}") from exc
        raise SandboxError(f"{what} failed: {details}") from exc


def _sandbox(msg: pb.Sandbox) -> SandboxInfo:
    return SandboxInfo(
        id=msg.id, runtime=msg.runtime, socket_path=msg.socket_path, pid=msg.pid,
        state=msg.state, function_key=msg.function_key,
    )  # fmt: skip


class FuncletClient:
    """Talks to one funclet over its unix socket; reconnects by itself when it restarts."""

    def __init__(self, socket_path: str) -> None:
        self.target = f"unix:{socket_path}"
        self._channel = grpc.aio.insecure_channel(
            self.target, options=[("grpc.initial_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 1000)]
        )
        self._stub = pb_grpc.FuncletStub(self._channel)  # type: ignore[no-untyped-call]

    async def close(self) -> None:
        await self._channel.close()

    async def health(self, *, timeout: float = 5.0, wait: bool = True) -> dict[str, Any]:
        with map_grpc_errors("health check"):
            reply = await self._stub.Health(pb.HealthRequest(), timeout=timeout, wait_for_ready=wait)
        return {
            "node": reply.node, "sandbox": reply.sandbox, "runtimes": list(reply.runtimes), "pid": reply.pid,
            "pool_ready": dict(reply.pool_ready), "isolation": reply.isolation,
        }  # fmt: skip

    async def warm_up(self, fv: FunctionVersion, *, request_id: str = "", timeout: float = 90.0) -> WarmUp:
        spec = fv.spec
        request = pb.WarmUpRequest(
            runtime=spec.runtime, function=spec.name, version=fv.version, code_dir=fv.code_dir,
            handler=spec.handler, memory_mb=spec.memory, timeout_s=spec.timeout, env=spec.env,
            request_id=request_id,
        )  # fmt: skip
        with map_grpc_errors(f"warm-up of {fv.key}"):
            reply = await self._stub.WarmUp(request, timeout=timeout, wait_for_ready=True)
        return WarmUp(_sandbox(reply.sandbox), reply.init_ms, reply.bind_ms, reply.from_pool, reply.logs)

    async def destroy(self, sandbox_id: str, *, timeout: float = 30.0) -> None:
        with map_grpc_errors(f"destroy of {sandbox_id}"):
            await self._stub.Destroy(pb.SandboxRef(id=sandbox_id), timeout=timeout)

    async def list(self, *, timeout: float = 10.0) -> list[SandboxInfo]:
        with map_grpc_errors("list"):
            reply = await self._stub.List(pb.ListRequest(), timeout=timeout)
        return [_sandbox(s) for s in reply.sandboxes]

    async def stats(self, sandbox_id: str, *, timeout: float = 10.0) -> SandboxStats:
        with map_grpc_errors(f"stats of {sandbox_id}"):
            s = await self._stub.Stats(pb.SandboxRef(id=sandbox_id), timeout=timeout)
        return SandboxStats(s.id, s.memory_rss, s.memory_uss, s.memory_peak, s.cpu_seconds, s.pids)

    async def watch_events(self) -> AsyncIterator[SandboxEvent]:
        """Events until the stream breaks (``FuncletUnavailableError``), e.g. when the funclet restarts."""
        with map_grpc_errors("event stream"):
            call = self._stub.WatchEvents(pb.WatchEventsRequest(), wait_for_ready=True)
            async for e in call:
                yield SandboxEvent(
                    sandbox_id=e.sandbox_id, kind=e.kind, exit_code=e.exit_code if e.has_exit_code else None,
                    signal=e.signal or None, message=e.message,
                )  # fmt: skip
        raise FuncletUnavailableError("the funclet closed its event stream")
