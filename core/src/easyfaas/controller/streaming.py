"""Streamed calls (issue #7): request and response bodies of any size, in chunks, in bounded memory.

A function deployed with ``streaming: true`` gets its HTTP calls this way (``Controller.invoke_stream``)::

    trigger ──body──▶ StreamCall._pump ──CHUNK──▶ Instance (transport) ──▶ runner ──▶ process stdin
    trigger ◀─chunks─ StreamCall (deque) ◀─HEAD/CHUNK─ Instance.data_received ◀── runner ◀── stdout
                                         ◀─RESULT/ERROR (the end: exit code, logs)

Memory stays bounded at every hop by backpressure, never by buffering: the pump sends the
next chunk only while the instance's transport is under its high-water mark (asyncio's
``pause_writing``/``resume_writing``); the reply side stops reading the instance's socket
(``pause_reading``) once ``READ_HIGH`` bytes wait for the trigger, so the runner's blocking
writes wait, and so does the process. The slot, limits, queueing, timeout (the instance is
killed) and activation record are those of ``Controller.invoke``. The protocol is in
docs/runtime-protocol.md, "Streamed calls".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from easyfaas._json import dumps
from easyfaas.errors import (
    FunctionError,
    FunctionTimeoutError,
    InstanceCrashedError,
    InvocationError,
    PayloadTooLargeError,
    PlatformError,
)
from easyfaas.interfaces import InvocationResult
from easyfaas.wire import Kind

if TYPE_CHECKING:
    from easyfaas.controller.engine import Controller
    from easyfaas.controller.instance import Instance, Reply
    from easyfaas.models import FunctionVersion

__all__ = ["CHUNK_MAX", "READ_HIGH", "READ_LOW", "StreamCall"]

log = logging.getLogger(__name__)

#: Reply bytes waiting for the trigger before the instance's socket stops being read.
READ_HIGH = 1 << 20
#: ... and below which it is read again.
READ_LOW = 256 << 10
#: The largest CHUNK frame the controller sends (bigger pieces of a body are split).
CHUNK_MAX = 1 << 20
#: How much of the waiting reply one step of the iteration hands over at most.
_YIELD_MAX = 256 << 10


class StreamCall:
    """One streamed call: its slot, its request-body pump, its reply's chunks and its end.

    Built by ``Controller.invoke_stream``, which awaits ``start()``; a trigger then iterates
    it and calls ``aclose()`` (``easyfaas.interfaces.StreamedInvocation``). ``on_done`` runs
    exactly once, after the slot is released and the activation recorded.
    """

    def __init__(self, ctl: Controller, fv: FunctionVersion, *, trigger: str, request_id: str | None,
                 on_done: Callable[[], None]) -> None:  # fmt: skip
        self.request_id = request_id or os.urandom(16).hex()
        self.status = 200
        self.headers: dict[str, str] = {}
        self.result: InvocationResult | None = None
        #: Request and reply body bytes that went through.
        self.bytes_in = 0
        self.bytes_out = 0
        self.fv = fv
        self._ctl = ctl
        self._trigger = trigger
        self._on_done: Callable[[], None] | None = on_done
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._reading_paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._end: asyncio.Future[Reply] | None = None
        self._error: InvocationError | None = None  # decided here (payload too large), wins over the runner's
        self._inst: Instance | None = None
        self._frame_rid = 0
        self._init_ms: float | None = None
        self._closed = False
        self._in_body = False  # the pump waits for the caller's next body chunk
        self._pump_task: asyncio.Task[None] | None = None
        self._finisher: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._start = time.time()
        self._t0 = time.perf_counter()
        self._t1 = self._t0

    # -- starting --------------------------------------------------------------------------

    async def start(self, event: Any, body: AsyncIterable[bytes]) -> None:
        """Take a slot, send INVOKE_STREAM, pump the body; return once the reply's head came.

        Raises the call's ``InvocationError`` when it ends before any head (it is recorded)."""
        ctl, fv = self._ctl, self.fv
        try:
            inst, self._init_ms = await ctl.scheduler.acquire(fv, self.request_id)
        except InvocationError as exc:
            self._record_failure(exc)
            self._done()
            raise
        except BaseException:
            self._done()
            raise
        self._inst = inst
        self._t1 = time.perf_counter()
        timeout = fv.spec.timeout
        meta = {"rid": self.request_id, "deadline": (time.time() + timeout) * 1000, "log_cap": ctl.log_cap}
        head = event if isinstance(event, bytes) else dumps(event)
        self._frame_rid, end = inst.send_stream(meta, head, self)
        self._end = end
        inst.last_invoke = inst.running = end  # a call prefetched behind this one starts when it ends (scheduler.py)
        end.add_done_callback(self._on_end)
        self._timer = asyncio.get_running_loop().call_later(timeout, self._expire, timeout)
        self._pump_task = asyncio.create_task(self._pump(body), name=f"stream-body-{self.request_id}")
        self._finisher = asyncio.create_task(self._finish(), name=f"stream-end-{self.request_id}")
        try:
            first: list[asyncio.Future[Any]] = [self._started, end]
            await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            await self.aclose()  # nobody will read it: the call ends on its own and is recorded
            raise
        if not self._started.done():  # ended without a head
            error = self._end_error()
            if error is not None:
                await asyncio.shield(self._finisher)  # recorded, slot released
                raise error

    # -- frames from the instance (Instance.data_received) ---------------------------------

    def feed(self, kind: int, meta: dict[str, Any], body: bytes) -> None:
        if kind == Kind.CHUNK:
            if self._closed or not body:
                return
            self._chunks.append(body)
            self._buffered += len(body)
            self.bytes_out += len(body)
            if self._buffered > READ_HIGH and not self._reading_paused and self._inst is not None:
                self._reading_paused = True
                self._inst.pause_reading()
            self._wake()
        elif kind == Kind.HEAD and not self._started.done():
            with contextlib.suppress(TypeError, ValueError):
                self.status = int(meta.get("status", 200))
            headers = meta.get("headers")
            if isinstance(headers, dict):
                self.headers = {str(k): str(v) for k, v in headers.items()}
            self._started.set_result(None)

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _on_end(self, _end: asyncio.Future[Reply]) -> None:
        if self._inst is not None:
            self._inst.streams.pop(self._frame_rid, None)
        if self._in_body and self._pump_task is not None:
            self._pump_task.cancel()  # the runner answered: the rest of the body is not wanted
        self._wake()

    def _expire(self, timeout: float) -> None:
        end, inst = self._end, self._inst
        if end is None or inst is None or end.done():
            return
        end.set_exception(
            FunctionTimeoutError(f"function {self.fv.name!r} timed out after {timeout:g}s; its instance was killed")
        )
        self._ctl.scheduler.kill(
            inst, InstanceCrashedError(f"instance {inst.id} was killed because a call on it timed out")
        )

    # -- the request body ------------------------------------------------------------------

    async def _pump(self, body: AsyncIterable[bytes]) -> None:
        """Send the body as CHUNK frames, never faster than the instance's connection takes
        them; then the empty CHUNK that ends it (``abort`` if the body was cut short)."""
        inst, rid, end = self._inst, self._frame_rid, self._end
        assert inst is not None and end is not None
        cap = self._ctl.max_stream_bytes
        complete = False
        iterator = body.__aiter__()
        try:
            while not end.done():
                self._in_body = True
                try:
                    data = await anext(iterator)
                except StopAsyncIteration:
                    complete = True
                    break
                finally:
                    self._in_body = False
                if not data or end.done():
                    continue
                self.bytes_in += len(data)
                if cap and self.bytes_in > cap:
                    self._error = PayloadTooLargeError(
                        f"the streamed body is over the {cap}-byte limit (max_stream_bytes)"
                    )
                    break
                for start in range(0, len(data), CHUNK_MAX):
                    if not inst.send_chunk(rid, data[start : start + CHUNK_MAX] if len(data) > CHUNK_MAX else data):
                        return
                paused = inst.write_paused
                if paused is not None:
                    either: list[asyncio.Future[Any]] = [paused, end]
                    await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            pass  # the call ended, or its caller went away
        except Exception as exc:  # noqa: BLE001 - the caller's body broke (client gone): the call is aborted
            log.debug("streamed body of %s ended early: %r", self.request_id, exc)
        finally:
            inst.send_chunk(rid, b"", None if complete else {"abort": True})

    # -- the reply -------------------------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[bytes]:
        chunks = self._chunks
        while True:
            if chunks:
                data = chunks.popleft()
                if chunks and len(data) < _YIELD_MAX:  # hand over what waits, in fewer writes
                    parts = [data]
                    size = len(data)
                    while chunks and size < _YIELD_MAX:
                        size += len(chunks[0])
                        parts.append(chunks.popleft())
                    data = b"".join(parts)
                self._buffered -= len(data)
                if self._reading_paused and self._buffered <= READ_LOW and self._inst is not None:
                    self._reading_paused = False
                    self._inst.resume_reading()
                yield data
                continue
            end = self._end
            if end is not None and end.done():
                error = self._end_error()
                if error is not None:
                    raise error
                _, meta, _ = end.result()
                self.result = InvocationResult(
                    request_id=self.request_id, body=b"", raw=True, function=self.fv.name, version=self.fv.version,
                    duration_ms=(time.perf_counter() - self._t0) * 1000, init_ms=self._init_ms, logs=self._logs(meta),
                )  # fmt: skip
                return
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            await waiter

    async def aclose(self) -> None:
        """The caller is done: drop what waits; a call still running loses its caller (the
        rest of its body is not sent, which stops its process; its output is dropped)."""
        if self._closed:
            return
        self._closed = True
        self._chunks.clear()
        self._buffered = 0
        if self._reading_paused and self._inst is not None:
            self._reading_paused = False
            self._inst.resume_reading()
        if self._end is not None and not self._end.done() and self._in_body and self._pump_task is not None:
            self._pump_task.cancel()

    # -- the end ---------------------------------------------------------------------------

    def _end_error(self) -> InvocationError | None:
        """The call's error once it ended, ``None`` for a success."""
        if self._error is not None:
            return self._error
        end = self._end
        assert end is not None and end.done()
        if end.cancelled():
            error: InvocationError = PlatformError("the streamed call was cancelled")
        elif (exc := end.exception()) is not None:
            error = exc if isinstance(exc, InvocationError) else PlatformError(f"the streamed call failed: {exc!r}")
        else:
            kind, meta, _ = end.result()
            if kind == Kind.RESULT:
                return None
            if kind == Kind.ERROR:
                error = FunctionError(
                    str(meta.get("message", "")),
                    details={"errorType": meta.get("type", "Error"), "stackTrace": meta.get("stack", []), "logs": self._logs(meta)},
                )  # fmt: skip
            else:
                error = PlatformError(
                    f"instance {self._inst.id if self._inst else '?'} answered INVOKE_STREAM with message kind {kind}"
                )
        error.request_id = self.request_id
        self._error = error
        return error

    def _logs(self, meta: dict[str, Any]) -> str:
        logs = str(meta.get("logs", ""))
        if self._init_ms is not None and self._inst is not None and self._inst.init_logs:
            logs = self._inst.init_logs + logs
        return logs

    async def _finish(self) -> None:
        """Once the call ended and its body pump stopped: release the slot, record, ``on_done``."""
        end, inst = self._end, self._inst
        assert end is not None and inst is not None
        try:
            with contextlib.suppress(BaseException):
                await asyncio.wait([end])
            if self._pump_task is not None:
                with contextlib.suppress(BaseException):
                    await self._pump_task
        finally:
            if self._timer is not None:
                self._timer.cancel()
            if inst.in_line:
                self._ctl.scheduler.start_next(inst)
            self._ctl.scheduler.release(inst)
            t2 = time.perf_counter()
            error = self._end_error()
            meta = end.result()[1] if not end.cancelled() and end.exception() is None else {}
            if error is None:
                self._ctl._record(self.fv, self.request_id, self._trigger, self._start, self._t0, self._t1, t2, self._init_ms,
                                  inst.id, "success", None, None, self._logs(meta), meta.get("ms"))  # fmt: skip
            else:
                record_error = {k: v for k, v in error.to_dict().items() if k != "logs"}
                logs = self._logs(meta) if meta else str(error.details.get("logs", ""))
                self._ctl._record(self.fv, self.request_id, self._trigger, self._start, self._t0, self._t1, t2, self._init_ms,
                                  inst.id, error.status, record_error, None, logs, meta.get("ms"))  # fmt: skip
            self._done()

    def _record_failure(self, exc: InvocationError) -> None:
        exc.request_id = self.request_id
        t2 = time.perf_counter()
        self._ctl._record(self.fv, self.request_id, self._trigger, self._start, self._t0, t2, t2, self._init_ms, "",
                          exc.status, exc.to_dict(), None, str(exc.details.get("logs", "")))  # fmt: skip

    def _done(self) -> None:
        on_done, self._on_done = self._on_done, None
        if on_done is not None:
            on_done()
