"""Asynchronous calls: accepted durably into the queue plugin, then run through ``Controller.invoke``.

Delivery is at least once, with per-function retries, event age, destinations and dead letters (docs/async.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import aiohttp
from prometheus_client import CollectorRegistry, Counter, Gauge
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from easyfaas.errors import (
    FunctionError,
    FunctionNotFoundError,
    FunctionSpecError,
    InvocationError,
    PayloadTooLargeError,
    PlatformError,
    ThrottledError,
)
from easyfaas.interfaces import LATEST, AsyncQueue, InvocationResult, QueuedCall
from easyfaas.models import AsyncPolicy, FunctionSpec, FunctionVersion

if TYPE_CHECKING:
    from easyfaas.controller.engine import Controller

__all__ = ["Dispatcher", "async_capacity", "start_dispatcher"]

log = logging.getLogger(__name__)

#: How long a lease hides a call; running calls have theirs extended every third of it.
VISIBILITY_TIMEOUT = 60.0
#: Longest sleep of the lease loop when nothing woke it (covers calls enqueued by other nodes).
POLL_INTERVAL = 1.0
#: Base delay before a call put back without an attempt (throttled, busy, shutting down) runs again.
REQUEUE_DELAY = 1.0
CALLBACK_ATTEMPTS = 5
CALLBACK_TIMEOUT = 10.0
MAX_IDEMPOTENCY_KEY = 256
#: Same shape as the ``arn`` the runtime passes in the handler's context.
_ARN = "arn:aws:lambda:easyfaas:000000000000:function:{name}:{version}"
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def async_capacity(spec: FunctionSpec) -> int:
    """How many async calls of a function may run at once: all its slots but one instance's
    worth, so that synchronous callers always find room (a function of one instance: one)."""
    total = spec.concurrency * spec.instance_concurrency
    reserve = spec.instance_concurrency if spec.concurrency > 1 else 1
    return max(1, total - reserve)


def backoff_delay(policy: AsyncPolicy, attempt: int) -> float:
    """Delay before the retry that follows failed attempt ``attempt`` (1-based): exponential,
    capped, with "equal jitter" so retries of a burst of failures spread out."""
    delay: float = min(policy.max_backoff, policy.backoff * 2.0 ** (attempt - 1))
    return delay * random.uniform(0.5, 1.0)


class _RetryableStatus(Exception):
    """A callback URL answered 429 or 5xx: worth another try."""


class CallbackRejectedError(Exception):
    """A callback URL answered 4xx: trying again would not help."""


async def start_dispatcher(controller: Controller) -> Dispatcher:
    """Load the profile's queue plugin, build the dispatcher and start it."""
    profile, plugins = controller.profile, controller.plugins
    name, options = profile.queue
    plugins.load({"queues": [name]})
    profile.check_plugin_options(("queue", name), plugins.get("queues", name), options)
    queue = plugins.create_queue(name, data_dir=controller.data_dir, **options)
    cfg = profile.model.controller
    dispatcher = Dispatcher(
        controller, queue, max_payload=cfg.async_max_payload, concurrency=cfg.async_concurrency,
        idempotency_window=cfg.idempotency_window, metrics=controller.metrics,
    )  # fmt: skip
    await dispatcher.start()
    return dispatcher


