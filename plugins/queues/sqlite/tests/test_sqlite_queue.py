"""The SQLite queue keeps the AsyncQueue contract: durable accept, leases, retries, dead letters, keys."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from easyfaas.interfaces import AsyncQueue, QueuedCall
from easyfaas.plugin.manager import Plugins
from easyfaas_queue_sqlite import SqliteQueue


def new_call(function: str = "f", *, key: str | None = None, event: bytes = b"{}", delay: float = 0.0) -> QueuedCall:
    now = time.time()
    return QueuedCall(
        id=os.urandom(8).hex(), function=function, event=event, idempotency_key=key, enqueued_at=now, not_before=now + delay
    )


@pytest.fixture
async def q(tmp_path: Path) -> AsyncIterator[SqliteQueue]:
    queue = SqliteQueue(data_dir=tmp_path)
    yield queue
    await queue.close()


def test_the_plugin_host_finds_and_builds_it(tmp_path: Path) -> None:
    host = Plugins()
    host.load({"queues": ["sqlite"]})
    queue = host.create_queue("sqlite", data_dir=tmp_path)
    assert isinstance(queue, AsyncQueue) and queue.path == tmp_path / "queue.db"
    asyncio.run(queue.close())


async def test_a_leased_call_is_hidden_until_acked(q: SqliteQueue) -> None:
    call = new_call(event=b'{"n": 1}')
    assert await q.enqueue(call) == (call.id, True)
    [leased] = await q.lease(limit=10, visibility_timeout=30)
    assert (leased.id, leased.event, leased.state, leased.deliveries) == (call.id, b'{"n": 1}', "leased", 1)
    assert await q.lease(limit=10, visibility_timeout=30) == []
    assert await q.stats() == {"queued": 0, "leased": 1, "dead": 0}
    assert await q.ack(leased) is True
    assert await q.get(call.id) is None
    assert await q.stats() == {"queued": 0, "leased": 0, "dead": 0}


async def test_an_expired_lease_delivers_the_call_again_and_the_old_holder_loses_it(q: SqliteQueue) -> None:
    await q.enqueue(new_call())
    [first] = await q.lease(limit=1, visibility_timeout=0.05)
    await asyncio.sleep(0.1)
    [again] = await q.lease(limit=1, visibility_timeout=30)
    assert again.id == first.id and again.deliveries == 2 and again.lease != first.lease
    assert await q.ack(first) is False  # the stale holder cannot finish it
    assert await q.nack(first, retry_at=0) is False
    assert await q.ack(again) is True


async def test_extend_keeps_a_running_call_hidden(q: SqliteQueue) -> None:
    await q.enqueue(new_call())
    [call] = await q.lease(limit=1, visibility_timeout=0.05)
    await q.extend([call], 30)
    await asyncio.sleep(0.1)
    assert await q.lease(limit=1, visibility_timeout=30) == []


async def test_nack_with_an_attempt_counts_it_and_without_does_not(q: SqliteQueue) -> None:
    await q.enqueue(new_call())
    [call] = await q.lease(limit=1, visibility_timeout=30)
    assert await q.nack(call, retry_at=time.time() + 0.1, attempt={"n": 1, "status": "application_error"})
    assert await q.lease(limit=1, visibility_timeout=30) == []  # not before retry_at
    await asyncio.sleep(0.15)
    [call] = await q.lease(limit=1, visibility_timeout=30)
    assert call.attempts == 1 and call.history == [{"n": 1, "status": "application_error"}]
    assert await q.nack(call, retry_at=0)  # e.g. throttled: not an attempt
    [call] = await q.lease(limit=1, visibility_timeout=30)
    assert call.attempts == 1 and len(call.history) == 1


async def test_dead_letters_can_be_listed_redriven_and_purged(q: SqliteQueue) -> None:
    for function in ("a", "a", "b"):
        await q.enqueue(new_call(function))
    leased = await q.lease(limit=3, visibility_timeout=30)
    for call in leased:
        assert await q.dead_letter(call, reason="retries_exhausted", attempt={"n": 3})
    dead = await q.dead_letters()
    assert len(dead) == 3 and {c.reason for c in dead} == {"retries_exhausted"} and all(c.dead_at for c in dead)
    assert [c.function for c in await q.dead_letters(function="b")] == ["b"]

    one_of_a = next(c for c in dead if c.function == "a")
    again = await q.redrive(one_of_a.id)
    assert again is not None and again.state == "queued" and again.attempts == 0 and again.history == [{"n": 3}]
    assert again.enqueued_at >= one_of_a.enqueued_at
    assert await q.redrive(one_of_a.id) is None  # no longer a dead letter
    assert [c.id for c in await q.lease(limit=5, visibility_timeout=30)] == [again.id]

    assert await q.purge(function="a") == 1
    assert [c.function for c in await q.dead_letters()] == ["b"]
    assert await q.purge() == 1 and await q.dead_letters() == []


async def test_an_idempotency_key_returns_the_first_call_within_its_window(q: SqliteQueue) -> None:
    first = new_call(key="k1")
    assert await q.enqueue(first, dedupe_window=60) == (first.id, True)
    assert await q.enqueue(new_call(key="k1"), dedupe_window=60) == (first.id, False)
    other_function = new_call("g", key="k1")
    assert await q.enqueue(other_function, dedupe_window=60) == (other_function.id, True)
    assert await q.find("f", "k1") == first.id

    [leased] = await q.lease(limit=1, visibility_timeout=30, capacity={"g": 0})
    assert await q.ack(leased)
    # Finished, and still deduplicated while the window lasts.
    assert await q.enqueue(new_call(key="k1"), dedupe_window=60) == (first.id, False)
    assert (await q.get(first.id)).state == "done"  # type: ignore[union-attr]


async def test_a_key_can_be_used_again_once_its_window_is_over(q: SqliteQueue) -> None:
    first = new_call(key="k")
    await q.enqueue(first, dedupe_window=0.05)
    await asyncio.sleep(0.1)
    second = new_call(key="k")
    assert await q.enqueue(second, dedupe_window=60) == (second.id, True)
    assert len(await q.lease(limit=5, visibility_timeout=30)) == 2  # the first still runs, without its key


async def test_capacity_caps_a_function_without_blocking_the_others(q: SqliteQueue) -> None:
    for _ in range(20):
        await q.enqueue(new_call("busy"))
    await q.enqueue(new_call("idle"))
    await q.enqueue(new_call("other"))
    leased = await q.lease(limit=10, visibility_timeout=30, capacity={"busy": 2}, default_capacity=None)
    assert sorted(c.function for c in leased) == ["busy", "busy", "idle", "other"]
    leased = await q.lease(limit=10, visibility_timeout=30, capacity={"busy": 0})
    assert leased == []
    leased = await q.lease(limit=3, visibility_timeout=30, default_capacity=1)
    assert [c.function for c in leased] == ["busy"]


async def test_pending_lists_calls_still_to_run_oldest_first(q: SqliteQueue) -> None:
    calls = [new_call(delay=i) for i in range(3)]
    for call in reversed(calls):
        await q.enqueue(call)
    assert [c.id for c in await q.pending()] == [c.id for c in calls]
    assert len(await q.pending(limit=2)) == 2


async def test_a_burst_of_concurrent_enqueues_all_lands(q: SqliteQueue) -> None:
    calls = [new_call() for _ in range(300)]
    results = await asyncio.gather(*(q.enqueue(c) for c in calls))
    assert all(created for _, created in results)
    assert (await q.stats())["queued"] == 300


async def test_leases_of_a_previous_run_are_returned_when_the_file_opens(tmp_path: Path) -> None:
    first = SqliteQueue(data_dir=tmp_path)
    await first.enqueue(new_call())
    [call] = await first.lease(limit=1, visibility_timeout=3600)
    await first.close()
    second = SqliteQueue(data_dir=tmp_path)
    try:
        [again] = await second.lease(limit=1, visibility_timeout=30)
        assert again.id == call.id and again.deliveries == 2
    finally:
        await second.close()


_WRITER = """
import asyncio, os, sys, time
from pathlib import Path
from easyfaas.interfaces import QueuedCall
from easyfaas_queue_sqlite import SqliteQueue

async def main():
    q = SqliteQueue(data_dir=Path(sys.argv[1]))
    n = 0
    while True:
        now = time.time()
        call = QueuedCall(id=f"c{n}", function="f", event=b"{}", enqueued_at=now, not_before=now)
        await q.enqueue(call)
        print(call.id, flush=True)  # only once enqueue returned: what a 202 promises
        n += 1

asyncio.run(main())
"""


def test_every_enqueue_that_returned_survives_kill_9(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    acknowledged = [proc.stdout.readline().strip() for _ in range(200)]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    acknowledged += [line.strip() for line in proc.stdout.read().splitlines() if line.strip()]

    async def stored() -> set[str]:
        queue = SqliteQueue(data_dir=tmp_path)
        try:
            return {c.id for c in await queue.pending()}
        finally:
            await queue.close()

    assert set(acknowledged) <= asyncio.run(stored())
