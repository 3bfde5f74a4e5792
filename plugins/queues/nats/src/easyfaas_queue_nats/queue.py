"""The networked async queue: a JetStream work-queue stream of tickets leased through one pull
consumer shared by every node, each call's state, event and dead letter in key-value buckets."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, KeyValueConfig, RetentionPolicy, StorageType, StreamConfig
from nats.js.client import JetStreamContext
from nats.js.kv import KeyValue

from easyfaas.errors import PayloadTooLargeError, PlatformError
from easyfaas.interfaces import AsyncQueue, QueuedCall
from easyfaas_nats import REQUEST_TIMEOUT, check_options, connect, nats_errors, scan

__all__ = ["NatsQueue"]

log = logging.getLogger(__name__)

_Calls = list[QueuedCall]
#: The durable pull consumer every node leases through.
CONSUMER = "dispatch"
#: How long ``lease`` waits for a first ticket when none is ready (a long poll: calls
#: enqueued on other nodes are seen at once, not at the dispatcher's next poll).
FETCH_WAIT = 0.5
#: Longest wait for a batch of ready tickets (other nodes may take some of them first).
BATCH_WAIT = 0.1
#: Tickets of a function at its capacity are kept aside this long for the next lease, then
#: handed back to the stream for other nodes.
PARK_FOR = 1.0
MAX_PARKED = 256
#: A key claimed by an enqueue that did not finish within this long is taken over.
CLAIM_STALE = 10.0
#: Room for headers and framing within the server's ``max_payload``.
_ENVELOPE = 1024
_WRONG_LAST = (10071, 10164)  # JetStream: wrong last sequence for the subject


@dataclass
class _Held:
    """A ticket this node leased: acked, nak'd or kept alive (``in_progress``) from here."""

    msg: Msg
    lease: str
    revision: int  # of the call's record as this lease wrote it: compare-and-set from here
    record: dict[str, Any]
    until: float  # the lease's end; the ticket is kept alive until then


@dataclass
class _Parked:
    msg: Msg
    since: float


