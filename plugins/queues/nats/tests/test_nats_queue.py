"""The NATS queue keeps the AsyncQueue contract against a real JetStream server: durable accept,
leases shared by several nodes, retries, dead letters, idempotency keys, and NATS restarts."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from easyfaas.errors import PayloadTooLargeError
from easyfaas.interfaces import AsyncQueue, QueuedCall
from easyfaas.plugin.manager import Plugins
from easyfaas.testing.nats import NatsServer, nats_unavailable
from easyfaas_queue_nats import NatsQueue

pytestmark = pytest.mark.skipif(nats_unavailable() is not None, reason=str(nats_unavailable()))

#: Short, so that a lease given up is delivered again within the test.
ACK_WAIT = 1.0


def new_call(function: str = "f", *, key: str | None = None, event: bytes = b"{}", delay: float = 0.0) -> QueuedCall:
    now = time.time()
    return QueuedCall(
        id=os.urandom(8).hex(), function=function, event=event, idempotency_key=key, enqueued_at=now, not_before=now + delay
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    with NatsServer(tmp_path_factory.mktemp("nats") / "store") as running:
        yield running


def make(server: NatsServer, tmp_path: Path, bucket: str) -> NatsQueue:
    return NatsQueue(data_dir=tmp_path, servers=[server.url], bucket=bucket, ack_wait=ACK_WAIT)


@pytest.fixture
async def bucket() -> str:
    return f"q{os.urandom(4).hex()}"  # fresh stream and buckets per test on the shared server


@pytest.fixture
async def q(server: NatsServer, tmp_path: Path, bucket: str) -> AsyncIterator[NatsQueue]:
    queue = make(server, tmp_path, bucket)
    yield queue
    await queue.close()


@pytest.fixture
async def other(server: NatsServer, tmp_path: Path, bucket: str) -> AsyncIterator[NatsQueue]:
    """A second node on the same queue."""
    queue = make(server, tmp_path / "other", bucket)
    yield queue
    await queue.close()


async def lease_all(q: NatsQueue, n: int, *, visibility_timeout: float = 30, timeout: float = 10, **kwargs: object) -> list[QueuedCall]:
    """Lease until ``n`` calls came back (a lease may return fewer than are ready)."""
    taken: list[QueuedCall] = []
    deadline = time.monotonic() + timeout
    while len(taken) < n and time.monotonic() < deadline:
        taken += await q.lease(limit=n - len(taken), visibility_timeout=visibility_timeout, **kwargs)  # type: ignore[arg-type]
    return taken


def test_the_plugin_host_finds_and_builds_it(tmp_path: Path) -> None:
    host = Plugins()
    host.load({"queues": ["nats"]})
    queue = host.create_queue("nats", data_dir=tmp_path, servers=["nats://127.0.0.1:1"], bucket="b", replicas=3)
    assert isinstance(queue, AsyncQueue) and queue.stream == "b-calls" and queue.replicas == 3


@pytest.mark.parametrize("options", [{"bucket": "a b"}, {"replicas": 9}, {"ack_wait": 0.1}, {"retention": 60}])
def test_bad_options_are_refused(tmp_path: Path, options: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        NatsQueue(data_dir=tmp_path, **options)  # type: ignore[arg-type]


async def test_a_leased_call_is_hidden_until_acked(q: NatsQueue) -> None:
    call = new_call(event=b'{"n": 1}')
    assert await q.enqueue(call) == (call.id, True)
    [leased] = await lease_all(q, 1)
    assert (leased.id, leased.event, leased.state, leased.deliveries) == (call.id, b'{"n": 1}', "leased", 1)
    assert await q.lease(limit=10, visibility_timeout=30) == []
    assert await q.stats() == {"queued": 0, "leased": 1, "dead": 0}
    assert await q.ack(leased) is True
    assert await q.ack(leased) is False
    assert await q.get(call.id) is None
    assert await q.stats() == {"queued": 0, "leased": 0, "dead": 0}


async def test_an_expired_lease_delivers_the_call_again_and_the_old_holder_loses_it(q: NatsQueue) -> None:
    await q.enqueue(new_call())
    [first] = await lease_all(q, 1, visibility_timeout=0.05)
    # No more heartbeats once the lease ended: JetStream delivers it again after ack_wait.
    [again] = await lease_all(q, 1, timeout=ACK_WAIT * 5)
    assert again.id == first.id and again.deliveries == 2 and again.lease != first.lease
    assert await q.ack(first) is False  # the stale holder cannot finish it
    assert await q.nack(first, retry_at=0) is False
    assert await q.ack(again) is True


async def test_extend_keeps_a_running_call_hidden(q: NatsQueue, other: NatsQueue) -> None:
    await q.enqueue(new_call())
    [call] = await lease_all(q, 1, visibility_timeout=ACK_WAIT / 2)
    await q.extend([call], 30)
    await asyncio.sleep(ACK_WAIT * 2.5)  # several ack_waits: only the heartbeats keep it
    assert await other.lease(limit=1, visibility_timeout=30) == []
    assert await q.ack(call)


async def test_a_node_that_dies_loses_its_calls_to_another(server: NatsServer, tmp_path: Path, bucket: str, other: NatsQueue) -> None:
    doomed = make(server, tmp_path / "doomed", bucket)
    await doomed.enqueue(new_call())
    [call] = await lease_all(doomed, 1)
    # Die without a word: no nak, no more heartbeats (what kill -9 does to a node).
    assert doomed._heartbeat is not None
    doomed._heartbeat.cancel()
    assert doomed._nc is not None
    await doomed._nc.close()
    [taken] = await lease_all(other, 1, timeout=ACK_WAIT * 5)
    assert taken.id == call.id and taken.deliveries == 2
    assert await other.ack(taken)


async def test_calls_spread_over_nodes_and_each_runs_once(q: NatsQueue, other: NatsQueue) -> None:
    calls = [new_call() for _ in range(40)]
    await asyncio.gather(*(q.enqueue(c) for c in calls))
    mine, theirs = await asyncio.gather(lease_all(q, 20), lease_all(other, 20))
    assert len(mine) == len(theirs) == 20
    assert {c.id for c in mine} | {c.id for c in theirs} == {c.id for c in calls}
    assert all(await asyncio.gather(*(q.ack(c) for c in mine), *(other.ack(c) for c in theirs)))


async def test_nack_with_an_attempt_counts_it_and_without_does_not(q: NatsQueue) -> None:
    await q.enqueue(new_call())
    [call] = await lease_all(q, 1)
    assert await q.nack(call, retry_at=time.time() + 1.5, attempt={"n": 1, "status": "application_error"})
    assert await q.lease(limit=1, visibility_timeout=30) == []  # not before retry_at
    [call] = await lease_all(q, 1)
    assert call.attempts == 1 and call.history == [{"n": 1, "status": "application_error"}]
    assert await q.nack(call, retry_at=0)  # e.g. throttled: not an attempt
    [call] = await lease_all(q, 1)
    assert call.attempts == 1 and len(call.history) == 1 and call.deliveries == 3


async def test_dead_letters_can_be_listed_redriven_and_purged(q: NatsQueue, other: NatsQueue) -> None:
    for function in ("a", "a", "b"):
        await q.enqueue(new_call(function))
    leased = await lease_all(q, 3)
    for call in leased:
        assert await q.dead_letter(call, reason="retries_exhausted", attempt={"n": 3})
    dead = await other.dead_letters()  # seen from any node
    assert len(dead) == 3 and {c.reason for c in dead} == {"retries_exhausted"} and all(c.dead_at for c in dead)
    assert [c.function for c in await q.dead_letters(function="b")] == ["b"]
    assert dead[0].event == b"{}" and dead[0].history == [{"n": 3}] and dead[0].attempts == 1
    assert (await q.stats())["dead"] == 3

    one_of_a = next(c for c in dead if c.function == "a")
    again = await other.redrive(one_of_a.id)
    assert again is not None and again.state == "queued" and again.attempts == 0 and again.history == [{"n": 3}]
    assert again.enqueued_at >= one_of_a.enqueued_at
    assert await q.redrive(one_of_a.id) is None  # no longer a dead letter
    assert await q.redrive("no/such id") is None
    [redriven] = await lease_all(q, 1)
    assert redriven.id == again.id and redriven.event == b"{}"

    assert await q.purge(function="a") == 1
    assert [c.function for c in await q.dead_letters()] == ["b"]
    assert await q.purge() == 1 and await q.dead_letters() == []


async def test_a_dead_letter_move_cut_short_is_finished_by_the_node_that_gets_the_ticket(q: NatsQueue, other: NatsQueue) -> None:
    call = new_call(event=b'{"x": 1}')
    await q.enqueue(call)
    [leased] = await lease_all(q, 1)
    # Only the first step of dead_letter, as a node that dies midway leaves it: the dead mark.
    assert await q._settle(leased, {"state": "dead", "lease": "", "dead_at": time.time(), "reason": "retries_exhausted"})
    # No ack and no more heartbeats: the ticket comes back, and the node that gets it finishes the move.
    deadline = time.monotonic() + ACK_WAIT * 5
    while not await other.dead_letters() and time.monotonic() < deadline:
        assert await other.lease(limit=1, visibility_timeout=30) == []
    [letter] = await other.dead_letters()
    assert (letter.id, letter.state, letter.reason, letter.event) == (call.id, "dead", "retries_exhausted", b'{"x": 1}')
    assert (await q.redrive(call.id)) is not None
    [again] = await lease_all(other, 1)
    assert again.id == call.id and await other.ack(again)


async def test_an_idempotency_key_returns_the_first_call_within_its_window(q: NatsQueue, other: NatsQueue) -> None:
    first = new_call(key="k1/with spaces")
    assert await q.enqueue(first, dedupe_window=60) == (first.id, True)
    assert await other.enqueue(new_call(key="k1/with spaces"), dedupe_window=60) == (first.id, False)
    other_function = new_call("g", key="k1/with spaces")
    assert await q.enqueue(other_function, dedupe_window=60) == (other_function.id, True)
    assert await other.find("f", "k1/with spaces") == first.id
    assert await q.find("f", "unknown") is None

    [leased] = await lease_all(q, 1, capacity={"g": 0})
    assert leased.id == first.id and await q.ack(leased)
    # Finished, and still deduplicated while the window lasts.
    assert await other.enqueue(new_call(key="k1/with spaces"), dedupe_window=60) == (first.id, False)


async def test_concurrent_enqueues_of_one_key_store_one_call(q: NatsQueue, other: NatsQueue) -> None:
    calls = [new_call(key="same") for _ in range(10)]
    results = await asyncio.gather(*((q if i % 2 else other).enqueue(c, dedupe_window=60) for i, c in enumerate(calls)))
    assert len({call_id for call_id, _ in results}) == 1 and sum(created for _, created in results) == 1
    assert len(await q.pending()) == 1


async def test_a_key_can_be_used_again_once_its_window_is_over(q: NatsQueue) -> None:
    first = new_call(key="k")
    await q.enqueue(first, dedupe_window=0.05)
    await asyncio.sleep(0.1)
    second = new_call(key="k")
    assert await q.enqueue(second, dedupe_window=60) == (second.id, True)
    assert len(await lease_all(q, 2)) == 2  # the first still runs, without its key


async def test_capacity_caps_a_function_without_blocking_the_others(q: NatsQueue) -> None:
    for _ in range(20):
        await q.enqueue(new_call("busy"))
    await q.enqueue(new_call("idle"))
    await q.enqueue(new_call("other"))
    leased = await q.lease(limit=30, visibility_timeout=30, capacity={"busy": 2}, default_capacity=None)
    leased += await q.lease(limit=30, visibility_timeout=30, capacity={"busy": 0}, default_capacity=None)
    assert sorted(c.function for c in leased) == ["busy", "busy", "idle", "other"]
    assert await q.lease(limit=10, visibility_timeout=30, capacity={"busy": 0}) == []
    # The tickets kept aside are leased at once when the function has room again.
    more = await q.lease(limit=3, visibility_timeout=30, default_capacity=1)
    assert [c.function for c in more] == ["busy"]


async def test_pending_lists_calls_still_to_run_oldest_first(q: NatsQueue) -> None:
    calls = [new_call(delay=i) for i in range(3)]
    for call in reversed(calls):
        await q.enqueue(call)
    assert [c.id for c in await q.pending()] == [c.id for c in calls]
    assert len(await q.pending(limit=2)) == 2
    assert all(c.lease == "" for c in await q.pending())


async def test_a_burst_of_concurrent_enqueues_all_lands(q: NatsQueue) -> None:
    calls = [new_call() for _ in range(300)]
    results = await asyncio.gather(*(q.enqueue(c) for c in calls))
    assert all(created for _, created in results)
    assert (await q.stats())["queued"] == 300


async def test_an_event_over_the_servers_message_size_is_refused(q: NatsQueue) -> None:
    with pytest.raises(PayloadTooLargeError, match="max_payload"):
        await q.enqueue(new_call(event=b"x" * (2 << 20)))


async def test_a_closed_queue_hands_its_leases_back_at_once(q: NatsQueue, server: NatsServer, tmp_path: Path, bucket: str) -> None:
    leaving = make(server, tmp_path / "leaving", bucket)
    await leaving.enqueue(new_call())
    [call] = await lease_all(leaving, 1, visibility_timeout=3600)
    await leaving.close()
    [again] = await lease_all(q, 1, timeout=ACK_WAIT / 2 + 2)
    assert again.id == call.id


async def test_nothing_accepted_is_lost_when_nats_restarts(tmp_path: Path) -> None:
    with NatsServer(tmp_path / "own") as own:
        queue = make(own, tmp_path, "restarts")
        try:
            accepted = [new_call() for _ in range(50)]
            for call in accepted:
                await queue.enqueue(call)
            [held] = await lease_all(queue, 1)
            await asyncio.to_thread(own.restart, kill=True)
            taken = [held]
            deadline = time.monotonic() + 30
            while len({c.id for c in taken}) < len(accepted) and time.monotonic() < deadline:
                try:
                    taken += await queue.lease(limit=50, visibility_timeout=30)
                except Exception:
                    await asyncio.sleep(0.2)  # reconnecting
            assert {c.id for c in taken} == {c.id for c in accepted}
            for call in taken:
                await queue.ack(call)
        finally:
            await queue.close()
