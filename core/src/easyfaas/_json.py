"""Fast JSON for engine processes (orjson), with the standard library as the fallback.

Runners never import this: inside sandboxes the protocol stays standard-library JSON; the
bytes on the wire are the same either way.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

from easyfaas.wire import HEADER, FrameError

__all__ = ["dumps", "encode_frame", "loads_meta"]

_std_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON; values orjson refuses (ints over 64 bits, non-str keys) go the slow way."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return _std_dumps(value).encode()


def encode_frame(kind: int, request_id: int, meta: dict[str, Any] | None, body: bytes) -> bytes:
    """``easyfaas.wire.encode`` with orjson for the meta part."""
    meta_bytes = dumps(meta) if meta else b""
    return HEADER.pack(request_id, len(meta_bytes), len(body), kind) + meta_bytes + body


def loads_meta(raw: bytes) -> dict[str, Any]:
    """``easyfaas.wire.decode_meta`` with orjson."""
    try:
        meta = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise FrameError(f"frame meta is not JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise FrameError("frame meta is not a JSON object")
    return meta
