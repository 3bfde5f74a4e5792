"""A warm instance as the controller sees it: one multiplexed unix-socket connection to its runner.

This is the hot path: frames go straight from here to the runner, never through the funclet.

Instance states (``GET /v1/instances``, ``easyfaas ps``)::

    binding ──warm-up ok──▶ idle ◀──call done──▶ busy
                             │                    │
                 keep-alive / new version         │ timeout, crash, OOM, lost connection
                             ▼                    ▼
                          retiring ──────────▶  dead
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from easyfaas._json import encode_frame, loads_meta
from easyfaas.errors import InstanceCrashedError, InvocationError
from easyfaas.models import FunctionVersion, SandboxInfo
from easyfaas.sockets import connect_unix
from easyfaas.wire import HEADER, FrameError, Kind, decode_header

__all__ = ["STATES", "Instance", "Reply", "StreamSink"]

STATES = ("binding", "idle", "busy", "retiring", "dead")

Reply = tuple[int, dict[str, Any], bytes]
_HEADER_SIZE = HEADER.size
#: Frame kinds from this number up (HEAD, CHUNK) belong to a streamed reply.
_STREAM_KINDS = min(Kind.CHUNK, Kind.HEAD)


class StreamSink(Protocol):
    """Where a streamed call's HEAD and CHUNK frames go (``controller.streaming.StreamCall``)."""

    def feed(self, kind: int, meta: dict[str, Any], body: bytes) -> None: ...


