"""The funclet's sandbox manager: the generic pool per runtime, warm-up, reset, events.

It owns one sandbox driver; every gRPC method of the funclet delegates here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from easyfaas._aiowire import request
from easyfaas.errors import EasyFaaSError, LoadError, SandboxError
from easyfaas.interfaces import Runtime, SandboxDriver
from easyfaas.models import SandboxEvent, SandboxInfo, SandboxStats, WarmupSpec
from easyfaas.wire import FrameError, Kind

__all__ = ["SandboxManager", "WarmUpResult"]

log = logging.getLogger(__name__)

#: How long a runner may take to import a handler before warm-up gives up.
LOAD_TIMEOUT = 60.0
#: How long after a warm-up the pool's refill starts. Creating a sandbox takes tens of ms of CPU
#: (forks, mounts, an interpreter warming up) and its first, synchronous part runs on the
#: funclet's loop: started at once, it delays the WarmUp reply and then competes for the CPUs
#: with the controller's first call to the new instance. An empty pool refills at once.
REFILL_DELAY = 0.02


@dataclass
class WarmUpResult:
    sandbox: SandboxInfo
    init_ms: float
    bind_ms: float
    from_pool: bool
    logs: str = ""


@dataclass
class _Pool:
    runtime: Runtime
    target: int
    ready: asyncio.Queue[SandboxInfo] = field(default_factory=asyncio.Queue)
    creating: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    refill_timer: asyncio.TimerHandle | None = None


class SandboxManager:
    """Keeps ``pool[runtime]`` generic sandboxes ready and binds them to functions."""

    def __init__(self, driver: SandboxDriver, runtimes: Mapping[str, Runtime], pool: Mapping[str, int]) -> None:
        self.driver = driver
        self.runtimes = dict(runtimes)
        self.sandboxes: dict[str, SandboxInfo] = {}
        self._pools = {name: _Pool(rt, pool.get(name, 0)) for name, rt in self.runtimes.items()}
        self._subscribers: set[asyncio.Queue[SandboxEvent]] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._destroying: set[str] = set()

    async def start(self) -> None:
        await self.driver.start(self.runtimes)
        self._tasks.append(asyncio.create_task(self._pump_events(), name="funclet-events"))
        for name, pool in self._pools.items():
            self._tasks.append(asyncio.create_task(self._refill(name, pool), name=f"pool-{name}"))

    async def stop(self) -> None:
        for pool in self._pools.values():
            if pool.refill_timer is not None:
                pool.refill_timer.cancel()
                pool.refill_timer = None
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.driver.stop()
        self.sandboxes.clear()

    # -- pool --------------------------------------------------------------------------

    def pool_ready(self) -> dict[str, int]:
        return {name: pool.ready.qsize() for name, pool in self._pools.items()}

    async def _refill(self, name: str, pool: _Pool) -> None:
        """Keep ``pool.target`` generic sandboxes ready; back off when creation fails."""
        failures = 0
        while True:
            while pool.ready.qsize() + pool.creating < pool.target:
                pool.creating += 1
                try:
                    info = await self.create(name)
                except EasyFaaSError as exc:
                    failures += 1
                    delay = min(30.0, 0.5 * 2**failures)
                    log.error("could not create a %s sandbox (retrying in %.1fs): %s", name, delay, exc)
                    await asyncio.sleep(delay)
                    continue
                finally:
                    pool.creating -= 1
                failures = 0
                pool.ready.put_nowait(info)
            pool.wake.clear()
            await pool.wake.wait()

    def _refill_soon(self, pool: _Pool) -> None:
        """Wake ``pool``'s refill after ``REFILL_DELAY`` (at once if it is empty); never postponed further."""
        if pool.ready.empty():
            if pool.refill_timer is not None:
                pool.refill_timer.cancel()
                pool.refill_timer = None
            pool.wake.set()
        elif pool.refill_timer is None:
            pool.refill_timer = asyncio.get_running_loop().call_later(REFILL_DELAY, self._wake_pool, pool)

    @staticmethod
    def _wake_pool(pool: _Pool) -> None:
        pool.refill_timer = None
        pool.wake.set()

    async def create(self, runtime: str) -> SandboxInfo:
        rt = self._runtime(runtime)
        info = await self.driver.create(rt)
        self.sandboxes[info.id] = info
        return info

    def _runtime(self, name: str) -> Runtime:
        try:
            return self.runtimes[name]
        except KeyError:
            raise SandboxError(f"runtime {name!r} is not enabled on this funclet (enabled: {sorted(self.runtimes)})") from None

    async def _take(self, runtime: str) -> tuple[SandboxInfo, bool]:
        """A generic sandbox from the pool, or a new one; the caller refills the pool after."""
        pool = self._pools[runtime]
        while not pool.ready.empty():
            info = pool.ready.get_nowait()
            if info.id in self.sandboxes:  # it may have died while waiting in the pool
                return info, True
        return await self.create(runtime), False

    # -- warm-up -----------------------------------------------------------------------

    async def warm_up(
        self, runtime: str, spec: WarmupSpec, *, handler: str, function: str, version: str
    ) -> WarmUpResult:
        """Bind a generic sandbox to a function version and load its handler."""
        self._runtime(runtime)
        started = time.perf_counter()
        info, from_pool = await self._take(runtime)
        try:
            return await self._bind(info, from_pool, spec, started, handler=handler, function=function, version=version)
        finally:
            # Refill only after the reply and the first call: creating a sandbox competes for the
            # CPUs with this cold start.
            self._refill_soon(self._pools[runtime])

    async def _bind(
        self, info: SandboxInfo, from_pool: bool, spec: WarmupSpec, started: float, *, handler: str, function: str, version: str
    ) -> WarmUpResult:
        try:
            code_dir = await self.driver.warmup(info.id, spec)
            bind_ms = (time.perf_counter() - started) * 1000
            meta: dict[str, Any] = {
                "code_dir": code_dir,
                "handler": handler,
                "function": function,
                "version": version,
                "memory_mb": spec.memory_mb,
                "env": spec.env,
                "instance": info.id,
                "arn": f"arn:aws:lambda:easyfaas:000000000000:function:{function}:{version}",
            }
            kind, reply, _ = await request(info.socket_path, Kind.LOAD, meta, timeout=LOAD_TIMEOUT)
        except TimeoutError:
            await self.destroy(info.id)
            raise LoadError(f"handler {handler!r} did not finish loading within {LOAD_TIMEOUT:g}s") from None
        except (OSError, EOFError, FrameError, asyncio.IncompleteReadError) as exc:
            await self.destroy(info.id)
            raise LoadError(f"the instance ended while loading handler {handler!r}: {exc!r}") from exc
        except BaseException:
            await self.destroy(info.id)
            raise
        if kind == Kind.LOAD_ERROR:
            await self.destroy(info.id)
            stack = "\n".join(reply.get("stack", []))
            raise LoadError(
                f"cannot load handler {handler!r}: {reply.get('type')}: {reply.get('message')}",
                details={"cause": reply.get("type"), "stack": stack, "logs": reply.get("logs", "")},
            )
        if kind != Kind.LOADED:
            await self.destroy(info.id)
            raise SandboxError(f"runner answered LOAD with message kind {kind}")
        bound = replace(info, state="bound", function_key=spec.function_key)
        self.sandboxes[info.id] = bound
        return WarmUpResult(bound, float(reply.get("init_ms", 0.0)), bind_ms, from_pool, reply.get("logs", ""))

    # -- destroy, stats, events ----------------------------------------------------------

    async def destroy(self, sandbox_id: str) -> None:
        self._destroying.add(sandbox_id)
        try:
            await self.driver.destroy(sandbox_id)
        finally:
            self.sandboxes.pop(sandbox_id, None)
            self._destroying.discard(sandbox_id)

    async def reset(self, sandbox_id: str) -> SandboxInfo:
        """Destroy a sandbox and return a fresh generic one of the same runtime in its place."""
        info = self.sandboxes.get(sandbox_id)
        if info is None:
            raise SandboxError(f"no sandbox {sandbox_id!r}")
        await self.destroy(sandbox_id)
        return await self.create(info.runtime)

    async def stats(self, sandbox_id: str) -> SandboxStats:
        if sandbox_id not in self.sandboxes:
            raise SandboxError(f"no sandbox {sandbox_id!r}")
        return await self.driver.stats(sandbox_id)

    async def _pump_events(self) -> None:
        async for event in self.driver.events():
            if event.sandbox_id in self._destroying:
                continue
            self.sandboxes.pop(event.sandbox_id, None)
            for pool in self._pools.values():
                pool.wake.set()
            log.info("sandbox %s %s: %s", event.sandbox_id, event.kind, event.message)
            for queue in list(self._subscribers):
                queue.put_nowait(event)

    async def watch(self) -> AsyncIterator[SandboxEvent]:
        queue: asyncio.Queue[SandboxEvent] = asyncio.Queue()
        self._subscribers.add(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            self._subscribers.discard(queue)
