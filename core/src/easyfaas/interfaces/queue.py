"""The ``AsyncQueue`` ABC: where accepted asynchronous calls wait until they have run.

The controller's dispatcher is its only user; its docstring is the plugin author's guide.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

__all__ = ["AsyncQueue", "QueuedCall"]

_Calls = list["QueuedCall"]


@dataclass
class QueuedCall:
    """One accepted asynchronous call, as the queue stores and returns it.

    ``id`` is the activation id the caller got with its 202. ``attempts`` counts the runs
    that failed and were recorded with ``nack``/``dead_letter`` (a call put back without an
    attempt, e.g. when throttled, does not count); ``history`` holds those attempts'
    records. ``lease`` is the token of the lease that returned the call: ``ack``, ``nack``,
    ``dead_letter`` and ``extend`` only act while it is still the call's current lease.
    """

    id: str
    function: str
    event: bytes
    qualifier: str = "$LATEST"
    trigger: str = "api"
    idempotency_key: str | None = None
    #: When the call was accepted (epoch seconds); its age is measured from here.
    enqueued_at: float = 0.0
    #: When the call may next be leased: its retry time, or the end of its current lease.
    not_before: float = 0.0
    attempts: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    #: How many times a lease returned the call (more than ``attempts`` + 1 means redelivery).
    deliveries: int = 0
    #: ``queued``, ``leased``, ``done`` (kept only for idempotency) or ``dead``.
    state: str = "queued"
    lease: str = ""
    #: Set for dead letters: when and why the call gave up.
    dead_at: float | None = None
    reason: str | None = None


class AsyncQueue(ABC):
    """A durable queue of asynchronous calls, loaded by the controller.

    Guarantees the engine builds on:

    - **Durable accept.** ``enqueue`` returns only once the call survives a crash of any
      engine process (``kill -9``) and, for a networked queue, of the node.
    - **At-least-once delivery.** ``lease`` hides calls for ``visibility_timeout`` seconds;
      a call neither acked, nacked nor dead-lettered by then is leased again (its holder is
      presumed dead). The dispatcher ``extend``\\ s the leases of calls still running. An
      embedded queue that only one process opens may return all leases of a previous run
      when it opens, since their holder is gone.
    - **Idempotency.** A call enqueued with an ``idempotency_key`` that the same function
      already used within ``dedupe_window`` seconds (counted from that first enqueue) is not
      stored again: ``enqueue`` returns the first call's id, whatever state it is in now.

    Call order, on the controller's event loop: ``enqueue`` (API, triggers) at any time;
    the dispatcher ``lease``\\ s, then per call exactly one of ``ack`` (done),
    ``nack`` (run again at ``retry_at``) or ``dead_letter`` (give up), with ``extend``
    between; ``dead_letters``/``redrive``/``purge`` for operators; ``close`` once at
    shutdown. Methods may be called concurrently; each is atomic.

    Options from the profile (``queue: {sqlite: {...}}``) arrive as keyword arguments, with
    ``data_dir`` (the node's data directory) always passed.

    Example::

        class RedisQueue(AsyncQueue):
            PLUGIN_NAME = "redis"
            def __init__(self, *, data_dir, url="redis://127.0.0.1"): ...
            async def enqueue(self, call, *, dedupe_window=0.0): ...   # SET NX on the key, then LPUSH
            ...
    """

    PLUGIN_NAME: ClassVar[str]

    def __init__(self, *, data_dir: Path, **options: Any) -> None:
        if options:
            raise TypeError(f"queue {self.PLUGIN_NAME!r} takes no options, got {sorted(options)}")
        self.data_dir = data_dir

    @abstractmethod
    async def enqueue(self, call: QueuedCall, *, dedupe_window: float = 0.0) -> tuple[str, bool]:
        """Store a new call durably; ``(id, True)``, or ``(first id, False)`` for a duplicate key.

        ``call.not_before`` is when it may first run (usually ``enqueued_at``).
        """

    @abstractmethod
    async def lease(
        self,
        *,
        limit: int,
        visibility_timeout: float,
        capacity: Mapping[str, int] | None = None,
        default_capacity: int | None = None,
    ) -> _Calls:
        """Up to ``limit`` calls whose ``not_before`` has passed, oldest first, now leased.

        ``capacity`` caps how many calls of a function (by name) one lease may return;
        functions not in it are capped at ``default_capacity`` (``None``: only by
        ``limit``). A function at 0 is skipped without blocking calls of others.
        Each returned call carries a fresh ``lease`` token.
        """

    @abstractmethod
    async def extend(self, calls: Sequence[QueuedCall], visibility_timeout: float) -> None:
        """Push the lease of each still-leased call to ``now + visibility_timeout``."""

    @abstractmethod
    async def ack(self, call: QueuedCall) -> bool:
        """The call is finished: remove it (keeping its key until its dedupe window ends).

        ``False`` if the lease was lost (the call was leased again meanwhile).
        """

    @abstractmethod
    async def nack(self, call: QueuedCall, *, retry_at: float, attempt: dict[str, Any] | None = None) -> bool:
        """Put the call back, to be leased again at ``retry_at``.

        With ``attempt`` (the failed run's record) the run counts: ``attempts`` grows by one
        and the record is appended to ``history``; without, it does not (throttled,
        shutting down). ``False`` if the lease was lost.
        """

    @abstractmethod
    async def dead_letter(self, call: QueuedCall, *, reason: str, attempt: dict[str, Any] | None = None) -> bool:
        """Give up on the call: keep it, with ``reason``, in the dead-letter list.

        ``attempt`` is recorded as with ``nack``. ``False`` if the lease was lost.
        """

    @abstractmethod
    async def dead_letters(self, *, function: str | None = None, limit: int = 100) -> _Calls:
        """Dead letters, newest first, of every function or of one."""

    @abstractmethod
    async def redrive(self, call_id: str) -> QueuedCall | None:
        """Move one dead letter back to the queue, as if accepted now (age and attempts start
        over, ``history`` is kept); ``None`` if ``call_id`` is not a dead letter."""

    @abstractmethod
    async def purge(self, *, function: str | None = None) -> int:
        """Delete dead letters (all, or one function's); how many were deleted."""

    @abstractmethod
    async def get(self, call_id: str) -> QueuedCall | None:
        """One call in any state, or ``None`` if unknown or already removed."""

    @abstractmethod
    async def find(self, function: str, idempotency_key: str) -> str | None:
        """The id of the call that holds this key within its dedupe window, if any."""

    @abstractmethod
    async def pending(self, *, limit: int | None = None) -> _Calls:
        """Calls still to run (queued or leased), oldest first, without their leases."""

    @abstractmethod
    async def stats(self) -> dict[str, int]:
        """How many calls are in each state: ``queued``, ``leased``, ``dead``."""

    async def close(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """Release resources; called once at shutdown, after the last other call."""
