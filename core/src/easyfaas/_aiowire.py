"""asyncio helpers for the runtime protocol, for engine processes (never loaded by runners)."""

from __future__ import annotations

import asyncio
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
    """One request/reply exchange on a fresh connection (control messages such as LOAD)."""
    sock = await asyncio.wait_for(connect_unix(socket_path), timeout)
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    try:
        writer.write(encode(kind, 0, meta, body))
        out_kind, _rid, out_meta, out_body = await asyncio.wait_for(read_frame(reader), timeout)
        return out_kind, out_meta, out_body
    finally:
        writer.close()
