"""Activation records: one per call, kept in SQLite in the data directory.

Writes are batched off the call path: ``add`` appends to a list, a task flushes it every
``FLUSH_INTERVAL`` in a worker thread. Retention is by count. Keys beyond the fixed columns
(an async call's ``attempts``, ...) are kept as JSON in ``extra`` and merged back on read.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["ActivationStore"]

log = logging.getLogger(__name__)

FLUSH_INTERVAL = 0.25
_COLUMNS = (
    "id", "function", "version", "status", "trigger", "start", "end", "duration_ms", "wait_ms",
    "init_ms", "instance", "error", "result", "logs",
)  # fmt: skip
_KNOWN = frozenset(("seq", *_COLUMNS))
_SCHEMA = """
CREATE TABLE IF NOT EXISTS activations (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL, function TEXT NOT NULL, version TEXT, status TEXT NOT NULL,
    trigger TEXT, start REAL, end REAL, duration_ms REAL, wait_ms REAL, init_ms REAL,
    instance TEXT, error TEXT, result TEXT, logs TEXT, extra TEXT
);
CREATE INDEX IF NOT EXISTS activations_function ON activations(function, seq);
"""


class ActivationStore:
    def __init__(self, path: Path, *, keep: int = 100_000) -> None:
        self.path = path
        self.keep = keep
        self._pending: list[dict[str, Any]] = []
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        if "extra" not in {row[1] for row in self._db.execute("PRAGMA table_info(activations)")}:
            self._db.execute("ALTER TABLE activations ADD COLUMN extra TEXT")  # a data dir from before async calls
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._flushes = 0
        self.listeners: set[asyncio.Queue[dict[str, Any]]] = set()
        #: id → callback that takes the record of that id instead of the store (once): the
        #: async dispatcher completes an attempt's record with its history before storing it.
        self.intercepts: dict[str, Callable[[dict[str, Any]], None]] = {}

    def start(self) -> None:
        self._task = asyncio.create_task(self._flush_loop(), name="activations-flush")

    def add(self, record: dict[str, Any]) -> None:
        if self.intercepts:
            intercept = self.intercepts.pop(record["id"], None)
            if intercept is not None:
                intercept(record)
                return
        self._pending.append(record)
        for queue in self.listeners:
            queue.put_nowait(record)

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            try:
                await self.flush()
            except sqlite3.Error as exc:
                log.error("could not write activation records: %s", exc)

    async def flush(self) -> None:
        async with self._lock:
            if not self._pending:
                return
            batch, self._pending = self._pending, []
            await asyncio.to_thread(self._write, batch)

    def _write(self, batch: list[dict[str, Any]]) -> None:
        # An async call is recorded as queued, running, then finished: often all in one batch,
        # where only its last record needs writing.
        latest = list({r["id"]: r for r in batch}.values()) if len(batch) > 1 else batch
        rows = [
            (
                *(json.dumps(r.get(c)) if c == "error" and r.get(c) is not None else r.get(c) for c in _COLUMNS),
                _extra(r),
            )
            for r in latest
        ]
        placeholders = ",".join("?" * (len(_COLUMNS) + 1))
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany(
                f"INSERT OR REPLACE INTO activations ({','.join(_COLUMNS)},extra) VALUES ({placeholders})", rows
            )
        self._flushes += 1
        if self._flushes % 100 == 0:
            self._db.execute(
                "DELETE FROM activations WHERE seq <= (SELECT MAX(seq) FROM activations) - ?", (self.keep,)
            )

    async def query(self, *, function: str | None = None, limit: int = 50, since_seq: int = 0) -> list[dict[str, Any]]:
        await self.flush()
        return await asyncio.to_thread(self._query, function, limit, since_seq)

    def _query(self, function: str | None, limit: int, since_seq: int) -> list[dict[str, Any]]:
        sql = f"SELECT seq, {','.join(_COLUMNS)}, extra FROM activations WHERE seq > ?"
        args: list[Any] = [since_seq]
        if function:
            sql += " AND function = ?"
            args.append(function)
        sql += " ORDER BY seq DESC LIMIT ?"
        args.append(limit)
        return [self._row(row) for row in self._db.execute(sql, args).fetchall()]

    async def get(self, activation_id: str) -> dict[str, Any] | None:
        await self.flush()
        rows = await asyncio.to_thread(
            lambda: self._db.execute(
                f"SELECT seq, {','.join(_COLUMNS)}, extra FROM activations WHERE id = ?", (activation_id,)
            ).fetchall()
        )
        return self._row(rows[0]) if rows else None

    @staticmethod
    def _row(row: tuple[Any, ...]) -> dict[str, Any]:
        record = dict(zip(("seq", *_COLUMNS), row[:-1], strict=True))
        if record["error"]:
            record["error"] = json.loads(record["error"])
        if row[-1]:
            record.update(json.loads(row[-1]))
        return record

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()
        self._db.close()


def _extra(record: dict[str, Any]) -> str | None:
    extra = {k: v for k, v in record.items() if k not in _KNOWN}
    return json.dumps(extra) if extra else None