@dataclass(eq=False)
class Instance(asyncio.Protocol):
    """One bound sandbox serving one function version."""

    fv: FunctionVersion
    sandbox: SandboxInfo
    init_ms: float = 0.0
    state: str = "idle"
    inflight: int = 0
    calls: int = 0
    created: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.monotonic)
    death: InvocationError | None = None
    lost_callback: Callable[[Instance], None] | None = None
    #: What the handler printed while loading; attached to the call that cold-started it.
    init_logs: str = ""
    destroying: bool = False
    last_pinged: float = field(default_factory=time.monotonic)
    #: The last INVOKE sent; a call sent before it is answered is prefetched (scheduler.py).
    last_invoke: asyncio.Future[Reply] | None = None
    #: The call whose timeout is running, and the prefetched ones in line behind it, in the
    #: order sent: ``[future, timeout, timer or None]`` (scheduler.py).
    running: asyncio.Future[Reply] | None = None
    in_line: deque[list[Any]] = field(default_factory=deque)
    #: Handler time of recent calls (ms, moving average); None before the first call.
    call_ms: float | None = None
    #: Calls it may hold: instance_concurrency, more under prefetch (scheduler.py).
    slots: int = 1
    #: The prefetch threshold (ms) when this instance may prefetch, else 0.
    prefetch_ms: float = 0.0
    #: Streamed calls in flight by request id: their HEAD and CHUNK frames go to ``feed()``
    #: (issue #7, controller/streaming.py).
    streams: dict[int, StreamSink] = field(default_factory=dict)
    #: Set while the connection's write buffer is over its high-water mark; streamed request
    #: bodies wait for it (``pause_writing``/``resume_writing``).
    write_paused: asyncio.Future[None] | None = None
    _transport: asyncio.Transport | None = None
    _pending: dict[int, asyncio.Future[Reply]] = field(default_factory=dict)
    _buffer: bytearray = field(default_factory=bytearray)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _lost: asyncio.Event = field(default_factory=asyncio.Event)
    #: Frames sent during this turn of the event loop, written together at its end.
    _out: list[bytes] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.sandbox.id

    @property
    def usable(self) -> bool:
        return self.state in ("idle", "busy")

    async def connect(self) -> None:
        sock = await connect_unix(self.sandbox.socket_path)
        await asyncio.get_running_loop().create_unix_connection(lambda: self, sock=sock)

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses

    def data_received(self, data: bytes) -> None:
        buf = self._buffer
        buf += data
        offset = 0
        size = len(buf)
        try:
            while size - offset >= _HEADER_SIZE:
                rid, meta_len, body_len, kind = decode_header(buf[offset : offset + _HEADER_SIZE])
                end = offset + _HEADER_SIZE + meta_len + body_len
                if end > size:
                    break
                start = offset + _HEADER_SIZE
                meta = loads_meta(bytes(buf[start : start + meta_len])) if meta_len else {}
                body = bytes(buf[start + meta_len : end])
                offset = end
                if kind >= _STREAM_KINDS:  # HEAD, CHUNK: part of a streamed reply (streaming.py)
                    sink = self.streams.get(rid)
                    if sink is not None:
                        sink.feed(kind, meta, body)
                    continue
                future = self._pending.pop(rid, None)
                if future is not None and not future.done():
                    future.set_result((kind, meta, body))
        except FrameError as exc:
            self.fail(InstanceCrashedError(f"instance {self.id} sent an invalid frame: {exc}"))
            return
        if offset:
            del buf[:offset]

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._lost.set()
        if self.state != "dead":
            self.state = "dead"
        if self._pending and self.death is not None:
            self._fail_pending(self.death)
        if self.lost_callback is not None:
            self.lost_callback(self)

    # -- calls ---------------------------------------------------------------------------

    def send(self, kind: int, meta: dict[str, Any], body: bytes) -> asyncio.Future[Reply]:
        """Send one request; the future resolves with the runner's reply."""
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        if self._transport is None or self.state == "dead":
            future.set_exception(self.death or InstanceCrashedError(f"instance {self.id} is not connected"))
            return future
        rid = next(self._ids)
        self._pending[rid] = future
        out = self._out
        if not out:
            future.get_loop().call_soon(self._flush)
        out.append(encode_frame(kind, rid, meta, body))
        return future

    def _flush(self) -> None:
        """One write (one wake-up of the runner) for every frame sent in a turn of the loop."""
        out, self._out = self._out, []
        if self._transport is not None and out:
            self._transport.write(out[0] if len(out) == 1 else b"".join(out))

    def _write_now(self, frame: bytes) -> None:
        """Write ``frame`` at once, after the frames sent before it (the runner serves in order)."""
        assert self._transport is not None
        if self._out:
            self._flush()
        self._transport.write(frame)

    # -- streamed calls (issue #7, controller/streaming.py) ----------------------------------

    def send_stream(self, meta: dict[str, Any], head: bytes, sink: StreamSink) -> tuple[int, asyncio.Future[Reply]]:
        """Send INVOKE_STREAM: its HEAD and CHUNK replies go to ``sink``, its end (RESULT or
        ERROR) resolves the future. Returns the frame's request id (0 if not sent)."""
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        if self._transport is None or self.state == "dead":
            future.set_exception(self.death or InstanceCrashedError(f"instance {self.id} is not connected"))
            return 0, future
        rid = next(self._ids)
        self._pending[rid] = future
        self.streams[rid] = sink
        self._write_now(encode_frame(Kind.INVOKE_STREAM, rid, meta, head))
        return rid, future

    def send_chunk(self, rid: int, data: bytes, meta: dict[str, Any] | None = None) -> bool:
        """One CHUNK of a streamed call's request body; ``False`` once the connection is gone."""
        if self._transport is None:
            return False
        self._write_now(encode_frame(Kind.CHUNK, rid, meta, data))
        return True

    def pause_writing(self) -> None:
        if self.write_paused is None:
            self.write_paused = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        waiter, self.write_paused = self.write_paused, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def pause_reading(self) -> None:
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self._transport is not None:
            self._transport.resume_reading()

    async def wait_lost(self) -> None:
        await self._lost.wait()

    def fail(self, error: InvocationError) -> None:
        """Mark the instance dead, fail what is in flight with ``error`` and drop the connection."""
        if self.death is None:
            self.death = error
        self.state = "dead"
        self._fail_pending(self.death)
        self.close()

    def _fail_pending(self, error: InvocationError) -> None:
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(error)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    @property
    def pending(self) -> int:
        return len(self._pending)

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "function": self.fv.name,
            "version": self.fv.version,
            "runtime": self.fv.spec.runtime,
            "state": self.state,
            "inflight": self.inflight,
            "calls": self.calls,
            "init_ms": round(self.init_ms, 3),
            "created": self.created,
            "idle_s": round(time.monotonic() - self.last_used, 3) if self.inflight == 0 else 0.0,
            "pid": self.sandbox.pid,
        }
