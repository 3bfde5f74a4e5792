"""Framing of the runtime protocol: the messages between the engine and a runner.

This module imports only the standard library: runners inside a sandbox load it by
file path (see ``docs/runtime-protocol.md``), without the engine's dependencies.

A frame is a 13-byte header followed by two parts::

    !I request id   !I meta length   !I body length   !B kind
    meta: UTF-8 JSON object (may be empty: length 0 means {})
    body: opaque bytes (the event, the result, ...)

Request ids let one connection carry many calls at once; control messages (LOAD, PING)
may use 0. docs/runtime-protocol.md describes every message.
"""

from __future__ import annotations

import json
import socket
import struct

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs runners ~2.6 ms of start-up; annotations need it only for mypy
    from typing import Any

__all__ = [
    "HEADER",
    "MAX_FRAME",
    "FrameError",
    "FrameReader",
    "Kind",
    "decode_header",
    "decode_meta",
    "encode",
    "recv_frame",
    "send_frame",
]

HEADER = struct.Struct("!IIIB")
#: Largest meta+body a peer accepts; a bigger frame is a protocol error, not an allocation.
MAX_FRAME = 64 * 1024 * 1024


class Kind:
    """Message kinds. Engine → runner: LOAD, INVOKE, PING, SHUTDOWN; runner → engine: the rest."""

    LOAD = 1  # meta: {code_dir, handler, function, version, memory_mb, env, instance, arn}
    LOADED = 2  # meta: {init_ms, logs}
    LOAD_ERROR = 3  # meta: {type, message, stack, logs}
    INVOKE = 4  # meta: {rid, deadline (epoch ms), log_cap}; body: JSON event
    RESULT = 5  # meta: {ms, raw, logs, truncated}; body: JSON result or raw bytes
    ERROR = 6  # meta: {type, message, stack, logs, truncated}
    PING = 7
    PONG = 8
    SHUTDOWN = 9
    # Streamed calls (docs/runtime-protocol.md, "Streamed calls"): bodies of any size, in chunks.
    INVOKE_STREAM = 10  # meta: as INVOKE; body: the event without its body (JSON); CHUNK frames follow
    CHUNK = 11  # both ways, same request id; body: a piece of the body; empty body: the end (meta: {abort})
    HEAD = 12  # runner → engine, before a streamed reply's first CHUNK; meta: {status, headers}


class FrameError(Exception):
    """A peer sent bytes that are not a valid frame; the connection must be closed."""


_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def encode(kind: int, request_id: int = 0, meta: dict[str, Any] | None = None, body: bytes = b"") -> bytes:
    """Return one frame as bytes."""
    meta_bytes = _dumps(meta).encode() if meta else b""
    return HEADER.pack(request_id, len(meta_bytes), len(body), kind) + meta_bytes + body


def decode_header(header: bytes | bytearray) -> tuple[int, int, int, int]:
    """Return (request_id, meta_len, body_len, kind), refusing oversized frames."""
    request_id, meta_len, body_len, kind = HEADER.unpack(header)
    if meta_len + body_len > MAX_FRAME:
        raise FrameError(f"frame of {meta_len + body_len} bytes exceeds the {MAX_FRAME}-byte limit")
    return request_id, meta_len, body_len, kind


def decode_meta(meta_bytes: bytes) -> dict[str, Any]:
    if not meta_bytes:
        return {}
    try:
        meta = json.loads(meta_bytes)
    except ValueError as exc:
        raise FrameError(f"frame meta is not JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise FrameError("frame meta is not a JSON object")
    return meta


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    if n == 0:
        return b""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise EOFError("peer closed the connection")
        got += k
    return bytes(buf)


def recv_frame(sock: socket.socket) -> tuple[int, int, dict[str, Any], bytes]:
    """Blocking read of one frame: (kind, request_id, meta, body). EOFError at end of stream."""
    request_id, meta_len, body_len, kind = decode_header(_recv_exact(sock, HEADER.size))
    meta = decode_meta(_recv_exact(sock, meta_len))
    body = _recv_exact(sock, body_len)
    return kind, request_id, meta, body


class FrameReader:
    """Blocking, buffered reads of frames from one socket: one ``recv`` brings in as many
    frames as have arrived (calls queued behind each other), instead of three per frame.

    Once a socket has a reader, read it only through that reader (never ``recv_frame`` or
    ``sock.recv``): it may already hold the bytes of the next frames. Frames put in
    ``backlog`` (read ahead by a streamed call, say) come out first.
    """

    def __init__(self, sock: socket.socket, size: int = 4096) -> None:
        self.sock = sock
        self.size = size
        self.backlog: list[tuple[int, int, dict[str, Any], bytes]] = []
        self._buf = b""
        self._pos = 0

    def _fill(self, need: int) -> None:
        """Make at least ``need`` unread bytes available."""
        have = len(self._buf) - self._pos
        parts = [self._buf[self._pos :]] if have else []
        while have < need:
            chunk = self.sock.recv(max(self.size, need - have))
            if not chunk:
                raise EOFError("peer closed the connection")
            parts.append(chunk)
            have += len(chunk)
        self._buf = parts[0] if len(parts) == 1 else b"".join(parts)
        self._pos = 0

    def next(self) -> tuple[int, int, dict[str, Any], bytes]:
        """The next frame: (kind, request_id, meta, body). EOFError at end of stream."""
        if self.backlog:
            return self.backlog.pop(0)
        if len(self._buf) - self._pos < HEADER.size:
            self._fill(HEADER.size)
        pos = self._pos
        request_id, meta_len, body_len, kind = decode_header(self._buf[pos : pos + HEADER.size])
        end = pos + HEADER.size + meta_len + body_len
        if end > len(self._buf):
            self._fill(end - pos)
            pos = 0
            end = HEADER.size + meta_len + body_len
        buf = self._buf
        start = pos + HEADER.size
        meta = decode_meta(buf[start : start + meta_len]) if meta_len else {}
        body = buf[start + meta_len : end]
        self._pos = end
        return kind, request_id, meta, body


def send_frame(
    sock: socket.socket, kind: int, request_id: int = 0, meta: dict[str, Any] | None = None, body: bytes = b""
) -> None:
    """Blocking write of one frame."""
    sock.sendall(encode(kind, request_id, meta, body))
