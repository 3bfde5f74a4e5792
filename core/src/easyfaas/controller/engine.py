"""The controller: resolves functions, schedules calls, records activations, hosts triggers.

``Controller.invoke`` is the call path every trigger uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from pydantic import ValidationError

from easyfaas._json import dumps
from easyfaas.controller.activations import ActivationStore
from easyfaas.controller.auth import Credentials, load_credentials
from easyfaas.controller.dispatcher import Dispatcher, start_dispatcher
from easyfaas.controller.funclet_client import FuncletClient
from easyfaas.controller.instance import STATES
from easyfaas.controller.registry import FunctionRegistry
from easyfaas.controller.scheduler import CallNotStarted, Scheduler
from easyfaas.controller.streaming import StreamCall
from easyfaas.errors import (
    EasyFaaSError,
    FuncletUnavailableError,
    FunctionError,
    FunctionSpecError,
    InvocationError,
    PayloadTooLargeError,
    PlatformError,
    UnauthorizedError,
)
from easyfaas.interfaces import LATEST, CodeStore, InvocationResult, Runtime, StreamedInvocation, Trigger
from easyfaas.models import FunctionSpec, FunctionVersion, Schedule
from easyfaas.packaging import PackageLimits, unpack
from easyfaas.plugin.manager import Plugins
from easyfaas.profile import Profile
from easyfaas.wire import Kind

__all__ = ["Controller"]

log = logging.getLogger(__name__)

#: How much of a result an activation record keeps.
RESULT_CAP = 64 * 1024
#: How often a prefetched call whose instance died before starting it is scheduled again.
_NOT_STARTED_RETRIES = 3
_DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class _InstanceCollector(Collector):
    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler

    def collect(self) -> Any:
        gauge = GaugeMetricFamily("easyfaas_instances", "Instances by state", labels=["function", "state"])
        counts: dict[tuple[str, str], int] = {}
        for inst in self.scheduler.instances():
            counts[(inst.fv.name, inst.state)] = counts.get((inst.fv.name, inst.state), 0) + 1
        for (function, state), n in sorted(counts.items()):
            gauge.add_metric([function, state], n)
        queue = GaugeMetricFamily("easyfaas_queue_depth", "Calls waiting for an instance", labels=["function"])
        for pool in self.scheduler.pools.values():
            if pool.waiters:
                queue.add_metric([pool.fv.name], len(pool.waiters))
        prefetched: dict[str, int] = {}
        for pool in self.scheduler.pools.values():
            if pool.prefetched:
                prefetched[pool.fv.name] = prefetched.get(pool.fv.name, 0) + pool.prefetched
        calls = CounterMetricFamily(
            "easyfaas_prefetched_calls", "Calls sent to a busy instance to run after its current call", labels=["function"]
        )
        for function, n in sorted(prefetched.items()):
            calls.add_metric([function], n)
        yield gauge
        yield queue
        yield calls


class Controller:
    """One engine node's controller. Build it, ``await start()``, ``await stop()``."""

    def __init__(self, profile: Profile, plugins: Plugins | None = None) -> None:
        self.profile = profile
        self.plugins = plugins or Plugins()
        cfg = profile.model.controller
        self.max_payload = cfg.max_payload
        self.max_stream_bytes = cfg.max_stream_bytes  # issue #7: streamed bodies (0: no cap)
        self.log_cap = cfg.log_cap
        self.data_dir = profile.data_dir
        self.limits = PackageLimits()
        self.triggers: dict[str, Trigger] = {}
        self.runtimes: dict[str, Runtime] = {}
        self.store: CodeStore
        self.registry: FunctionRegistry
        self.activations: ActivationStore
        self.funclet = FuncletClient(str(profile.funclet_socket))
        self.scheduler = Scheduler(
            self.funclet,
            is_current=self._is_current,
            keep_alive=cfg.keep_alive,
            queue_size=cfg.queue_size,
            max_queue_wait=cfg.max_queue_wait,
            prefetch_below_ms=cfg.prefetch_below * 1000,
            is_serial=lambda fv: getattr(self.runtimes.get(fv.spec.runtime), "SERIAL", False),
        )
        self.metrics = CollectorRegistry()
        self._calls = Counter("easyfaas_calls", "Calls by function and status", ["function", "status"], registry=self.metrics)
        self._duration = Histogram(
            "easyfaas_call_duration_seconds", "Call duration, queueing included", ["function"],
            buckets=_DURATION_BUCKETS, registry=self.metrics,
        )  # fmt: skip
        self._init = Histogram(
            "easyfaas_init_duration_seconds", "Cold start: warm-up plus handler import", ["function"],
            buckets=_DURATION_BUCKETS, registry=self.metrics,
        )  # fmt: skip
        self._cold = Counter("easyfaas_cold_starts", "Cold starts", ["function"], registry=self.metrics)
        self._throttles = Counter("easyfaas_throttles", "Calls refused with 429", ["function"], registry=self.metrics)
        self.metrics.register(_InstanceCollector(self.scheduler))
        self.scheduler.on_cold_start = self._record_cold_start
        self.scheduler.on_throttle = lambda fv: self._throttles.labels(fv.name).inc()
        self.credentials: Credentials | None = None
        self._metric_children: dict[tuple[str, str], tuple[Any, Any]] = {}
        self.dispatcher: Dispatcher | None = None  # async calls (issue #6), set by start()
        self._tasks: list[asyncio.Task[None]] = []
        self._inflight = 0
        self._drained = asyncio.Event()
        self.accepting = False

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        profile, plugins = self.profile, self.plugins
        store_name, store_opts = profile.storage
        runtime_opts = profile.runtimes
        trigger_opts = profile.triggers
        plugins.load({"storage": [store_name], "runtimes": list(runtime_opts), "triggers": list(trigger_opts)})
        self.data_dir.mkdir(parents=True, exist_ok=True)

        profile.check_plugin_options(("storage", store_name), plugins.get("storage", store_name), store_opts)
        self.store = plugins.create_storage(store_name, data_dir=self.data_dir, **store_opts)
        for name, opts in runtime_opts.items():
            profile.check_plugin_options(("runtimes", name), plugins.get("runtimes", name), opts)
            self.runtimes[name] = plugins.create_runtime(name, **opts)
        for name, opts in trigger_opts.items():
            profile.check_plugin_options(("triggers", name), plugins.get("triggers", name), opts)
            self.triggers[name] = plugins.create_trigger(name, data_dir=self.data_dir, **opts)

        cfg = profile.model.controller
        if cfg.auth:
            token_file = (profile.base_dir / cfg.token_file).resolve() if cfg.token_file else None
            self.credentials = load_credentials(self.data_dir, token_file)
        else:
            log.warning("management API authentication is OFF (controller.auth: false); anyone on this host can use it")
        self.registry = FunctionRegistry(self.store)
        await self.registry.load()
        self._tasks.append(asyncio.create_task(self.registry.follow(), name="registry-follow"))  # issue #10: other nodes' deploys
        # issue #10: a shared store may also keep every node's records (CodeStore.activation_archive)
        self.activations = ActivationStore(self.data_dir / "activations.db", archive=self.store.activation_archive())
        self.activations.start()
        self.dispatcher = await start_dispatcher(self)  # async calls: queue plugin + workers (issue #6)
        self._tasks.append(asyncio.create_task(self._watch_funclet(), name="funclet-events"))
        self._tasks.append(asyncio.create_task(self._housekeeping(), name="housekeeping"))
        self.accepting = True
        for trigger in self.triggers.values():
            await trigger.start(self)

    async def stop(self, *, drain_timeout: float = 30.0) -> None:
        """Stop accepting calls, let in-flight calls finish, then retire every instance."""
        self.accepting = False
        for trigger in self.triggers.values():
            with contextlib.suppress(Exception):
                await trigger.stop()
        if self.dispatcher is not None:  # issue #6: running async calls finish, queued ones stay queued
            await self.dispatcher.stop(drain_timeout)
        if self._inflight:
            self._drained.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), drain_timeout)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.scheduler.shutdown()
        await self.activations.close()
        await self.store.close()
        await self.funclet.close()

    async def _watch_funclet(self) -> None:
        """Follow the funclet's instance events; when the stream breaks the funclet restarted."""
        while True:
            try:
                async for event in self.funclet.watch_events():
                    self.scheduler.on_event(event)
                    self.plugins.instance_event(event)
            except FuncletUnavailableError as exc:
                log.warning("lost the funclet (%s); its instances are gone", exc)
            except EasyFaaSError as exc:
                log.error("funclet event stream failed: %s", exc)
            self.scheduler.funclet_lost()
            await asyncio.sleep(0.2)

    async def _housekeeping(self) -> None:
        """Once a second: retire idle instances, keep ``min_warm`` ones, ping the idle."""
        while True:
            await asyncio.sleep(1.0)
            try:
                self.scheduler.retire_idle()
                self.scheduler.provision(fv for fv in self.registry.latest() if fv.spec.min_warm)
                await self.scheduler.ping_idle(older_than=self.profile.model.controller.health_interval)
            except Exception:
                log.exception("housekeeping failed")

    def _is_current(self, fv: FunctionVersion) -> bool:
        return self.registry.is_current(fv)

    def _record_cold_start(self, fv: FunctionVersion, ms: float) -> None:
        self._cold.labels(fv.name).inc()
        self._init.labels(fv.name).observe(ms / 1000)

    # -- the call path (Invoker) -----------------------------------------------------------

    async def authorize(self, function: str, authorization: str | None) -> None:
        """For triggers: a non-public function needs the API's bearer token."""
        fv = await self.registry.resolve(function)
        if fv.spec.public or self.credentials is None:
            return
        scheme, _, presented = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not self.credentials.token_matches(presented.strip()):
            raise UnauthorizedError(f"function {function!r} is not public: send 'Authorization: Bearer <token>'")

    # issue #6: asynchronous calls (controller/dispatcher.py, docs/async.md) ------------------

    async def invoke_async(
        self,
        function: str,
        event: bytes,
        *,
        qualifier: str = LATEST,
        idempotency_key: str | None = None,
        trigger: str = "api",
    ) -> str:
        """Accept a call durably, to run later; its activation id.

        Raises ``FunctionNotFoundError`` or ``PayloadTooLargeError`` (over
        ``controller.async_max_payload``) instead of accepting it.
        """
        if self.dispatcher is None:
            raise PlatformError("the engine is not started")
        return await self.dispatcher.accept(
            function, event, qualifier=qualifier, idempotency_key=idempotency_key, trigger=trigger
        )

    async def schedules(self) -> dict[str, list[Schedule]]:
        return {fv.name: list(fv.spec.schedules) for fv in self.registry.latest() if fv.spec.schedules}

    # -- end of issue #6 -----------------------------------------------------------------------

    # issue #7: streamed calls (controller/streaming.py, docs/runtime-protocol.md) -------------

    def streaming(self, function: str) -> bool:
        fv = self.registry.peek(function)
        return fv is not None and fv.spec.streaming

    async def invoke_stream(
        self,
        function: str,
        event: Any,
        body: AsyncIterable[bytes],
        *,
        trigger: str = "",
        request_id: str | None = None,
    ) -> StreamedInvocation:
        """A call whose request and reply bodies stream through in chunks (``streaming: true``);
        the slot, limits, timeout and activation record are those of ``invoke``."""
        if not self.accepting:
            raise PlatformError("the engine is shutting down")
        fv = await self.registry.resolve(function)
        if not fv.spec.streaming:
            raise PlatformError(f"function {function!r} does not stream (its spec has no 'streaming: true')")
        self._inflight += 1
        call = StreamCall(self, fv, trigger=trigger, request_id=request_id, on_done=self._call_done)
        await call.start(event, body)
        return call

    def _call_done(self) -> None:
        """A call (plain or streamed) ended: once the last one has, a stopping engine is drained."""
        self._inflight -= 1
        if not self._inflight and not self.accepting:
            self._drained.set()

    @staticmethod
    def _check_streaming(spec: FunctionSpec, runtime: Runtime) -> None:
        if spec.streaming and not runtime.STREAMING:
            raise FunctionSpecError(f"runtime {spec.runtime!r} cannot stream bodies: 'streaming: true' needs e.g. the exec runtime")

    # -- end of issue #7 -----------------------------------------------------------------------

    async def function_exists(self, function: str) -> bool:
        try:
            await self.registry.resolve(function)
        except EasyFaaSError:
            return False
        return True

    async def invoke(
        self,
        function: str,
        event: Any,
        *,
        qualifier: str = LATEST,
        trigger: str = "",
        request_id: str | None = None,
    ) -> InvocationResult:
        if not self.accepting:
            raise PlatformError("the engine is shutting down")
        fv = await self.registry.resolve(function, qualifier)
        body = event if isinstance(event, bytes) else dumps(event)
        if len(body) > self.max_payload:
            raise PayloadTooLargeError(f"the event is {len(body)} bytes; the limit is {self.max_payload}")
        rid = request_id or os.urandom(16).hex()  # as unique as uuid4().hex, a third of the cost
        start = time.time()
        t0 = time.perf_counter()
        timeout = fv.spec.timeout
        self._inflight += 1
        init_ms: float | None = None
        inst = None
        try:
            for attempt in range(_NOT_STARTED_RETRIES + 1):
                inst, init_ms = await self.scheduler.acquire(fv, rid)
                t1 = time.perf_counter()
                try:
                    kind, meta, out = await self.scheduler.call(
                        inst, {"rid": rid, "deadline": (time.time() + timeout) * 1000, "log_cap": self.log_cap}, body, timeout
                    )
                    break
                except CallNotStarted as exc:  # prefetched behind a call that killed its instance
                    if attempt == _NOT_STARTED_RETRIES:
                        raise exc.cause from None
                finally:
                    self.scheduler.release(inst)
        except InvocationError as exc:
            exc.request_id = rid
            t2 = time.perf_counter()
            self._record(fv, rid, trigger, start, t0, t2, t2, init_ms, inst.id if inst else "", exc.status, exc.to_dict(), None,
                         str(exc.details.get("logs", "")))  # fmt: skip
            raise
        finally:
            self._call_done()
        t2 = time.perf_counter()
        assert inst is not None  # the loop above either got a reply from an instance or raised
        logs = meta.get("logs", "")
        if init_ms is not None and inst.init_logs:
            logs = inst.init_logs + logs
        if kind == Kind.RESULT:
            raw = bool(meta.get("raw"))
            self._record(fv, rid, trigger, start, t0, t1, t2, init_ms, inst.id, "success", None,
                         None if raw else out[:RESULT_CAP].decode("utf-8", "replace"), logs, meta.get("ms"))  # fmt: skip
            return InvocationResult(
                request_id=rid, body=out, raw=raw, function=fv.name, version=fv.version,
                duration_ms=(t2 - t0) * 1000, init_ms=init_ms, logs=logs,
            )  # fmt: skip
        if kind == Kind.ERROR:
            error = FunctionError(
                str(meta.get("message", "")),
                details={"errorType": meta.get("type", "Error"), "stackTrace": meta.get("stack", []), "logs": logs},
            )
            record_error = {k: v for k, v in error.to_dict().items() if k != "logs"}
            self._record(fv, rid, trigger, start, t0, t1, t2, init_ms, inst.id, error.status, record_error, None, logs,
                         meta.get("ms"))  # fmt: skip
            error.request_id = rid
            raise error
        raise PlatformError(f"instance {inst.id} answered INVOKE with message kind {kind}")

    def _record(
        self, fv: FunctionVersion, rid: str, trigger: str, start: float, t0: float, t1: float, t2: float,
        init_ms: float | None, instance: str, status: str, error: dict[str, Any] | None, result: str | None, logs: str,
        handler_ms: float | None = None,
    ) -> None:  # fmt: skip
        duration = t2 - t0
        # labels() hashes and locks on every lookup: keep each function's children at hand.
        children = self._metric_children.get((fv.name, status))
        if children is None:
            children = self._metric_children[(fv.name, status)] = (
                self._calls.labels(fv.name, status), self._duration.labels(fv.name))  # fmt: skip
        children[0].inc()
        children[1].observe(duration)
        record = {
            "id": rid, "function": fv.name, "version": fv.version, "status": status, "trigger": trigger,
            "start": start, "end": start + duration, "duration_ms": duration * 1000, "wait_ms": (t1 - t0) * 1000,
            "init_ms": init_ms, "instance": instance, "error": error, "result": result, "logs": logs,
        }  # fmt: skip
        if handler_ms is not None:
            # The runner's own time for the call: duration_ms minus this is the engine's overhead.
            record["handler_ms"] = handler_ms
        self.activations.add(record)
        self.plugins.after_invoke(record)

    # -- management ----------------------------------------------------------------------

    async def deploy(self, spec: FunctionSpec, archive: bytes) -> FunctionVersion:
        """Validate and store a new version; a handler that cannot load is refused."""
        runtime = self.runtimes.get(spec.runtime)
        if runtime is None:
            raise FunctionSpecError(f"runtime {spec.runtime!r} is not enabled (enabled: {', '.join(sorted(self.runtimes))})")
        staging = Path(tempfile.mkdtemp(prefix="deploy-", dir=self.data_dir))
        try:
            code_dir = staging / "code"
            code_dir.mkdir()
            await asyncio.to_thread(unpack, archive, code_dir, self.limits)
            runtime.check_code(code_dir, spec.handler)
            self._check_streaming(spec, runtime)  # issue #7
            for trigger in self.triggers.values():  # issue #6: e.g. the cron trigger parses schedules
                trigger.check_spec(spec)
            await self._check_load(spec, code_dir)
            fv = await self.registry.deploy(spec, code_dir)
        finally:
            await asyncio.to_thread(shutil.rmtree, staging, True)
        log.info("deployed %s version %s", fv.name, fv.version)
        self.scheduler.retire_idle()
        return fv

    async def _check_load(self, spec: FunctionSpec, code_dir: Path) -> None:
        """Load the handler once in a real sandbox so import errors surface at deploy time."""
        mode = code_dir.stat().st_mode
        if mode & 0o005 != 0o005:  # the runner is unprivileged: it must be able to enter the directory
            code_dir.chmod(mode | 0o755)
        probe = FunctionVersion(spec=spec, version="deploy-check", code_dir=str(code_dir), code_sha256="", created_at=time.time())
        try:
            warm = await self.funclet.warm_up(probe)
        except InvocationError as exc:
            raise FunctionSpecError(f"the handler does not load: {exc.message}") from exc
        except EasyFaaSError as exc:
            raise PlatformError(f"cannot check the handler: {exc}") from exc
        with contextlib.suppress(EasyFaaSError):
            await self.funclet.destroy(warm.sandbox.id)

    async def update_config(self, name: str, changes: dict[str, Any]) -> FunctionVersion:
        """A new version with the latest version's code and ``changes`` applied to its spec."""
        fv = await self.registry.resolve(name)
        try:
            spec = FunctionSpec.model_validate({**fv.spec.model_dump(), **changes, "name": name})
        except ValidationError as exc:
            raise FunctionSpecError(f"invalid configuration: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}") from None
        runtime = self.runtimes.get(spec.runtime)
        if runtime is None:
            raise FunctionSpecError(f"runtime {spec.runtime!r} is not enabled")
        code_dir = Path(fv.code_dir)
        runtime.check_code(code_dir, spec.handler)
        self._check_streaming(spec, runtime)  # issue #7
        for trigger in self.triggers.values():  # issue #6: e.g. the cron trigger parses schedules
            trigger.check_spec(spec)
        if (spec.handler, spec.runtime, spec.env) != (fv.spec.handler, fv.spec.runtime, fv.spec.env):
            await self._check_load(spec, code_dir)
        new = await self.registry.deploy(spec, code_dir)
        self.scheduler.retire_idle()
        return new

    async def delete(self, name: str) -> None:
        await self.registry.delete(name)
        self.scheduler.retire_idle()

    def instances(self) -> list[dict[str, Any]]:
        return [inst.describe() for inst in self.scheduler.instances()]

    @staticmethod
    def instance_states() -> tuple[str, ...]:
        return STATES
