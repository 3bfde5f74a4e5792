"""The embedded async queue: one SQLite file (WAL) written by one thread.

Operations from the event loop are queued to that thread, which commits them in batches: one
fsync makes a whole burst of accepted calls durable (group commit), and nothing blocks the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from easyfaas.errors import PlatformError
from easyfaas.interfaces import AsyncQueue, QueuedCall

__all__ = ["SqliteQueue"]

T = TypeVar("T")
_Calls = list[QueuedCall]
_Op = tuple[Callable[[sqlite3.Connection], Any], "asyncio.Future[Any]", asyncio.AbstractEventLoop, bool]

#: Most operations committed in one transaction.
MAX_BATCH = 512
#: How often rows kept only for their idempotency key are looked at for removal.
PRUNE_INTERVAL = 60.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    seq INTEGER PRIMARY KEY,
    id TEXT UNIQUE NOT NULL,
    function TEXT NOT NULL,
    qualifier TEXT NOT NULL,
    trigger TEXT NOT NULL,
    event BLOB NOT NULL,
    idempotency_key TEXT,
    key_until REAL,
    enqueued_at REAL NOT NULL,
    not_before REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    history TEXT NOT NULL DEFAULT '[]',
    deliveries INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL,
    lease TEXT,
    dead_at REAL,
    reason TEXT
);
CREATE INDEX IF NOT EXISTS calls_ready ON calls(state, not_before);
CREATE UNIQUE INDEX IF NOT EXISTS calls_key ON calls(function, idempotency_key) WHERE idempotency_key IS NOT NULL;
"""
_FIELDS = (
    "id", "function", "qualifier", "trigger", "event", "idempotency_key", "enqueued_at", "not_before",
    "attempts", "history", "deliveries", "state", "lease", "dead_at", "reason",
)  # fmt: skip
_SELECT = f"SELECT seq, {', '.join(_FIELDS)} FROM calls"


def _call(row: tuple[Any, ...]) -> QueuedCall:
    values = dict(zip(_FIELDS, row[1:], strict=True))
    values["event"] = bytes(values["event"])
    values["history"] = json.loads(values["history"])
    values["lease"] = values["lease"] or ""
    return QueuedCall(**values)