class Dispatcher:
    """Accepts async calls (``accept``) and runs them with workers that lease from the queue.

    One task leases calls while fewer than ``concurrency`` run, each function capped at
    ``async_capacity``; a task per call runs it through ``Controller.invoke`` with the call's
    id as request id (so every attempt has the same id, as the handler's context shows), then
    acks it, schedules a retry or dead-letters it, and calls its destination.
    """

    def __init__(
        self, controller: Controller, queue: AsyncQueue, *, max_payload: int, concurrency: int,
        idempotency_window: float, metrics: CollectorRegistry,
    ) -> None:  # fmt: skip
        self.controller = controller
        self.queue = queue
        self.max_payload = max_payload
        self.concurrency = concurrency
        self.idempotency_window = idempotency_window
        self._running: dict[str, QueuedCall] = {}
        self._per_function: dict[str, int] = {}
        self._holding: set[str] = set()  # calls counted in _per_function
        self._capacity: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._background: list[asyncio.Task[None]] = []
        self._wakeup = asyncio.Event()
        self._stopping = False
        self._http: aiohttp.ClientSession | None = None
        self._accepted = Counter("easyfaas_async_accepted", "Async calls accepted", ["function"], registry=metrics)
        self._attempts = Counter("easyfaas_async_attempts", "Async call runs by outcome", ["function", "status"], registry=metrics)
        self._dead = Counter("easyfaas_async_dead_letters", "Async calls given up", ["function", "reason"], registry=metrics)
        self._depth = Gauge("easyfaas_async_queue", "Async calls in the queue by state", ["state"], registry=metrics)

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        # Records of calls accepted before a crash may not have reached the activation store.
        for call in await self.queue.pending():
            self._store(call, "queued")
        self._background = [
            asyncio.create_task(self._lease_loop(), name="async-lease"),
            asyncio.create_task(self._heartbeat(), name="async-heartbeat"),
        ]

    async def stop(self, timeout: float = 30.0) -> None:
        """Stop leasing, give running calls ``timeout`` seconds, put the rest back; close the queue."""
        self._stopping = True
        self._wakeup.set()
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)
        for task in set(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.close()
        await self.queue.close()

    # -- accepting -----------------------------------------------------------------------

    async def accept(
        self, function: str, event: bytes, *, qualifier: str = LATEST, idempotency_key: str | None = None,
        trigger: str = "api",
    ) -> str:  # fmt: skip
        """Store the call durably and return its activation id (the first call's, for a key
        already used within the idempotency window)."""
        if self._stopping or not self.controller.accepting:
            raise PlatformError("the engine is shutting down")
        return await self._enqueue(function, event, qualifier=qualifier, idempotency_key=idempotency_key, trigger=trigger)

    async def _enqueue(self, function: str, event: bytes, *, qualifier: str, idempotency_key: str | None, trigger: str) -> str:
        # Also used for destinations, which must be enqueued even while the engine stops.
        await self.controller.registry.resolve(function, qualifier)  # unknown: 404 now, not a dead letter later
        if len(event) > self.max_payload:
            raise PayloadTooLargeError(f"the event is {len(event)} bytes; the limit for async calls is {self.max_payload}")
        if idempotency_key is not None and not 0 < len(idempotency_key) <= MAX_IDEMPOTENCY_KEY:
            raise FunctionSpecError(f"an idempotency key must have 1 to {MAX_IDEMPOTENCY_KEY} characters")
        now = time.time()
        call = QueuedCall(
            id=uuid.uuid4().hex, function=function, event=event, qualifier=qualifier or LATEST, trigger=trigger,
            idempotency_key=idempotency_key, enqueued_at=now, not_before=now,
        )  # fmt: skip
        window = self.idempotency_window if idempotency_key else 0.0
        call_id, created = await self.queue.enqueue(call, dedupe_window=window)
        if created:
            self._accepted.labels(function).inc()
            self._store(call, "queued")
            self._wakeup.set()
        return call_id

    async def redrive(self, call_id: str) -> QueuedCall | None:
        call = await self.queue.redrive(call_id)
        if call is not None:
            self._store(call, "queued", redriven_at=call.enqueued_at)
            self._wakeup.set()
        return call

    # -- leasing -------------------------------------------------------------------------

    async def _lease_loop(self) -> None:
        while not self._stopping:
            # Cleared before leasing, so a call accepted meanwhile is not slept through.
            self._wakeup.clear()
            free = self.concurrency - len(self._running)
            if free <= 0:
                await self._sleep(POLL_INTERVAL)
                continue
            capacity = {f: cap - self._per_function.get(f, 0) for f, cap in self._capacity.items()}
            capacity.update({f: 0 for f in self._per_function if f not in self._capacity})  # resolving its first call
            try:
                # A function never run yet gets one call per lease: its capacity is known once
                # that call resolved it, and the next lease (at once) fills the rest.
                calls = await self.queue.lease(
                    limit=free, visibility_timeout=VISIBILITY_TIMEOUT, capacity=capacity, default_capacity=1
                )
            except Exception:
                log.exception("leasing async calls failed")
                await self._sleep(POLL_INTERVAL)
                continue
            if not calls:
                await self._sleep(POLL_INTERVAL)
            for call in calls:
                self._launch(call)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), seconds)

    def _wake_in(self, seconds: float) -> None:
        asyncio.get_running_loop().call_later(max(0.0, seconds), self._wakeup.set)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(VISIBILITY_TIMEOUT / 3)
            try:
                if self._running:
                    await self.queue.extend(list(self._running.values()), VISIBILITY_TIMEOUT)
                for state, n in (await self.queue.stats()).items():
                    self._depth.labels(state).set(n)
            except Exception:
                log.exception("extending async leases failed")

    def _launch(self, call: QueuedCall) -> None:
        self._running[call.id] = call
        self._per_function[call.function] = self._per_function.get(call.function, 0) + 1
        self._holding.add(call.id)
        task = asyncio.create_task(self._process(call), name=f"async-{call.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _release_function(self, call: QueuedCall) -> None:
        if call.id in self._holding:
            self._holding.discard(call.id)
            left = self._per_function[call.function] - 1
            if left:
                self._per_function[call.function] = left
            else:
                del self._per_function[call.function]
            self._wakeup.set()

    # -- running one call ----------------------------------------------------------------

    async def _process(self, call: QueuedCall) -> None:
        try:
            await self._attempt(call)
        except asyncio.CancelledError:
            # Stopping: the call goes back as it was; had it finished, its lease is gone and this is a no-op.
            with contextlib.suppress(Exception):
                await asyncio.shield(self.queue.nack(call, retry_at=time.time()))
            raise
        except Exception:
            # Its lease runs out and the call is delivered again: at least once, never lost.
            log.exception("async call %s of %s failed in the dispatcher", call.id, call.function)
        finally:
            self._release_function(call)
            self._running.pop(call.id, None)
            self._wakeup.set()

    async def _attempt(self, call: QueuedCall) -> None:
        controller = self.controller
        try:
            fv = await controller.registry.resolve(call.function, call.qualifier)
        except FunctionNotFoundError as exc:
            await self._give_up(call, None, "function_not_found", error={"errorType": "FunctionNotFound", "errorMessage": str(exc)})
            return
        policy = fv.spec.async_
        self._capacity[call.function] = async_capacity(fv.spec)
        if time.time() - call.enqueued_at > policy.max_event_age:
            await self._give_up(call, fv, "event_age_exceeded")
            return
        if not controller.accepting or self._busy(fv):
            await self._requeue(call, REQUEUE_DELAY)
            return

        n = call.attempts + 1
        started = time.time()
        self._store(call, "running", version=fv.version, attempts=[*call.history, {"n": n, "status": "running", "start": started}])
        # Controller.invoke records the attempt under the call's id; take that record to complete it.
        captured: dict[str, Any] = {}
        controller.activations.intercepts[call.id] = captured.update
        result: InvocationResult | None = None
        error: InvocationError | None = None
        try:
            result = await controller.invoke(
                call.function, call.event, qualifier=call.qualifier, trigger=call.trigger, request_id=call.id
            )
        except ThrottledError as exc:
            self._attempts.labels(call.function, "throttled").inc()
            await self._requeue(call, float(exc.retry_after), base=captured)
            return
        except FunctionNotFoundError as exc:  # deleted (or its alias) since the lease
            await self._give_up(call, None, "function_not_found", error={"errorType": "FunctionNotFound", "errorMessage": str(exc)})
            return
        except InvocationError as exc:
            if not controller.accepting:  # refused or cut short by shutdown: not the function's fault
                await self._requeue(call, REQUEUE_DELAY, base=captured)
                return
            error = exc
        finally:
            controller.activations.intercepts.pop(call.id, None)
            self._release_function(call)

        attempt = {
            "n": n, "status": "success" if error is None else error.status, "start": started,
            "duration_ms": captured.get("duration_ms", (time.time() - started) * 1000), "version": fv.version,
            "error": None if error is None else _brief(error),
        }  # fmt: skip
        self._attempts.labels(call.function, attempt["status"]).inc()
        history = [*call.history, attempt]
        if error is None:
            assert result is not None
            done = await self._notify(policy.on_success, call, fv, "Success", history, result=result)
            # Record first, then ack: a crash in between runs the call again (at least once)
            # instead of leaving a finished call's record reading "running" forever. The record
            # goes to the node's SQLite and, when there is one, to the shared archive (issue #10;
            # best effort: while the archive fails it is kept and written later, and the ack goes on).
            self._store(call, "success", base=captured, attempts=history, **done)
            await self.controller.activations.flush(archive=True)
            await self.queue.ack(call)
            return
        retry_at = time.time() + backoff_delay(policy, n)
        if n < policy.max_attempts and retry_at - call.enqueued_at <= policy.max_event_age:
            if await self.queue.nack(call, retry_at=retry_at, attempt=attempt):
                self._wake_in(retry_at - time.time())
                self._store(call, "queued", base=captured, attempts=history, next_attempt_at=retry_at)
            return
        reason = "retries_exhausted" if n >= policy.max_attempts else "event_age_exceeded"
        await self._give_up(call, fv, reason, attempt=attempt, base=captured, history=history, error_obj=error)

    def _busy(self, fv: FunctionVersion) -> bool:
        """Whether a call now would queue inside the scheduler: then synchronous callers go first."""
        pool = self.controller.scheduler.pools.get(fv.key)
        if pool is None:
            return False
        if pool.waiters:
            return True
        limit = fv.spec.instance_concurrency
        free_slot = any(inst.usable and inst.inflight < limit for inst in pool.instances)
        return not free_slot and len(pool.instances) + pool.starting >= fv.spec.concurrency

    async def _requeue(self, call: QueuedCall, delay: float, *, base: dict[str, Any] | None = None) -> None:
        """Put the call back without counting an attempt."""
        retry_at = time.time() + delay * random.uniform(0.5, 1.5)
        if await self.queue.nack(call, retry_at=retry_at):
            self._wake_in(retry_at - time.time())
            self._store(call, "queued", base=base, next_attempt_at=retry_at)

    async def _give_up(
        self, call: QueuedCall, fv: FunctionVersion | None, reason: str, *, attempt: dict[str, Any] | None = None,
        base: dict[str, Any] | None = None, history: list[dict[str, Any]] | None = None,
        error: dict[str, Any] | None = None, error_obj: InvocationError | None = None,
    ) -> None:  # fmt: skip
        """Dead-letter the call, after telling its ``on_failure`` destination."""
        history = history if history is not None else list(call.history)
        condition = "EventAgeExceeded" if reason == "event_age_exceeded" else "RetriesExhausted"
        done: dict[str, Any] = {}
        if fv is not None:
            done = await self._notify(fv.spec.async_.on_failure, call, fv, condition, history, error=error_obj)
        if not await self.queue.dead_letter(call, reason=reason, attempt=attempt):
            return
        self._dead.labels(call.function, reason).inc()
        if attempt is not None:
            status = attempt["status"]
        elif reason == "event_age_exceeded":
            status = "expired"
        else:
            status = "platform_error"
        extra: dict[str, Any] = {"error": error} if error is not None else {}
        log.info("async call %s of %s dead-lettered: %s", call.id, call.function, reason)
        self._store(call, status, base=base, attempts=history, dead_letter=reason, **extra, **done)

    # -- activation records --------------------------------------------------------------

    def _store(self, call: QueuedCall, status: str, *, base: dict[str, Any] | None = None, **extra: Any) -> None:
        """Write the call's activation record: ``base`` (an attempt's record, if any) plus async fields."""
        record: dict[str, Any] = {
            "id": call.id, "function": call.function, "version": None, "trigger": call.trigger,
            "start": call.enqueued_at, "end": None, "duration_ms": 0.0, "wait_ms": 0.0, "init_ms": None,
            "instance": "", "error": None, "result": None, "logs": "",
        }  # fmt: skip
        if base:
            record.update(base)
        record.update(
            status=status, invocation_type="Event", accepted_at=call.enqueued_at, attempts=list(call.history),
            idempotency_key=call.idempotency_key,
        )
        record.update(extra)
        self.controller.activations.add(record)

    # -- destinations --------------------------------------------------------------------

    async def _notify(
        self, target: str | None, call: QueuedCall, fv: FunctionVersion, condition: str, history: list[dict[str, Any]],
        *, result: InvocationResult | None = None, error: InvocationError | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        """Tell ``target`` (a function or a callback URL) how the call ended; what to record about it.

        A destination that cannot be reached does not change the call's outcome: it is
        recorded and logged. A crash before the call is acked repeats the notification
        (at least once); a function destination dedupes it by idempotency key.
        """
        if not target:
            return {}
        summary: dict[str, Any] = {"target": target, "condition": condition}
        try:
            if target.startswith(("http://", "https://")):
                await self._callback(target, call, condition, history, result, error)
            else:
                event = destination_event(call, fv, condition, history, result, error)
                summary["activation_id"] = await self._enqueue(
                    target, _dumps(event).encode(), qualifier=LATEST, trigger="destination",
                    idempotency_key=f"destination:{call.id}:{condition}:{len(history)}",
                )  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - whatever broke, the call's own outcome stands
            log.warning("destination %s of async call %s failed: %s", target, call.id, exc)
            return {"destination": {**summary, "delivered": False, "error": f"{type(exc).__name__}: {exc}"}}
        return {"destination": {**summary, "delivered": True}}

    async def _callback(
        self, url: str, call: QueuedCall, condition: str, history: list[dict[str, Any]],
        result: InvocationResult | None, error: InvocationError | None,
    ) -> None:  # fmt: skip
        """POST the result to ``url`` with OpenFaaS' callback headers; retried on 429, 5xx and network errors."""
        last = history[-1] if history else None
        if result is not None:
            body, status = result.body, 200
            content_type = "application/octet-stream" if result.raw else "application/json"
        else:
            if error is not None:
                payload, status = error.to_dict(), error.http_status
                payload.pop("logs", None)
            else:  # never ran within its max event age
                payload, status = {"errorType": "EventAgeExceeded", "errorMessage": "the call was not run in time"}, 408
            body, content_type = _dumps(payload).encode(), "application/json"
        headers = {
            "Content-Type": content_type,
            "X-Call-Id": call.id,
            "X-Function-Name": call.function,
            "X-Function-Status": str(status),
            "X-Duration-Seconds": f"{(last['duration_ms'] if last else 0.0) / 1000:.6f}",
            "X-Easyfaas-Condition": condition,
            "X-Easyfaas-Attempts": str(len(history)),
        }
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=CALLBACK_TIMEOUT))
        session = self._http
        retrying = AsyncRetrying(
            stop=stop_after_attempt(CALLBACK_ATTEMPTS),
            wait=wait_exponential_jitter(initial=0.5, max=10),
            retry=retry_if_exception_type((aiohttp.ClientError, TimeoutError, _RetryableStatus)),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                async with session.post(url, data=body, headers=headers) as response:
                    if response.status == 429 or response.status >= 500:
                        raise _RetryableStatus(f"{url} answered {response.status}")
                    if response.status >= 400:
                        raise CallbackRejectedError(f"{url} answered {response.status}")


def _brief(error: InvocationError) -> dict[str, Any]:
    body = error.to_dict()  # a FunctionError's errorType is the handler's exception type
    return {"errorType": body.get("errorType"), "errorMessage": body.get("errorMessage")}


def destination_event(
    call: QueuedCall, fv: FunctionVersion, condition: str, history: list[dict[str, Any]],
    result: InvocationResult | None, error: InvocationError | None,
) -> dict[str, Any]:  # fmt: skip
    """The event a destination function receives: the shape of AWS Lambda's destination records."""
    try:
        request_payload: Any = json.loads(call.event)
    except ValueError:
        request_payload = call.event.decode("utf-8", "replace")
    response_payload: Any = None
    response: dict[str, Any] = {"statusCode": None, "executedVersion": fv.version}
    if result is not None:
        response["statusCode"] = 200
        try:
            response_payload = json.loads(result.body) if not result.raw else result.body.decode("utf-8", "replace")
        except ValueError:
            response_payload = result.body.decode("utf-8", "replace")
    elif error is not None:
        # As Lambda does: a function error is a 200 with ``functionError``; the engine's own failures keep their status.
        response["statusCode"] = 200 if isinstance(error, FunctionError) else error.http_status
        response["functionError"] = "Unhandled"
        response_payload = {k: v for k, v in error.to_dict().items() if k not in ("logs", "status")}
    return {
        "version": "1.0",
        "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "requestContext": {
            "requestId": call.id,
            "functionArn": _ARN.format(name=call.function, version=fv.version),
            "condition": condition,
            "approximateInvokeCount": len(history),
        },
        "requestPayload": request_payload,
        "responseContext": response,
        "responsePayload": response_payload,
    }
