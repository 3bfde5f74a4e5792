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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from easyfaas._json import encode_frame, loads_meta
from easyfaas.errors import InstanceCrashedError, InvocationError
from easyfaas.models import FunctionVersion, SandboxInfo
from easyfaas.sockets import connect_unix
from easyfaas.wire import HEADER, FrameError, decode_header

__all__ = ["STATES", "Instance", "Reply"]

STATES = ("binding", "idle", "busy", "retiring", "dead")

Reply = tuple[int, dict[str, Any], bytes]
_HEADER_SIZE = HEADER.size


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
    _transport: asyncio.Transport | None = None
    _pending: dict[int, asyncio.Future[Reply]] = field(default_factory=dict)
    _buffer: bytearray = field(default_factory=bytearray)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _lost: asyncio.Event = field(default_factory=asyncio.Event)

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
        self._transport.write(encode_frame(kind, rid, meta, body))
        return future

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
