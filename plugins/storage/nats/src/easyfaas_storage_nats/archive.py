"""Activation records of every node in a JetStream key-value bucket with a TTL (issue #10).

The controller writes each node's records in batches, off the call path; the bucket's
``max_age`` (the store's ``activation_ttl``) removes them. Keys are ``<function>.<id>``, so
a function's records are one key filter and a record read by id alone is ``*.<id>``.

Nodes write records of one call concurrently (an async call accepted on one node, run on
another): a final record is put as it is, an unfinished one (``queued``, ``running``) only
by compare-and-set over a record that tells less, so a late ``queued`` from the accepting
node never hides the final record of the node that ran the call.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import nats.js.errors
from nats.js.kv import KeyValue

from easyfaas.interfaces import ActivationArchive
from easyfaas.interfaces.activations import is_final, progress
from easyfaas_nats import nats_errors, scan

__all__ = ["NatsActivationArchive", "encode_record", "key_token"]

log = logging.getLogger(__name__)

#: Records put at once (each ``put`` awaits the server's acknowledgement).
PUT_WINDOW = 128
#: Records read at once for a listing.
GET_WINDOW = 32
_SAFE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=str).encode


def key_token(text: str) -> str:
    """``text`` as one token of a key-value key: itself when made of letters, digits, ``-``
    and ``_`` (function names, generated ids), else ``=`` and its UTF-8 bytes in hex (a
    request id chosen by a client may hold dots, spaces or wildcards)."""
    return text if _SAFE.match(text) else "=" + text.encode().hex()


def encode_record(record: dict[str, Any], limit: int) -> bytes:
    """The record as JSON of at most ``limit`` bytes: ``logs`` cut from the front (the end of a
    call's output tells most) with ``logs_truncated``, then ``result`` dropped with
    ``result_truncated``, then only the record's summary, as a last resort."""
    body = _dumps(record).encode()
    if len(body) <= limit:
        return body
    record = dict(record)
    logs = str(record.get("logs") or "")
    while len(body) > limit and logs:
        # Cutting n characters removes at least n bytes; escapes (\n, \u0001) remove more.
        logs = logs[len(body) - limit + 64 :]
        record.update(logs=logs, logs_truncated=True)
        body = _dumps(record).encode()
    if len(body) > limit and record.get("result") is not None:
        record.update(result=None, result_truncated=True)
        body = _dumps(record).encode()
    if len(body) > limit:
        summary = ("id", "function", "version", "status", "trigger", "start", "end", "duration_ms", "init_ms")
        body = _dumps({**{k: record.get(k) for k in summary}, "truncated": True}).encode()
    return body


class NatsActivationArchive(ActivationArchive):
    """The records in a key-value bucket opened by ``open`` (bucket, largest value it takes),
    which the code store provides over its own connection."""

    def __init__(self, open_bucket: Callable[[], Awaitable[tuple[KeyValue, int]]]) -> None:
        self._open = open_bucket

    async def put(self, records: Sequence[dict[str, Any]]) -> None:
        kv, limit = await self._open()
        with nats_errors(f"archiving {len(records)} activation records"):
            for start in range(0, len(records), PUT_WINDOW):
                window = records[start : start + PUT_WINDOW]
                await asyncio.gather(*(_store(kv, r, limit) for r in window))

    async def get(self, activation_id: str, *, function: str | None = None) -> dict[str, Any] | None:
        kv, _ = await self._open()
        with nats_errors(f"reading activation {activation_id!r}"):
            if function is not None:
                found = await _value(kv, _key(function, activation_id))
                if found is not None:
                    return found
            # Only the id: its key is the one ending in it, whatever the function.
            for entry in await scan(kv, f"*.{key_token(activation_id)}", meta_only=True):
                found = await _value(kv, entry.key)
                if found is not None:
                    return found
        return None

    async def list(self, *, function: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        kv, _ = await self._open()
        with nats_errors("listing activation records"):
            # Keys and revisions only, then the values of the ``limit`` written last.
            entries = await scan(kv, f"{key_token(function)}.*" if function else ">", meta_only=True)
            newest = sorted(entries, key=lambda e: e.revision or 0, reverse=True)[:limit]
            records: list[dict[str, Any] | None] = []
            for start in range(0, len(newest), GET_WINDOW):
                window = newest[start : start + GET_WINDOW]
                records += await asyncio.gather(*(_value(kv, e.key) for e in window))
        found = [r for r in records if r is not None]
        return sorted(found, key=lambda r: r.get("start") or 0.0, reverse=True)


async def _store(kv: KeyValue, record: dict[str, Any], limit: int) -> None:
    key, value = _key(record["function"], record["id"]), encode_record(record, limit)
    if is_final(record):
        await kv.put(key, value)
        return
    while True:
        try:
            current = await kv.get(key)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            current = None
        try:
            if current is None or not current.value:
                await kv.create(key, value)
            elif progress(json.loads(current.value)) > progress(record):
                return  # another node wrote a later state of the call
            else:
                await kv.update(key, value, last=current.revision)
            return
        except nats.js.errors.KeyWrongLastSequenceError:
            continue  # written meanwhile: compare again


def _key(function: str, activation_id: str) -> str:
    return f"{key_token(function)}.{key_token(activation_id)}"


async def _value(kv: KeyValue, key: str) -> dict[str, Any] | None:
    try:
        entry = await kv.get(key)
    except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
        return None  # expired or never written
    if not entry.value:
        return None
    record: dict[str, Any] = json.loads(entry.value)
    return record
