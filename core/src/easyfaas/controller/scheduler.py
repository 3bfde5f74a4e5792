"""The scheduler: which instance runs a call, cold starts, queueing, timeouts, scale to zero.

Per function version (never shared across versions): take the first warm instance with a
free slot; else cold-start one if under the function's ``concurrency``; else wait in a
bounded queue for a slot, up to ``max_queue_wait``; else ``ThrottledError`` (429).

An instance has ``instance_concurrency`` slots, except under *prefetch*: for a function with
``instance_concurrency`` 1 on a serial runtime (``Runtime.SERIAL``), an instance whose
calls take less than ``controller.prefetch_below`` gets more slots, about that threshold
divided by its call time (at most 1 + ``MAX_PREFETCH``). The extra calls wait in the runner's
socket behind the running one, which then finds its next call there instead of sleeping and
being woken for each: for calls of tens of microseconds the wake-up costs more than the call.
It never runs two calls at once. Taking the *first* instance with a free slot packs short
calls onto few instances; the others stay idle and retire at their keep-alive.
A prefetched call's timeout starts when the call ahead of it is answered (the runner is told
with the ``timeout`` meta); if the instance dies before that, the call never started and is
scheduled again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from easyfaas.controller.funclet_client import FuncletClient
from easyfaas.controller.instance import Instance, Reply
from easyfaas.errors import (
    EasyFaaSError,
    FuncletUnavailableError,
    FunctionTimeoutError,
    InstanceCrashedError,
    InvocationError,
    PlatformError,
    ThrottledError,
)
from easyfaas.models import FunctionVersion, SandboxEvent
from easyfaas.wire import Kind

__all__ = ["CallNotStarted", "FunctionPool", "Scheduler"]

log = logging.getLogger(__name__)

#: Extra calls a prefetching instance may hold behind its running one.
MAX_PREFETCH = 16
#: The runner's own time per call beyond the handler's (ms), for sizing prefetch.
RUNNER_MS = 0.05
#: After a connection drops, how long to wait for the funclet to say why (exit code, OOM).
DEATH_GRACE = 0.5
#: How long a cold start waits for a restarting funclet before giving up.
FUNCLET_WAIT = 15.0


class CallNotStarted(Exception):
    """A prefetched call's instance died before the call ahead of it was answered: the call
    never started and may run elsewhere. ``cause`` is what ended the instance."""

    def __init__(self, cause: InvocationError) -> None:
        super().__init__(str(cause))
        self.cause = cause


def _expire_waiter(future: asyncio.Future[Instance]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


@dataclass(eq=False)
class FunctionPool:
    fv: FunctionVersion
    instances: list[Instance] = field(default_factory=list)
    waiters: deque[asyncio.Future[Instance]] = field(default_factory=deque)
    starting: int = 0
    #: Calls may be prefetched onto busy instances (see the module's docstring).
    prefetch: bool = False
    prefetched: int = 0
    cold_starts: int = 0
    throttled: int = 0


class Scheduler:
    """Owns every instance the controller knows; all methods run on the controller's loop."""

    def __init__(
        self,
        funclet: FuncletClient,
        *,
        is_current: Callable[[FunctionVersion], bool],
        keep_alive: float = 120.0,
        queue_size: int = 1000,
        max_queue_wait: float = 10.0,
        prefetch_below_ms: float = 0.0,
        is_serial: Callable[[FunctionVersion], bool] | None = None,
    ) -> None:
        self.funclet = funclet
        self.is_current = is_current
        self.keep_alive = keep_alive
        self.queue_size = queue_size
        self.max_queue_wait = max_queue_wait
        self.prefetch_below_ms = prefetch_below_ms
        self.is_serial = is_serial
        self.pools: dict[str, FunctionPool] = {}
        self.by_sandbox: dict[str, Instance] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self.on_cold_start: Callable[[FunctionVersion, float], None] | None = None
        self.on_throttle: Callable[[FunctionVersion], None] | None = None

    # -- acquiring and releasing slots ---------------------------------------------------

    def pool(self, fv: FunctionVersion) -> FunctionPool:
        pool = self.pools.get(fv.key)
        if pool is None:
            pool = self.pools[fv.key] = FunctionPool(fv)
            pool.prefetch = (
                self.prefetch_below_ms > 0
                and fv.spec.instance_concurrency == 1
                and not fv.spec.streaming  # a streamed call may last long: nothing waits behind it
                and self.is_serial is not None
                and self.is_serial(fv)
            )
        return pool

    async def acquire(self, fv: FunctionVersion, request_id: str = "") -> tuple[Instance, float | None]:
        """A slot on an instance of ``fv``, and the init time if this call cold-started it."""
        pool = self.pool(fv)
        for inst in pool.instances:
            if inst.inflight < inst.slots and (inst.state == "idle" or inst.state == "busy"):
                inst.inflight += 1
                inst.state = "busy"
                if inst.inflight > inst.fv.spec.instance_concurrency:
                    pool.prefetched += 1
                return inst, None
        if len(pool.instances) + pool.starting < fv.spec.concurrency:
            inst = await self._cold_start(pool, request_id)
            return inst, inst.init_ms
        return await self._wait_for_slot(pool), None

    async def _wait_for_slot(self, pool: FunctionPool) -> Instance:
        if len(pool.waiters) >= self.queue_size or self.max_queue_wait <= 0:
            raise self._throttle(pool, "its queue is full")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Instance] = loop.create_future()
        pool.waiters.append(future)
        # A timer on the future, not asyncio.wait_for: no task per queued call.
        timer = loop.call_later(self.max_queue_wait, _expire_waiter, future)
        try:
            return await future
        except TimeoutError:
            raise self._throttle(pool, f"no instance was free within {self.max_queue_wait:g}s") from None
        finally:
            timer.cancel()
            if not future.done() or future.cancelled() or future.exception() is not None:
                # Still queued (the caller went away) or timed out: leave the queue. A served
                # future was already popped by _dispatch; searching for it would only cost time.
                with contextlib.suppress(ValueError):
                    pool.waiters.remove(future)

    def _throttle(self, pool: FunctionPool, why: str) -> ThrottledError:
        pool.throttled += 1
        if self.on_throttle is not None:
            self.on_throttle(pool.fv)
        spec = pool.fv.spec
        return ThrottledError(
            f"function {spec.name!r} is at its concurrency limit ({spec.concurrency} instances × "
            f"{spec.instance_concurrency} calls) and {why}",
            retry_after=max(1, int(spec.timeout / 4)) if why.startswith("its queue") else 1,
        )

    async def _cold_start(self, pool: FunctionPool, request_id: str) -> Instance:
        fv = pool.fv
        pool.starting += 1
        started = time.perf_counter()
        try:
            warm = await self._warm_up(fv, request_id)
            inst = Instance(fv, warm.sandbox, init_ms=warm.init_ms, state="binding", init_logs=warm.logs)
            inst.lost_callback = self._on_lost
            try:
                await inst.connect()
            except OSError as exc:
                self._destroy_later(inst)
                raise PlatformError(f"cannot connect to instance {inst.id}: {exc}") from exc
        finally:
            pool.starting -= 1
        inst.state = "busy"
        inst.inflight = 1
        inst.slots = fv.spec.instance_concurrency
        if pool.prefetch:
            inst.prefetch_ms = self.prefetch_below_ms
        pool.instances.append(inst)
        pool.cold_starts += 1
        self.by_sandbox[inst.id] = inst
        if self.on_cold_start is not None:
            self.on_cold_start(fv, (time.perf_counter() - started) * 1000)
        return inst

    async def _warm_up(self, fv: FunctionVersion, request_id: str) -> Any:
        deadline = time.monotonic() + FUNCLET_WAIT
        while True:
            try:
                return await self.funclet.warm_up(fv, request_id=request_id)
            except FuncletUnavailableError as exc:
                if time.monotonic() > deadline:
                    raise PlatformError(f"the funclet is unavailable: {exc}") from exc
                await asyncio.sleep(0.2)
            except InvocationError:
                raise
            except EasyFaaSError as exc:
                raise PlatformError(f"cold start of {fv.key} failed: {exc}") from exc

    def release(self, inst: Instance) -> None:
        """Give back a slot taken by ``acquire``; hands it to the next waiter if any."""
        inst.inflight -= 1
        inst.calls += 1
        inst.last_used = time.monotonic()
        pool = self.pools.get(inst.fv.key)
        if inst.state == "busy" and inst.inflight == 0:
            inst.state = "idle"
        if pool is not None and pool.waiters:
            self._dispatch(pool)

    def _dispatch(self, pool: FunctionPool) -> None:
        """Give free slots (or new instances, if under the cap) to queued callers."""
        limit = pool.fv.spec.instance_concurrency
        for inst in pool.instances:
            while pool.waiters and inst.usable and inst.inflight < inst.slots:
                waiter = pool.waiters.popleft()
                if waiter.done():
                    continue
                inst.inflight += 1
                inst.state = "busy"
                if inst.inflight > limit:
                    pool.prefetched += 1
                waiter.set_result(inst)
        while pool.waiters and len(pool.instances) + pool.starting < pool.fv.spec.concurrency:
            waiter = pool.waiters.popleft()
            if not waiter.done():
                self._spawn(self._cold_start_for(pool, waiter))

    async def _cold_start_for(self, pool: FunctionPool, waiter: asyncio.Future[Instance]) -> None:
        try:
            inst = await self._cold_start(pool, "")
        except InvocationError as exc:
            if not waiter.done():
                waiter.set_exception(exc)
            return
        if waiter.done():
            self.release(inst)
        else:
            waiter.set_result(inst)

    # -- calls ---------------------------------------------------------------------------

    async def call(self, inst: Instance, meta: dict[str, Any], body: bytes, timeout: float) -> Reply:
        """Send one INVOKE to ``inst``; kill the instance if it outlives ``timeout``.

        Raises ``CallNotStarted`` for a prefetched call whose instance died before starting it.
        """
        ahead = inst.last_invoke
        if ahead is not None and inst.prefetch_ms and not ahead.done():
            return await self._call_behind(inst, ahead, meta, body, timeout)
        future = inst.last_invoke = inst.running = inst.send(Kind.INVOKE, meta, body)
        handle = asyncio.get_running_loop().call_later(timeout, self._expire, inst, future, timeout)
        try:
            reply = await future
        finally:
            handle.cancel()
            if inst.in_line:
                self.start_next(inst)
        _note_call_ms(inst, reply)
        return reply

    async def _call_behind(
        self, inst: Instance, ahead: asyncio.Future[Reply], meta: dict[str, Any], body: bytes, timeout: float
    ) -> Reply:
        """A prefetched call: sent now, in line behind ``ahead``; it starts (and its timeout with
        it) when the call running before it ends (``start_next``)."""
        meta["timeout"] = timeout * 1000
        future = inst.last_invoke = inst.send(Kind.INVOKE, meta, body)
        entry: list[Any] = [future, timeout, None]  # the timer, once started
        inst.in_line.append(entry)
        try:
            reply = await future
        except InvocationError as exc:
            if entry[2] is None and (ahead.cancelled() or ahead.exception() is not None):
                raise CallNotStarted(exc) from exc  # the runner never reached this call
            raise
        finally:
            if entry[2] is not None:
                entry[2].cancel()
            if inst.in_line:
                self.start_next(inst)
        _note_call_ms(inst, reply)
        return reply

    def start_next(self, inst: Instance) -> None:
        """A call on ``inst`` ended: unless one is running, the first unanswered call in line
        is (the runner serves them in order), so its timeout starts now."""
        running = inst.running
        if running is not None and not running.done():
            return  # a call answered in the same batch as the one before it already did this
        line = inst.in_line
        while line:
            future, timeout, _ = entry = line.popleft()
            if not future.done():
                entry[2] = asyncio.get_running_loop().call_later(timeout, self._expire, inst, future, timeout)
                inst.running = future
                return

    def _expire(self, inst: Instance, future: asyncio.Future[Reply], timeout: float) -> None:
        if future.done():
            return
        future.set_exception(
            FunctionTimeoutError(f"function {inst.fv.name!r} timed out after {timeout:g}s; its instance was killed")
        )
        self.kill(inst, InstanceCrashedError(f"instance {inst.id} was killed because a call on it timed out"))

    # -- instance deaths -----------------------------------------------------------------

    def kill(self, inst: Instance, error: InvocationError) -> None:
        """End an instance now: fail its calls with ``error``, destroy its sandbox."""
        inst.fail(error)
        self._forget(inst)
        self._destroy_later(inst)

    def _forget(self, inst: Instance) -> None:
        self.by_sandbox.pop(inst.id, None)
        pool = self.pools.get(inst.fv.key)
        if pool is not None:
            with contextlib.suppress(ValueError):
                pool.instances.remove(inst)
            if pool.waiters:
                self._dispatch(pool)

    def _on_lost(self, inst: Instance) -> None:
        """The runner's connection dropped; wait briefly for the funclet to say why."""
        if inst.death is not None:
            self._forget(inst)
            self._destroy_later(inst)
            return
        asyncio.get_running_loop().call_later(DEATH_GRACE, self._finish_lost, inst)

    def _finish_lost(self, inst: Instance) -> None:
        if inst.death is None:
            self.kill(inst, InstanceCrashedError(f"instance {inst.id} of {inst.fv.name!r} exited unexpectedly"))
        else:
            self._forget(inst)
            self._destroy_later(inst)

    def on_event(self, event: SandboxEvent) -> None:
        """A funclet event: fail the instance's calls with the precise reason."""
        inst = self.by_sandbox.get(event.sandbox_id)
        if inst is None:
            return
        if event.kind == "oom_killed":
            message = f"function {inst.fv.name!r} ran out of memory: it exceeded its {inst.fv.spec.memory} MB limit"
            error = InstanceCrashedError(message, details={"cause": "OutOfMemory", "memory_mb": inst.fv.spec.memory})
        else:
            message = f"instance of {inst.fv.name!r} ended: {event.message or event.kind}"
            error = InstanceCrashedError(
                message, details={"cause": event.kind, "exit_code": event.exit_code, "signal": event.signal}
            )
        self.kill(inst, error)

    def funclet_lost(self) -> None:
        """The funclet restarted: every sandbox it had is gone."""
        for inst in list(self.by_sandbox.values()):
            inst.fail(InstanceCrashedError(f"instance {inst.id} was lost when the funclet restarted"))
            self._forget(inst)

    # -- health --------------------------------------------------------------------------

    async def ping_idle(self, *, older_than: float = 10.0, timeout: float = 2.0) -> int:
        """PING instances idle for ``older_than`` seconds; replace those that do not answer."""
        now = time.monotonic()
        idle = [
            i for i in self.instances() if i.state == "idle" and i.inflight == 0 and now - i.last_pinged >= older_than
        ]
        if not idle:
            return 0

        async def ping(inst: Instance) -> bool:
            inst.last_pinged = time.monotonic()
            try:
                kind, _, _ = await asyncio.wait_for(inst.send(Kind.PING, {}, b""), timeout)
            except (TimeoutError, InvocationError):
                return False
            return kind == Kind.PONG

        answers = await asyncio.gather(*(ping(inst) for inst in idle))
        unhealthy = 0
        for inst, ok in zip(idle, answers, strict=True):
            if not ok and inst.state != "dead":
                unhealthy += 1
                log.warning("instance %s of %s did not answer a ping; replacing it", inst.id, inst.fv.key)
                self.kill(inst, InstanceCrashedError(f"instance {inst.id} stopped answering health checks"))
        return unhealthy

    # -- scale down and provisioning -----------------------------------------------------

    def retire_idle(self, now: float | None = None) -> int:
        """Retire idle instances past their keep-alive or of stale versions; return how many."""
        now = time.monotonic() if now is None else now
        retired = 0
        for key, pool in list(self.pools.items()):
            current = self.is_current(pool.fv)
            keep_alive = pool.fv.spec.keep_alive if pool.fv.spec.keep_alive is not None else self.keep_alive
            keep = pool.fv.spec.min_warm if current else 0
            alive = len(pool.instances)
            for inst in list(pool.instances):
                if alive <= keep:
                    break
                if inst.state == "idle" and inst.inflight == 0 and (not current or now - inst.last_used >= keep_alive):
                    self.retire(inst)
                    alive -= 1
                    retired += 1
            if not pool.instances and not pool.starting and not pool.waiters and not current:
                del self.pools[key]
        return retired

    def retire(self, inst: Instance) -> None:
        inst.state = "retiring"
        inst.death = InstanceCrashedError(f"instance {inst.id} was retired")
        self._forget(inst)
        inst.close()
        self._destroy_later(inst)

    def provision(self, versions: Iterable[FunctionVersion]) -> None:
        """Start instances so each version has at least ``min_warm`` (without traffic)."""
        for fv in versions:
            pool = self.pool(fv)
            missing = fv.spec.min_warm - len(pool.instances) - pool.starting
            for _ in range(max(0, missing)):
                self._spawn(self._provision_one(pool))

    async def _provision_one(self, pool: FunctionPool) -> None:
        try:
            inst = await self._cold_start(pool, "")
        except EasyFaaSError as exc:
            log.warning("could not provision an instance of %s: %s", pool.fv.key, exc)
            return
        self.release(inst)

    # -- housekeeping ----------------------------------------------------------------------

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _destroy_later(self, inst: Instance) -> None:
        """Ask the funclet to destroy the instance's sandbox, once."""
        if not inst.destroying:
            inst.destroying = True
            self._spawn(self._destroy(inst.id))

    async def _destroy(self, sandbox_id: str) -> None:
        try:
            await self.funclet.destroy(sandbox_id)
        except EasyFaaSError as exc:
            log.debug("destroy of %s: %s", sandbox_id, exc)

    def instances(self) -> list[Instance]:
        return [inst for pool in self.pools.values() for inst in pool.instances]

    async def shutdown(self) -> None:
        """Retire everything (callers have drained) and wait for the funclet to destroy it."""
        for inst in self.instances():
            self.retire(inst)
        if self._background:
            await asyncio.wait(list(self._background), timeout=10)


def _note_call_ms(inst: Instance, reply: Reply) -> None:
    """Keep a moving average of the handler time the runner reports (``ms``); size prefetch by it."""
    ms = reply[1].get("ms")
    if ms is not None:
        ms = inst.call_ms = ms if inst.call_ms is None else inst.call_ms * 0.75 + ms * 0.25
        if inst.prefetch_ms:
            inst.slots = 1 + min(MAX_PREFETCH, int(inst.prefetch_ms / (ms + RUNNER_MS)))