class SqliteQueue(AsyncQueue):
    """Options: ``path`` — the database file (default ``<data_dir>/queue.db``).

    Meant for one engine node: only one controller may open the file, and when it opens it
    returns every lease of the previous run to the queue (that run is gone).
    """

    PLUGIN_NAME = "sqlite"

    def __init__(self, *, data_dir: Path, path: str | None = None) -> None:
        super().__init__(data_dir=data_dir)
        self.path = data_dir / "queue.db" if path is None else Path(path).expanduser().resolve()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        self._synchronous = "FULL"
        db.executescript(_SCHEMA)
        db.execute("UPDATE calls SET state = 'queued', lease = NULL, not_before = ? WHERE state = 'leased'", (time.time(),))
        self._db = db
        self._ops: queue.SimpleQueue[_Op | None] = queue.SimpleQueue()
        self._pruned = 0.0
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name="queue-sqlite", daemon=True)
        self._thread.start()

    # -- the writer thread ---------------------------------------------------------------

    async def _run(self, op: Callable[[sqlite3.Connection], T], *, durable: bool = False) -> T:
        """Run ``op`` in a transaction of the writer thread.

        ``durable`` operations (enqueue, redrive, purge) are fsync'd before they return
        (``synchronous=FULL``), so they survive a power cut. The others (leases, acks,
        retries) are committed to the WAL without waiting for the disk (``NORMAL``): that
        survives a crash of any process, and a power cut can only make a call run again,
        which at-least-once delivery allows. It saves an fsync (~10 ms here) per lease.
        """
        if self._closed:
            raise PlatformError("the async queue is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._ops.put((op, future, loop, durable))
        try:
            return await future
        except sqlite3.Error as exc:
            raise PlatformError(f"the async queue ({self.path}) failed: {exc}") from exc

    def _serve(self) -> None:
        while True:
            first = self._ops.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < MAX_BATCH:
                try:
                    op = self._ops.get_nowait()
                except queue.Empty:
                    break
                if op is None:
                    stop = True
                    break
                batch.append(op)
            self._commit(batch)
            if stop:
                return

    def _commit(self, batch: list[_Op]) -> None:
        db = self._db
        outcomes: list[tuple[Any, BaseException | None]] = []
        synchronous = "FULL" if any(durable for *_, durable in batch) else "NORMAL"
        try:
            if synchronous != self._synchronous:
                db.execute(f"PRAGMA synchronous={synchronous}")
                self._synchronous = synchronous
            db.execute("BEGIN IMMEDIATE")
            for op, _future, _loop, _durable in batch:
                # A savepoint per operation: one that fails leaves the others of the batch intact.
                db.execute("SAVEPOINT op")
                try:
                    outcomes.append((op(db), None))
                except Exception as exc:  # noqa: BLE001 - handed to the awaiting coroutine
                    db.execute("ROLLBACK TO op")
                    outcomes.append((None, exc))
                db.execute("RELEASE op")
            now = time.time()
            if now - self._pruned > PRUNE_INTERVAL:
                db.execute("DELETE FROM calls WHERE state = 'done' AND (key_until IS NULL OR key_until < ?)", (now,))
                self._pruned = now
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            outcomes = [(None, exc)] * len(batch)
        for (_op, future, loop, _durable), (value, error) in zip(batch, outcomes, strict=True):
            with contextlib.suppress(RuntimeError):  # the loop closed while the op ran
                loop.call_soon_threadsafe(_settle, future, value, error)

    # -- AsyncQueue ----------------------------------------------------------------------

    async def enqueue(self, call: QueuedCall, *, dedupe_window: float = 0.0) -> tuple[str, bool]:
        def op(db: sqlite3.Connection) -> tuple[str, bool]:
            now = time.time()
            key = call.idempotency_key
            if key is not None:
                found = db.execute(
                    "SELECT id, key_until, state FROM calls WHERE function = ? AND idempotency_key = ?", (call.function, key)
                ).fetchone()
                if found is not None:
                    if found[1] is not None and found[1] > now:
                        return str(found[0]), False
                    # The key's window is over: it may be used again.
                    if found[2] == "done":
                        db.execute("DELETE FROM calls WHERE id = ?", (found[0],))
                    else:
                        db.execute("UPDATE calls SET idempotency_key = NULL, key_until = NULL WHERE id = ?", (found[0],))
            db.execute(
                "INSERT INTO calls (id, function, qualifier, trigger, event, idempotency_key, key_until, enqueued_at,"
                " not_before, attempts, history, state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'queued')",
                (call.id, call.function, call.qualifier, call.trigger, call.event, key,
                 None if key is None else call.enqueued_at + dedupe_window, call.enqueued_at, call.not_before,
                 call.attempts, json.dumps(call.history)),
            )  # fmt: skip
            return call.id, True

        return await self._run(op, durable=True)

    async def lease(
        self,
        *,
        limit: int,
        visibility_timeout: float,
        capacity: Mapping[str, int] | None = None,
        default_capacity: int | None = None,
    ) -> _Calls:
        caps = dict(capacity or {})

        def op(db: sqlite3.Connection) -> _Calls:
            now = time.time()
            taken: _Calls = []
            counts: dict[str, int] = {}
            full = {f for f, n in caps.items() if n <= 0}
            while len(taken) < limit:
                sql = f"{_SELECT} WHERE state IN ('queued', 'leased') AND not_before <= ?"
                if full:
                    sql += f" AND function NOT IN ({', '.join('?' * len(full))})"
                rows = db.execute(f"{sql} ORDER BY not_before, seq LIMIT ?", (now, *full, limit - len(taken))).fetchall()
                skipped = False
                for row in rows:
                    call = _call(row)
                    cap = caps.get(call.function, default_capacity)
                    if cap is not None and counts.get(call.function, 0) >= cap:
                        # Query again without this function rather than scan its whole backlog.
                        full.add(call.function)
                        skipped = True
                        continue
                    call.lease, call.state = uuid.uuid4().hex, "leased"
                    call.not_before, call.deliveries = now + visibility_timeout, call.deliveries + 1
                    db.execute(
                        "UPDATE calls SET state = 'leased', lease = ?, not_before = ?, deliveries = ? WHERE seq = ?",
                        (call.lease, call.not_before, call.deliveries, row[0]),
                    )
                    counts[call.function] = counts.get(call.function, 0) + 1
                    taken.append(call)
                if not skipped:
                    break
            return taken

        return await self._run(op)

    async def extend(self, calls: Sequence[QueuedCall], visibility_timeout: float) -> None:
        leases = [(call.id, call.lease) for call in calls]

        def op(db: sqlite3.Connection) -> None:
            until = time.time() + visibility_timeout
            db.executemany(
                "UPDATE calls SET not_before = ? WHERE id = ? AND lease = ? AND state = 'leased'",
                [(until, call_id, lease) for call_id, lease in leases],
            )

        await self._run(op)

    async def ack(self, call: QueuedCall) -> bool:
        def op(db: sqlite3.Connection) -> bool:
            found = db.execute(
                "SELECT key_until FROM calls WHERE id = ? AND lease = ? AND state = 'leased'", (call.id, call.lease)
            ).fetchone()
            if found is None:
                return False
            if found[0] is not None and found[0] > time.time():
                # Kept, without its event, so that the key still returns this call's id.
                db.execute("UPDATE calls SET state = 'done', lease = NULL, event = x'' WHERE id = ?", (call.id,))
            else:
                db.execute("DELETE FROM calls WHERE id = ?", (call.id,))
            return True

        return await self._run(op)

    async def nack(self, call: QueuedCall, *, retry_at: float, attempt: dict[str, Any] | None = None) -> bool:
        return await self._run(lambda db: self._put_back(db, call, "queued", attempt, not_before=retry_at))

    async def dead_letter(self, call: QueuedCall, *, reason: str, attempt: dict[str, Any] | None = None) -> bool:
        return await self._run(lambda db: self._put_back(db, call, "dead", attempt, reason=reason))

    @staticmethod
    def _put_back(
        db: sqlite3.Connection, call: QueuedCall, state: str, attempt: dict[str, Any] | None, *,
        not_before: float | None = None, reason: str | None = None,
    ) -> bool:  # fmt: skip
        found = db.execute(
            "SELECT attempts, history, not_before FROM calls WHERE id = ? AND lease = ? AND state = 'leased'",
            (call.id, call.lease),
        ).fetchone()
        if found is None:
            return False
        attempts, history = int(found[0]), json.loads(found[1])
        if attempt is not None:
            attempts += 1
            history.append(attempt)
        db.execute(
            "UPDATE calls SET state = ?, lease = NULL, attempts = ?, history = ?, not_before = ?, dead_at = ?, reason = ?"
            " WHERE id = ?",
            (state, attempts, json.dumps(history), found[2] if not_before is None else not_before,
             time.time() if state == "dead" else None, reason, call.id),
        )  # fmt: skip
        return True

    async def dead_letters(self, *, function: str | None = None, limit: int = 100) -> _Calls:
        def op(db: sqlite3.Connection) -> _Calls:
            sql, args = f"{_SELECT} WHERE state = 'dead'", []
            if function is not None:
                sql += " AND function = ?"
                args.append(function)
            rows = db.execute(f"{sql} ORDER BY dead_at DESC, seq DESC LIMIT ?", (*args, limit)).fetchall()
            return [_call(row) for row in rows]

        return await self._run(op)

    async def redrive(self, call_id: str) -> QueuedCall | None:
        def op(db: sqlite3.Connection) -> QueuedCall | None:
            now = time.time()
            cur = db.execute(
                "UPDATE calls SET state = 'queued', attempts = 0, enqueued_at = ?, not_before = ?, dead_at = NULL,"
                " reason = NULL, lease = NULL WHERE id = ? AND state = 'dead'",
                (now, now, call_id),
            )
            if cur.rowcount != 1:
                return None
            return _call(db.execute(f"{_SELECT} WHERE id = ?", (call_id,)).fetchone())

        return await self._run(op, durable=True)

    async def purge(self, *, function: str | None = None) -> int:
        def op(db: sqlite3.Connection) -> int:
            if function is None:
                return db.execute("DELETE FROM calls WHERE state = 'dead'").rowcount
            return db.execute("DELETE FROM calls WHERE state = 'dead' AND function = ?", (function,)).rowcount

        return await self._run(op, durable=True)

    async def get(self, call_id: str) -> QueuedCall | None:
        def op(db: sqlite3.Connection) -> QueuedCall | None:
            row = db.execute(f"{_SELECT} WHERE id = ?", (call_id,)).fetchone()
            return None if row is None else _call(row)

        return await self._run(op)

    async def find(self, function: str, idempotency_key: str) -> str | None:
        def op(db: sqlite3.Connection) -> str | None:
            row = db.execute(
                "SELECT id FROM calls WHERE function = ? AND idempotency_key = ? AND key_until > ?",
                (function, idempotency_key, time.time()),
            ).fetchone()
            return None if row is None else str(row[0])

        return await self._run(op)

    async def pending(self, *, limit: int | None = None) -> _Calls:
        def op(db: sqlite3.Connection) -> _Calls:
            rows = db.execute(
                f"{_SELECT} WHERE state IN ('queued', 'leased') ORDER BY not_before, seq LIMIT ?",
                (-1 if limit is None else limit,),
            ).fetchall()
            calls = [_call(row) for row in rows]
            for call in calls:
                call.lease = ""
            return calls

        return await self._run(op)

    async def stats(self) -> dict[str, int]:
        def op(db: sqlite3.Connection) -> dict[str, int]:
            counts = {"queued": 0, "leased": 0, "dead": 0}
            for state, n in db.execute("SELECT state, COUNT(*) FROM calls GROUP BY state"):
                if state in counts:
                    counts[state] = int(n)
            return counts

        return await self._run(op)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._ops.put(None)
        await asyncio.to_thread(self._thread.join)
        self._db.close()


def _settle(future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)
