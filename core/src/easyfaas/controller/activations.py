"""Activation records: one per call, kept in SQLite in the data directory.

Writes are batched off the call path: ``add`` appends to a list, a task flushes it every
``FLUSH_INTERVAL`` in a worker thread. Retention is by count. Keys beyond the fixed columns
(an async call's ``attempts``, ...) are kept as JSON in ``extra`` and merged back on read.

With an ``ActivationArchive`` (offered by a shared code store, e.g. NATS: issue #10) the
flushed records are also copied there by a second background task, the latest record of
each id per batch; while the archive fails they wait in memory (at most ``MAX_UNARCHIVED``)
and are tried again with a growing delay. Reads merge: a record this node does not have, or
has only as ``queued``/``running``, is looked up in the archive, and lists merge both.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from easyfaas.interfaces.activations import ActivationArchive, is_final, progress

__all__ = ["ActivationStore", "merge_records", "newest_record"]

T = TypeVar("T")

log = logging.getLogger(__name__)

FLUSH_INTERVAL = 0.25
#: The nice value of the thread that writes records (the controller's other threads: 0).
WRITER_NICE = 10
#: Records written between two yields of the CPU (about 0.2 ms of work).
WRITE_SLICE = 32
#: Longest wait for one ``put`` of a batch to the archive.
ARCHIVE_TIMEOUT = 5.0
#: Longest wait for a read of the archive (the management API answers with local records then).
ARCHIVE_READ_TIMEOUT = 2.0
#: Delay before trying a failed archive again, doubling up to the second number.
ARCHIVE_RETRY = (1.0, 30.0)
#: Records kept in memory for the archive while it fails; the oldest are dropped beyond.
MAX_UNARCHIVED = 50_000
_COLUMNS = (
    "id", "function", "version", "status", "trigger", "start", "end", "duration_ms", "wait_ms",
    "init_ms", "instance", "error", "result", "logs",
)  # fmt: skip
_KNOWN = frozenset(("seq", *_COLUMNS))
_INSERT = f"INSERT OR REPLACE INTO activations ({','.join(_COLUMNS)},extra) VALUES ({','.join('?' * (len(_COLUMNS) + 1))})"
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
    def __init__(self, path: Path, *, keep: int = 100_000, archive: ActivationArchive | None = None) -> None:
        self.path = path
        self.keep = keep
        self.archive = archive
        self._pending: list[dict[str, Any]] = []
        #: id → latest record flushed to SQLite and not yet in the archive (oldest first).
        self._unarchived: dict[str, dict[str, Any]] = {}
        self._archive_lock = asyncio.Lock()
        self._archive_task: asyncio.Task[None] | None = None
        self._archive_retry_at = 0.0  # monotonic; while in the future the archive is failing
        self._archive_delay = ARCHIVE_RETRY[0]
        self._archive_failing = False
        #: The one thread that uses the database, at a lower CPU priority: on a busy node its
        #: batches must not take a core's time slice from the event loop or the runners (they
        #: showed as 2-8 ms stalls of the calls in flight every flush).
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="activations", initializer=_lower_priority)
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
        if self.archive is not None:
            self._archive_task = asyncio.create_task(self._archive_loop(), name="activations-archive")

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

    async def flush(self, *, archive: bool = False) -> bool:
        """Write the pending records to SQLite; with ``archive``, then to the archive too (best
        effort: skipped while it is failing). Whether no record is left for the archive."""
        async with self._lock:
            if self._pending:
                batch, self._pending = self._pending, []
                if self.archive is not None:
                    for record in batch:  # latest per id, in the order of their last write
                        self._unarchived.pop(record["id"], None)
                        self._unarchived[record["id"]] = record
                await asyncio.get_running_loop().run_in_executor(self._writer, self._write, batch)
        if archive:
            return await self.archive_pending()
        return not self._unarchived

    # -- the shared archive (issue #10) -------------------------------------------------

    async def _archive_loop(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            if self._unarchived:
                await self.archive_pending()

    async def archive_pending(self, *, force: bool = False) -> bool:
        """Put the records not archived yet; ``False`` if some are left (the archive failed
        now or recently: without ``force`` it is not tried again before its retry time)."""
        if self.archive is None:
            return True
        if not force and time.monotonic() < self._archive_retry_at:
            return not self._unarchived
        async with self._archive_lock:
            if not self._unarchived:
                return True
            batch, self._unarchived = self._unarchived, {}
            try:
                await asyncio.wait_for(self.archive.put(list(batch.values())), ARCHIVE_TIMEOUT)
            except Exception as exc:  # noqa: BLE001 - whatever broke, the records wait for the next try
                for key, record in self._unarchived.items():  # written meanwhile: newer than the batch's
                    batch.pop(key, None)
                    batch[key] = record
                while len(batch) > MAX_UNARCHIVED:
                    batch.pop(next(iter(batch)))
                self._unarchived = batch
                self._archive_retry_at = time.monotonic() + self._archive_delay
                if not self._archive_failing:
                    log.warning(
                        "cannot write activation records to the shared archive (%s: %s); %d kept here, retrying",
                        type(exc).__name__, exc, len(batch),
                    )  # fmt: skip
                self._archive_failing = True
                self._archive_delay = min(ARCHIVE_RETRY[1], self._archive_delay * 2)
                return False
            if self._archive_failing:
                log.info("the shared activation archive works again (%d records written)", len(batch))
            self._archive_failing = False
            self._archive_retry_at = 0.0
            self._archive_delay = ARCHIVE_RETRY[0]
            return not self._unarchived

    async def _from_archive(self, read: Callable[[ActivationArchive], Awaitable[T]]) -> T | None:
        """A read of the archive, or ``None`` when there is none, it fails, or it is failing."""
        if self.archive is None or time.monotonic() < self._archive_retry_at:
            return None
        try:
            return await asyncio.wait_for(read(self.archive), ARCHIVE_READ_TIMEOUT)
        except Exception as exc:  # noqa: BLE001 - the node's own records are the answer then
            log.warning("cannot read the shared activation archive (%s: %s)", type(exc).__name__, exc)
            return None

    def _write(self, batch: list[dict[str, Any]]) -> None:
        # An async call is recorded as queued, running, then finished: often all in one batch,
        # where only its last record needs writing.
        latest = list({r["id"]: r for r in batch}.values()) if len(batch) > 1 else batch
        # In slices, giving the CPU away between them: on a busy node a batch written in one go
        # holds a core for its whole time slice, and the calls in flight whose event loop or
        # runner was woken on that core waited for it (2-8 ms stalls, once a flush).
        with self._db:
            self._db.execute("BEGIN")
            for i in range(0, len(latest), WRITE_SLICE):
                if i:
                    os.sched_yield()
                self._db.executemany(_INSERT, map(_row_values, latest[i : i + WRITE_SLICE]))
        self._flushes += 1
        if self._flushes % 100 == 0:
            self._db.execute(
                "DELETE FROM activations WHERE seq <= (SELECT MAX(seq) FROM activations) - ?", (self.keep,)
            )

    async def query(self, *, function: str | None = None, limit: int = 50, since_seq: int = 0) -> list[dict[str, Any]]:
        """The newest records, of one function or all. With an archive (and no ``since_seq``,
        which counts this node's writes only), merged with the archive's newest."""
        await self.flush()
        rows = await asyncio.get_running_loop().run_in_executor(self._writer, self._query, function, limit, since_seq)
        if self.archive is None or since_seq:
            return rows
        archived = await self._from_archive(lambda archive: archive.list(function=function, limit=limit))
        return rows if archived is None else merge_records(rows, archived, limit)

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
        rows = await asyncio.get_running_loop().run_in_executor(
            self._writer,
            lambda: self._db.execute(
                f"SELECT seq, {','.join(_COLUMNS)}, extra FROM activations WHERE id = ?", (activation_id,)
            ).fetchall()
        )
        local = self._row(rows[0]) if rows else None
        if self.archive is None or (local is not None and is_final(local)):
            return local
        function = local["function"] if local is not None else None
        archived = await self._from_archive(lambda archive: archive.get(activation_id, function=function))
        return local if archived is None else newest_record(local, archived)

    @staticmethod
    def _row(row: tuple[Any, ...]) -> dict[str, Any]:
        record = dict(zip(("seq", *_COLUMNS), row[:-1], strict=True))
        if record["error"]:
            record["error"] = json.loads(record["error"])
        if row[-1]:
            record.update(json.loads(row[-1]))
        return record

    async def close(self) -> None:
        for task in (self._task, self._archive_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.flush()
        if not await self.archive_pending(force=True):
            left = len(self._unarchived)
            log.warning("%d activation records did not reach the shared archive (they are in %s)", left, self.path)
        self._writer.shutdown(wait=True)
        self._db.close()


def _lower_priority() -> None:
    """Make the calling thread nicer (Linux: a thread has its own nice value); best effort."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WRITER_NICE)


def _row_values(r: dict[str, Any]) -> tuple[Any, ...]:
    """A record as the row's values: ``_COLUMNS``, then ``extra``. This runs for every call
    (in the flush thread, holding the GIL): spelled out, not a loop over the columns."""
    get = r.get
    error = get("error")
    return (
        get("id"), get("function"), get("version"), get("status"), get("trigger"), get("start"), get("end"),
        get("duration_ms"), get("wait_ms"), get("init_ms"), get("instance"),
        None if error is None else json.dumps(error), get("result"), get("logs"), _extra(r),
    )  # fmt: skip


def _extra(record: dict[str, Any]) -> str | None:
    keys = record.keys() - _KNOWN
    if not keys:
        return None
    if keys == {"handler_ms"}:  # a synchronous call's record: no encoder needed
        ms = record["handler_ms"]
        if type(ms) is float and math.isfinite(ms):
            return f'{{"handler_ms":{ms!r}}}'
    return json.dumps({k: record[k] for k in keys})


def newest_record(local: dict[str, Any] | None, archived: dict[str, Any]) -> dict[str, Any]:
    """Of this node's record of a call and the archive's, the one that tells more (ties: the
    node's own, maybe not archived yet). An archived record takes the local ``seq``, or 0."""
    if local is not None and progress(local) >= progress(archived):
        return local
    return {**archived, "seq": local.get("seq", 0) if local is not None else 0}


def merge_records(local: list[dict[str, Any]], archived: list[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """This node's records and the archive's, one per id (``newest_record``), newest ``start`` first."""
    by_id: dict[str, dict[str, Any]] = {}
    for record in archived:
        by_id[record["id"]] = {**record, "seq": 0}
    for record in local:
        other = by_id.get(record["id"])
        by_id[record["id"]] = record if other is None else newest_record(record, other)
    return sorted(by_id.values(), key=lambda r: r.get("start") or 0.0, reverse=True)[:limit]