class NatsQueue(AsyncQueue):
    """Options: ``servers`` — NATS URLs (default ``["nats://127.0.0.1:4222"]``); ``bucket`` —
    prefix of the stream and bucket names (default ``easyfaas``); ``replicas`` — JetStream
    replicas (1 to 5; 3 in a cluster); ``ack_wait`` — seconds without a heartbeat after which
    a node's calls go to another node (default 30); ``key_ttl`` — how long idempotency keys
    are kept at most, at least the engine's ``idempotency_window`` (default 1 day);
    ``retention`` — how long a call or dead letter is kept at most (default 14 days, more
    than the longest ``max_event_age``); ``connect_wait`` — seconds to keep trying the first
    connection (default 60).

    Resources, ``P`` being ``bucket``: stream ``P-calls`` (work queue, subjects
    ``P.calls.<function>``; one ticket per call, its body the call id) and its consumer
    ``dispatch``; key-value buckets ``P-calls`` (id → the call's state, JSON), ``P-events``
    (id → event), ``P-dead`` (id → dead letter) and ``P-keys`` (``<function>.<key hash>`` →
    the id holding the key, until when).

    A lease is the ticket delivered to this node: its record is moved to ``leased`` with a new
    token by compare-and-set on the record's revision, and the ticket is kept alive with
    ``in_progress`` until the lease ends; ``ack`` deletes the record then acks the ticket,
    ``nack`` writes the retry time then naks the ticket with that delay, ``dead_letter``
    moves the record to ``P-dead``. A node that dies stops its heartbeats: after
    ``ack_wait`` JetStream delivers its tickets to another node, whose compare-and-set makes
    the dead node's tokens stale.
    """

    PLUGIN_NAME = "nats"

    def __init__(
        self, *, data_dir: Path, servers: list[str] | str | None = None, bucket: str = "easyfaas", replicas: int = 1,
        ack_wait: float = 30.0, key_ttl: float = 86400.0, retention: float = 14 * 86400.0, connect_wait: float = 60.0,
    ) -> None:  # fmt: skip
        super().__init__(data_dir=data_dir)
        self.servers = check_options(servers, bucket, replicas)
        if ack_wait < 0.5:
            raise ValueError("ack_wait must be at least 0.5 seconds")
        if key_ttl <= 0 or retention < 7 * 86400:
            raise ValueError("key_ttl must be positive and retention at least 7 days (the longest max_event_age)")
        self.bucket = bucket
        self.replicas = replicas
        self.ack_wait = ack_wait
        self.key_ttl = key_ttl
        self.retention = retention
        self.connect_wait = connect_wait
        self.stream = f"{bucket}-calls"
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._calls: KeyValue | None = None
        self._events: KeyValue | None = None
        self._dead: KeyValue | None = None
        self._keys: KeyValue | None = None
        self._sub: JetStreamContext.PullSubscription | None = None
        self._open_lock = asyncio.Lock()
        self._lease_lock = asyncio.Lock()
        self._held: dict[str, _Held] = {}
        self._parked: list[_Parked] = []
        self._heartbeat: asyncio.Task[None] | None = None
        self._closed = False

    # -- connection ------------------------------------------------------------------------

    async def _open(self) -> JetStreamContext:
        """Connect and create what is missing on first use: the constructor is synchronous."""
        if self._js is None:
            async with self._open_lock:
                if self._js is None:
                    if self._closed:
                        raise PlatformError("the NATS queue is closed")
                    self._nc = await connect(self.servers, name="easyfaas-queue", wait=self.connect_wait)
                    js = self._nc.jetstream(timeout=REQUEST_TIMEOUT)
                    with nats_errors("opening the queue's stream and buckets"):
                        self._calls = await self._bucket(js, f"{self.bucket}-calls", self.retention)
                        self._events = await self._bucket(js, f"{self.bucket}-events", self.retention)
                        self._dead = await self._bucket(js, f"{self.bucket}-dead", self.retention)
                        self._keys = await self._bucket(js, f"{self.bucket}-keys", self.key_ttl)
                        await self._ensure_stream(js)
                        self._sub = await js.pull_subscribe(
                            f"{self.bucket}.calls.>", durable=CONSUMER, stream=self.stream,
                            config=ConsumerConfig(
                                durable_name=CONSUMER, ack_policy=AckPolicy.EXPLICIT, ack_wait=self.ack_wait,
                                max_deliver=-1, max_ack_pending=-1, filter_subject=f"{self.bucket}.calls.>",
                            ),
                        )  # fmt: skip
                    self._js = js
        return self._js

    async def _bucket(self, js: JetStreamContext, name: str, ttl: float) -> KeyValue:
        try:
            return await js.key_value(name)
        except nats.js.errors.BucketNotFoundError:
            config = KeyValueConfig(
                bucket=name, history=1, ttl=ttl, replicas=self.replicas, storage=StorageType.FILE, direct=True
            )
            return await js.create_key_value(config)

    async def _ensure_stream(self, js: JetStreamContext) -> None:
        try:
            await js.stream_info(self.stream)
        except nats.js.errors.NotFoundError:
            config = StreamConfig(
                name=self.stream, subjects=[f"{self.bucket}.calls.>"], retention=RetentionPolicy.WORK_QUEUE,
                storage=StorageType.FILE, num_replicas=self.replicas, max_age=self.retention, duplicate_window=120.0,
            )  # fmt: skip
            await js.add_stream(config)

    def _buckets(self) -> tuple[KeyValue, KeyValue, KeyValue, KeyValue]:
        assert self._calls and self._events and self._dead and self._keys, "opened by _open()"
        return self._calls, self._events, self._dead, self._keys

    # -- accepting -------------------------------------------------------------------------

    async def enqueue(self, call: QueuedCall, *, dedupe_window: float = 0.0) -> tuple[str, bool]:
        js = await self._open()
        calls, events, _, keys = self._buckets()
        assert self._nc is not None
        if len(call.event) > self._nc.max_payload - _ENVELOPE:
            raise PayloadTooLargeError(
                f"the event is {len(call.event)} bytes; this NATS server takes at most {self._nc.max_payload}"
                " per message (raise max_payload in its configuration)"
            )
        with nats_errors("accepting an async call"):
            claim: tuple[str, int] | None = None
            if call.idempotency_key is not None:
                first, claim = await self._claim(keys, call, dedupe_window)
                if first is not None:
                    return first, False
            try:
                # Both before the ticket: whoever leases it finds the call complete.
                await asyncio.gather(events.put(call.id, call.event), calls.put(call.id, _encode(call, ticket=1)))
                await self._publish(js, call.function, call.id, 1)
            except BaseException:
                if claim is not None:
                    with contextlib.suppress(nats.errors.Error, TimeoutError):
                        await keys.delete(claim[0], last=claim[1])
                raise
            if claim is not None:
                # The key now names a stored call (until then a duplicate is told "in progress").
                with contextlib.suppress(nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.APIError):
                    value = {"id": call.id, "until": call.enqueued_at + dedupe_window, "at": time.time(), "pending": False}
                    await keys.update(claim[0], json.dumps(value).encode(), last=claim[1])
        return call.id, True

    async def _claim(self, keys: KeyValue, call: QueuedCall, window: float) -> tuple[str | None, tuple[str, int] | None]:
        """Take the call's idempotency key: ``(first id, None)`` if another call holds it, else
        ``(None, (key, revision))``."""
        assert call.idempotency_key is not None
        key = _key_name(call.function, call.idempotency_key)
        while True:
            now = time.time()
            value = json.dumps({"id": call.id, "until": call.enqueued_at + window, "at": now, "pending": True}).encode()
            try:
                return None, (key, await keys.create(key, value))
            except nats.js.errors.KeyWrongLastSequenceError:
                pass
            try:
                entry = await keys.get(key)
            except nats.js.errors.KeyNotFoundError:
                continue  # removed meanwhile: try to create it again
            holder = json.loads(entry.value or b"{}")
            if _holds(holder, now):
                return str(holder["id"]), None
            try:
                return None, (key, await keys.update(key, value, last=entry.revision))
            except nats.js.errors.KeyWrongLastSequenceError:
                continue

    async def _publish(self, js: JetStreamContext, function: str, call_id: str, ticket: int) -> None:
        # The message id makes a publish retried by the client (or after a reconnection) land once.
        await js.publish(
            f"{self.bucket}.calls.{function}", call_id.encode(), stream=self.stream,
            headers={"Nats-Msg-Id": f"{call_id}.{ticket}"},
        )  # fmt: skip

    # -- leasing ---------------------------------------------------------------------------

    async def lease(
        self,
        *,
        limit: int,
        visibility_timeout: float,
        capacity: Mapping[str, int] | None = None,
        default_capacity: int | None = None,
    ) -> _Calls:
        await self._open()
        if self._heartbeat is None:
            self._heartbeat = asyncio.create_task(self._keep_alive(), name="queue-nats-heartbeat")
        caps = dict(capacity or {})
        counts: dict[str, int] = {}
        chosen: list[_Parked] = []
        async with self._lease_lock:
            candidates, self._parked = self._parked, []
            # Long-poll only when nothing waits here already: a lease that blocks would keep the
            # dispatcher from running the calls that its freed capacity could take meanwhile.
            long_poll = not candidates
            fetches = 0
            try:
                while len(chosen) < limit:
                    if not candidates:
                        if fetches == 2:  # the rest of the backlog is over capacity: enough for this lease
                            break
                        batch = min(limit - len(chosen), MAX_PARKED - len(self._parked))
                        fetched = await self._fetch(batch, long_poll and fetches == 0) if batch > 0 else []
                        candidates = [_Parked(m, time.monotonic()) for m in fetched]
                        fetches += 1
                        if not candidates:
                            break
                    parked = candidates.pop(0)
                    function = parked.msg.subject.rsplit(".", 1)[-1]
                    cap = caps.get(function, default_capacity)
                    if cap is not None and counts.get(function, 0) >= cap:
                        await self._park(parked)
                        continue
                    counts[function] = counts.get(function, 0) + 1
                    chosen.append(parked)
            except PlatformError:
                if not chosen and not self._parked and not candidates:
                    raise
                log.warning("fetching async calls failed; leasing the %d fetched", len(chosen), exc_info=True)
            finally:
                for parked in candidates:  # fetched but not looked at: kept for the next lease
                    self._parked.append(parked)
            # Each take is a few round trips to NATS: all at once.
            outcomes = await asyncio.gather(*(self._take(c.msg, visibility_timeout) for c in chosen), return_exceptions=True)
        taken = [call for call in outcomes if isinstance(call, QueuedCall)]
        errors = [error for error in outcomes if isinstance(error, BaseException)]
        if errors:
            # Calls already leased must reach the dispatcher: raising would strand them here,
            # kept alive by heartbeats, until their leases end. Their tickets come back anyway.
            if not taken:
                raise errors[0]
            log.warning("leasing %d async calls failed: %s; running the %d leased", len(errors), errors[0], len(taken))
        return taken

    async def _fetch(self, want: int, long_poll: bool) -> list[Msg]:
        """Up to ``want`` tickets. A pull asks for no more than are ready: JetStream holds a pull
        it cannot fill until it expires (2.9 ignores ``no_wait`` then), which would make every
        lease of a short queue wait that long."""
        assert self._sub is not None
        with nats_errors("leasing async calls"):
            ready = int((await self._sub.consumer_info()).num_pending or 0)
            try:
                if ready:
                    return await self._sub.fetch(min(want, ready), timeout=BATCH_WAIT)
                if long_poll:  # also how tickets due again (nak'd, or of a lost node) come back
                    return await self._sub.fetch(1, timeout=FETCH_WAIT)
            except TimeoutError:  # nats-py raises its own subclass, or asyncio's, when nothing came
                pass
            return []

    async def _park(self, parked: _Parked) -> None:
        if len(self._parked) < MAX_PARKED and time.monotonic() - parked.since < PARK_FOR:
            self._parked.append(parked)
        else:
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                await parked.msg.nak(delay=0.25)

    async def _take(self, msg: Msg, visibility_timeout: float) -> QueuedCall | None:
        """Lease the call of a delivered ticket, or settle the ticket if it has nothing to run."""
        calls, events, _, _ = self._buckets()
        call_id = msg.data.decode()
        now = time.time()
        with nats_errors(f"leasing async call {call_id}"):
            # The event is read at once with the record (one round trip less on the way to a run):
            # wasted only for a ticket that turns out to have nothing to run.
            found, event = await asyncio.gather(calls.get(call_id), _event(events, call_id), return_exceptions=True)
            if isinstance(found, nats.js.errors.KeyNotFoundError):
                await msg.ack()  # finished (or purged) before this ticket came back
                return None
            if isinstance(found, BaseException):
                raise found
            if isinstance(event, BaseException):
                raise event
            entry = found
            record = json.loads(entry.value or b"{}")
            if record["state"] == "dead":  # dead-lettered by a node that died before moving it
                await self._bury(record, entry.revision or 0)
                await msg.ack()
                return None
            delivery = msg.metadata.num_delivered or 0
            if record["state"] == "leased" and delivery <= record.get("delivery", 0):
                return None  # an older delivery than the lease's own (it waited here): not ours to settle
            if record["state"] == "queued" and record["not_before"] > now + 0.05:
                await msg.nak(delay=record["not_before"] - now)
                return None
            # Queued and due, or leased by a holder whose heartbeats stopped: lease it here.
            record.update(state="leased", lease=uuid.uuid4().hex, deliveries=record["deliveries"] + 1,
                          not_before=now + visibility_timeout, delivery=delivery)  # fmt: skip
            try:
                revision = await calls.update(call_id, json.dumps(record).encode(), last=entry.revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                await msg.nak(delay=0.25)  # changed meanwhile (acked, redriven): look again later
                return None
        self._held[call_id] = _Held(msg, record["lease"], revision, record, now + visibility_timeout)
        return _call(record, event)

    async def _keep_alive(self) -> None:
        """Heartbeats for the tickets of running calls, until their leases end; parked tickets
        are handed back once they have waited ``PARK_FOR``."""
        while True:
            await asyncio.sleep(min(self.ack_wait / 3, PARK_FOR))
            try:
                await self._beat()
            except Exception:
                # Never let the heartbeats stop on a live node: its calls would run twice.
                log.exception("async call heartbeats failed")

    async def _beat(self) -> None:
        now = time.time()
        for held in list(self._held.values()):
            if held.until > now:
                with contextlib.suppress(nats.errors.Error, TimeoutError):
                    await held.msg.in_progress()
        async with self._lease_lock:
            keep = []
            for parked in self._parked:
                with contextlib.suppress(nats.errors.Error, TimeoutError):
                    if time.monotonic() - parked.since < PARK_FOR:
                        await parked.msg.in_progress()
                        keep.append(parked)
                    else:
                        await parked.msg.nak()
            self._parked = keep

    async def extend(self, calls: Sequence[QueuedCall], visibility_timeout: float) -> None:
        until = time.time() + visibility_timeout
        for call in calls:
            held = self._held.get(call.id)
            if held is not None and held.lease == call.lease:
                held.until = until
                with contextlib.suppress(nats.errors.Error, TimeoutError):
                    await held.msg.in_progress()

    # -- finishing -------------------------------------------------------------------------

    async def _settle(self, call: QueuedCall, change: dict[str, Any] | None) -> tuple[_Held | None, dict[str, Any], int] | None:
        """Write ``change`` into the call's record (``None``: delete it) if ``call.lease`` is still
        its lease; the held ticket, the record and its new revision, or ``None`` if the lease is lost."""
        calls, _, _, _ = self._buckets()
        held = self._held.get(call.id)
        if held is not None and held.lease == call.lease:
            record, revision = dict(held.record), held.revision
        else:
            held = None
            try:
                entry = await calls.get(call.id)
            except nats.js.errors.KeyNotFoundError:
                return None
            record, revision = json.loads(entry.value or b"{}"), entry.revision or 0
            if record.get("state") != "leased" or record.get("lease") != call.lease:
                return None
        try:
            if change is None:
                await calls.delete(call.id, last=revision)
                new_revision = 0
            else:
                record.update(change)
                new_revision = await calls.update(call.id, json.dumps(record).encode(), last=revision)
        except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.APIError) as exc:
            if isinstance(exc, nats.js.errors.APIError) and exc.err_code not in _WRONG_LAST:
                raise
            # Another node leased it meanwhile: this lease is stale.
            if held is not None:
                self._held.pop(call.id, None)
            return None
        if held is not None:
            self._held.pop(call.id, None)
        return held, record, new_revision

    async def ack(self, call: QueuedCall) -> bool:
        await self._open()
        _, events, _, _ = self._buckets()
        with nats_errors(f"acknowledging async call {call.id}"):
            settled = await self._settle(call, None)
            if settled is None:
                return False
            held, _, _ = settled
            if held is not None:
                await held.msg.ack()
            with contextlib.suppress(nats.js.errors.KeyNotFoundError):
                await events.delete(call.id)
        return True

    async def nack(self, call: QueuedCall, *, retry_at: float, attempt: dict[str, Any] | None = None) -> bool:
        await self._open()
        with nats_errors(f"putting back async call {call.id}"):
            change = await self._attempted(call, attempt)
            change.update(state="queued", lease="", not_before=retry_at)
            settled = await self._settle(call, change)
            if settled is None:
                return False
            held, _, _ = settled
            if held is not None:
                await held.msg.nak(delay=max(0.0, retry_at - time.time()))
        return True

    async def dead_letter(self, call: QueuedCall, *, reason: str, attempt: dict[str, Any] | None = None) -> bool:
        await self._open()
        with nats_errors(f"dead-lettering async call {call.id}"):
            change = await self._attempted(call, attempt)
            change.update(state="dead", lease="", dead_at=time.time(), reason=reason)
            # Marked dead in place first: if this node dies now, the ticket comes back to a node
            # that sees the mark and finishes the move (``_take``).
            settled = await self._settle(call, change)
            if settled is None:
                return False
            held, record, revision = settled
            await self._bury(record, revision)
            if held is not None:
                await held.msg.ack()
        return True

    async def _attempted(self, call: QueuedCall, attempt: dict[str, Any] | None) -> dict[str, Any]:
        """The record's attempt fields with ``attempt`` counted."""
        held = self._held.get(call.id)
        mine = held is not None and held.lease == call.lease
        history = list(held.record["history"] if held is not None and mine else call.history)
        attempts = int(held.record["attempts"] if held is not None and mine else call.attempts)
        if attempt is None:
            return {"attempts": attempts, "history": history}
        return {"attempts": attempts + 1, "history": [*history, attempt]}

    async def _bury(self, record: dict[str, Any], revision: int) -> None:
        """Move a record marked dead from the calls bucket to the dead letters."""
        calls, _, dead, _ = self._buckets()
        await dead.put(record["id"], json.dumps(record).encode())
        with contextlib.suppress(nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.APIError):
            await calls.delete(record["id"], last=revision)

    # -- dead letters ----------------------------------------------------------------------

    async def dead_letters(self, *, function: str | None = None, limit: int = 100) -> _Calls:
        await self._open()
        _, events, dead, _ = self._buckets()
        with nats_errors("listing dead letters"):
            records = [json.loads(entry.value or b"{}") for entry in await scan(dead, ">")]
            records = [r for r in records if function is None or r["function"] == function]
            records.sort(key=lambda r: (r.get("dead_at") or 0.0, r["enqueued_at"]), reverse=True)
            return [_call(r, await _event(events, r["id"])) for r in records[:limit]]

    async def redrive(self, call_id: str) -> QueuedCall | None:
        js = await self._open()
        calls, events, dead, _ = self._buckets()
        with nats_errors(f"redriving dead letter {call_id}"):
            try:
                entry = await dead.get(call_id)
            except (nats.js.errors.KeyNotFoundError, nats.js.errors.InvalidKeyError):
                return None
            record = json.loads(entry.value or b"{}")
            now = time.time()
            record.update(state="queued", lease="", attempts=0, enqueued_at=now, not_before=now, dead_at=None,
                          reason=None, ticket=int(record.get("ticket", 1)) + 1)  # fmt: skip
            event = await _event(events, call_id)
            data = json.dumps(record).encode()
            try:
                # ``create``: of two operators redriving at once, one wins.
                await calls.create(call_id, data)
            except nats.js.errors.KeyWrongLastSequenceError:
                # Unless what is there is the dead mark of a move that a crash interrupted.
                try:
                    current = await calls.get(call_id)
                    if json.loads(current.value or b"{}").get("state") != "dead":
                        return None
                    await calls.update(call_id, data, last=current.revision)
                except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyWrongLastSequenceError):
                    return None
            await events.put(call_id, event)  # written again: its retention starts over
            await self._publish(js, record["function"], call_id, record["ticket"])
            with contextlib.suppress(nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.APIError):
                await dead.delete(call_id, last=entry.revision)
        return _call(record, event)

    async def purge(self, *, function: str | None = None) -> int:
        await self._open()
        _, events, dead, _ = self._buckets()
        purged = 0
        with nats_errors("purging dead letters"):
            for entry in await scan(dead, ">"):
                record = json.loads(entry.value or b"{}")
                if function is None or record["function"] == function:
                    await dead.purge(entry.key)
                    with contextlib.suppress(nats.js.errors.KeyNotFoundError):
                        await events.purge(entry.key)
                    purged += 1
        return purged

    # -- looking -----------------------------------------------------------------------------

    async def get(self, call_id: str) -> QueuedCall | None:
        await self._open()
        calls, events, dead, _ = self._buckets()
        with nats_errors(f"reading async call {call_id}"):
            for bucket in (calls, dead):
                try:
                    entry = await bucket.get(call_id)
                except (nats.js.errors.KeyNotFoundError, nats.js.errors.InvalidKeyError):
                    continue
                return _call(json.loads(entry.value or b"{}"), await _event(events, call_id))
        return None

    async def find(self, function: str, idempotency_key: str) -> str | None:
        await self._open()
        _, _, _, keys = self._buckets()
        with nats_errors("looking up an idempotency key"):
            try:
                entry = await keys.get(_key_name(function, idempotency_key))
            except nats.js.errors.KeyNotFoundError:
                return None
        holder = json.loads(entry.value or b"{}")
        return str(holder["id"]) if _holds(holder, time.time()) else None

    async def pending(self, *, limit: int | None = None) -> _Calls:
        await self._open()
        calls, events, _, _ = self._buckets()
        with nats_errors("listing pending async calls"):
            records = [json.loads(entry.value or b"{}") for entry in await scan(calls, ">")]
            records = [r for r in records if r["state"] in ("queued", "leased")]
            records.sort(key=lambda r: (r["not_before"], r["enqueued_at"]))
            found = []
            for record in records[:limit]:
                call = _call(record, await _event(events, record["id"]))
                call.lease = ""
                found.append(call)
        return found

    async def stats(self) -> dict[str, int]:
        await self._open()
        calls, _, dead, _ = self._buckets()
        counts = {"queued": 0, "leased": 0, "dead": 0}
        with nats_errors("counting async calls"):
            for entry in await scan(calls, ">"):
                state = json.loads(entry.value or b"{}").get("state")
                if state in counts:
                    counts[state] += 1
            counts["dead"] = len(await scan(dead, ">"))
        return counts

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            await asyncio.gather(self._heartbeat, return_exceptions=True)
        # Tickets still held go back at once rather than after ``ack_wait``: another node runs them.
        for msg in [*(held.msg for held in self._held.values()), *(parked.msg for parked in self._parked)]:
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                await msg.nak()
        self._held.clear()
        self._parked.clear()
        if self._nc is not None:
            nc, self._nc = self._nc, None
            try:
                await nc.close()
            except (nats.errors.Error, OSError, TimeoutError) as exc:
                log.debug("closing the NATS connection: %s", exc)


def _key_name(function: str, idempotency_key: str) -> str:
    # Hashed: an idempotency key may hold characters a NATS key may not.
    return f"{function}.{hashlib.sha256(idempotency_key.encode()).hexdigest()[:48]}"


def _holds(holder: dict[str, Any], now: float) -> bool:
    """Whether a key's holder still owns it: within its window, and stored (or being stored)."""
    if float(holder.get("until", 0.0)) <= now:
        return False
    return not holder.get("pending") or now - float(holder.get("at", 0.0)) < CLAIM_STALE


def _encode(call: QueuedCall, *, ticket: int) -> bytes:
    record = {k: v for k, v in dataclasses.asdict(call).items() if k != "event"}
    record.update(state="queued", lease="", ticket=ticket)
    return json.dumps(record).encode()


_FIELDS = frozenset(f.name for f in dataclasses.fields(QueuedCall)) - {"event"}


def _call(record: dict[str, Any], event: bytes) -> QueuedCall:
    return QueuedCall(event=event, **{k: v for k, v in record.items() if k in _FIELDS})


async def _event(events: KeyValue, call_id: str) -> bytes:
    try:
        return (await events.get(call_id)).value or b""
    except nats.js.errors.KeyNotFoundError:
        return b""
