"""asyncio helpers for the runtime protocol, for engine processes (never loaded by runners)."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from easyfaas.sockets import connect_unix
from easyfaas.wire import HEADER, decode_header, decode_meta, encode

__all__ = ["read_frame", "request"]


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, int, dict[str, Any], bytes]:
    """Read one frame: (kind, request_id, meta, body). ``IncompleteReadError`` at EOF."""
    request_id, meta_len, body_len, kind = decode_header(await reader.readexactly(HEADER.size))
    meta = decode_meta(await reader.readexactly(meta_len)) if meta_len else {}
    body = await reader.readexactly(body_len) if body_len else b""
    return kind, request_id, meta, body


async def request(
    socket_path: str, kind: int, meta: dict[str, Any] | None = None, body: bytes = b"", *, timeout: float
) -> tuple[int, dict[str, Any], bytes]:
    """One request/reply exchange on a fresh connection (control messages such as LOAD).

    On the bare socket rather than a stream: a transport, protocol and reader per exchange cost
    more than the exchange itself, and LOAD is on the cold-start path.
    """
    async with asyncio.timeout(timeout):
        sock = await connect_unix(socket_path)
        try:
            loop = asyncio.get_running_loop()
            await loop.sock_sendall(sock, encode(kind, 0, meta, body))
            header = await _recv_exactly(loop, sock, HEADER.size)
            _rid, meta_len, body_len, out_kind = decode_header(header)
            rest = await _recv_exactly(loop, sock, meta_len + body_len) if meta_len + body_len else b""
            return out_kind, decode_meta(rest[:meta_len]) if meta_len else {}, rest[meta_len:]
        finally:
            sock.close()


async def _recv_exactly(loop: asyncio.AbstractEventLoop, sock: socket.socket, n: int) -> bytes:
    """``n`` bytes from ``sock``; ``IncompleteReadError`` if the peer closes first."""
    buf = bytearray()
    while len(buf) < n:
        chunk = await loop.sock_recv(sock, n - len(buf))
        if not chunk:
            raise asyncio.IncompleteReadError(bytes(buf), n)
        buf += chunk
    return bytes(buf)
