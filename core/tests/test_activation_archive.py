"""The activation store with a shared archive (issue #10): records reach the archive in the
batched flush, reads fall back to it and merge, and a failing archive never loses a record
nor blocks the node. The archive here is a dict behind the ``ActivationArchive`` interface;
the NATS one is tested against a real server in plugins/storage/nats and tests/test_nats.py."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from easyfaas.controller import activations as activations_module
from easyfaas.controller.activations import ActivationStore, merge_records, newest_record
from easyfaas.interfaces import ActivationArchive


class DictArchive(ActivationArchive):
    """Another node's view: records by id; ``broken`` makes every call raise."""

    def __init__(self) -> None:
        self.records: dict[str, dict[str, Any]] = {}
        self.broken = False
        self.puts = 0

    def _check(self) -> None:
        if self.broken:
            raise ConnectionError("archive unreachable")

    async def put(self, records: Sequence[dict[str, Any]]) -> None:
        self._check()
        self.puts += 1
        for record in records:
            self.records[record["id"]] = dict(record)

    async def get(self, activation_id: str, *, function: str | None = None) -> dict[str, Any] | None:
        self._check()
        return self.records.get(activation_id)

    async def list(self, *, function: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        self._check()
        rows = [r for r in self.records.values() if function is None or r["function"] == function]
        return sorted(rows, key=lambda r: r["start"], reverse=True)[:limit]


def record(
    rid: str, status: str = "success", *, start: float = 1.0, function: str = "f", **extra: Any
) -> dict[str, Any]:
    return {"id": rid, "function": function, "version": "1", "status": status, "trigger": "api", "start": start,
            "end": start + 0.1, "duration_ms": 100.0, "wait_ms": 0.0, "init_ms": None, "instance": "i", "error": None,
            "result": None, "logs": "", **extra}  # fmt: skip


def test_the_record_that_tells_more_wins() -> None:
    queued = {**record("a", "queued"), "seq": 7, "attempts": []}
    running = {**record("a", "running"), "attempts": [{"n": 1, "status": "running"}]}
    retry = {**record("a", "queued"), "attempts": [{"n": 1, "status": "function_error"}]}
    done = {**record("a", "success"), "result": "{}", "attempts": [{"n": 1, "status": "success"}]}
    assert newest_record(queued, running)["status"] == "running"
    assert newest_record(queued, running)["seq"] == 7  # the local row keeps its place in the local order
    assert (
        newest_record({**running, "seq": 1}, retry)["attempts"] == retry["attempts"]
    )  # a failed attempt is newer news
    assert newest_record({**retry, "seq": 1}, done)["status"] == "success"
    assert newest_record(None, done) == {**done, "seq": 0}
    local_done = {**done, "seq": 3}
    assert newest_record(local_done, done) is local_done  # a tie: the node's own


def test_lists_merge_by_id_newest_first() -> None:
    local = [{**record("x", "queued", start=5.0), "seq": 2}, {**record("y", start=3.0), "seq": 1}]
    archived = [record("z", start=6.0), record("x", "success", start=5.0), record("w", start=1.0)]
    merged = merge_records(local, archived, limit=3)
    assert [r["id"] for r in merged] == ["z", "x", "y"]
    assert merged[1]["status"] == "success" and merged[1]["seq"] == 2
    assert len(merge_records(local, archived, limit=10)) == 4


async def test_flushed_records_reach_the_archive_and_reads_fall_back_to_it(tmp_path: Path) -> None:
    archive = DictArchive()
    store = ActivationStore(tmp_path / "a.db", archive=archive)
    store.start()
    try:
        store.add(record("mine", start=2.0))
        store.add(record("async", "queued", start=3.0, attempts=[]))
        assert await store.flush(archive=True)
        assert set(archive.records) == {"mine", "async"}
        # Another node ran the async call and archived its final record; one more ran elsewhere.
        archive.records["async"] = record("async", "success", start=3.0, result='{"ok":true}', attempts=[{"n": 1}])
        archive.records["theirs"] = record("theirs", start=4.0)
        got = await store.get("async")
        assert got is not None and got["status"] == "success" and got["result"] == '{"ok":true}'
        assert (await store.get("theirs") or {}).get("function") == "f"
        assert await store.get("nowhere") is None
        rows = await store.query(function="f")
        assert [r["id"] for r in rows] == ["theirs", "async", "mine"] and rows[1]["status"] == "success"
        # ``since`` counts this node's writes: only local rows, as before.
        assert {r["id"] for r in await store.query(since_seq=1)} <= {"mine", "async"}
        # The background task archives what add() gets without anyone flushing.
        store.add(record("later", start=5.0))
        for _ in range(200):
            if "later" in archive.records:
                break
            await asyncio.sleep(0.05)
        assert "later" in archive.records
    finally:
        await store.close()


async def test_a_failing_archive_keeps_the_records_and_writes_them_once_back(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr(activations_module, "ARCHIVE_RETRY", (0.05, 0.1))
    archive = DictArchive()
    archive.broken = True
    store = ActivationStore(tmp_path / "a.db", archive=archive)
    store.start()
    try:
        store.add(record("during", start=1.0))
        assert not await store.flush(archive=True)  # not archived: reported, not raised
        local = await store.get("during")  # the node's own copy, without waiting on the archive
        assert local is not None and local["status"] == "success"
        assert [r["id"] for r in await store.query()] == ["during"]
        store.add(record("during", "success", start=1.0, logs="second write"))
        archive.broken = False
        for _ in range(200):
            if "during" in archive.records:
                break
            await asyncio.sleep(0.05)
        assert archive.records["during"]["logs"] == "second write"  # the latest record of the id
    finally:
        await store.close()


async def test_close_writes_what_is_left_to_the_archive(tmp_path: Path) -> None:
    archive = DictArchive()
    store = ActivationStore(tmp_path / "a.db", archive=archive)
    store.start()
    store.add(record("last", start=1.0))
    await store.close()
    assert "last" in archive.records


async def test_without_an_archive_nothing_changes(tmp_path: Path) -> None:
    store = ActivationStore(tmp_path / "a.db")
    store.start()
    try:
        store.add(record("one", "queued"))
        assert await store.flush(archive=True)
        got = await store.get("one")
        assert got is not None and got["status"] == "queued" and got["seq"] == 1
    finally:
        await store.close()
