"""The ``ActivationArchive`` ABC: activation records shared by every engine node.

A node always keeps its own records in SQLite (``controller/activations.py``), written in
batches off the call path. A code store whose state other nodes share may also offer an
archive (``CodeStore.activation_archive``): the node's batched flush copies its records
there, and the management API reads it for what the node does not know or knows only as
unfinished (an async call accepted here and run elsewhere, a call run on another node).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

__all__ = ["UNFINISHED", "ActivationArchive", "is_final", "progress"]

#: Statuses of a record that may still change: an async call waiting or running.
UNFINISHED = frozenset(("queued", "running"))


def is_final(record: dict[str, Any]) -> bool:
    """Whether a record is the call's last word (any status but ``queued`` or ``running``)."""
    return record.get("status") not in UNFINISHED


def progress(record: dict[str, Any]) -> tuple[bool, int, bool]:
    """How far a call's record has come, to compare two records of one id written by different
    nodes: final first, then the number of attempts it lists, then whether its last attempt is
    over (an async call retried after a failure is further than its failed attempt running)."""
    attempts = record.get("attempts") or []
    last_over = bool(attempts) and isinstance(attempts[-1], dict) and attempts[-1].get("status") != "running"
    return is_final(record), len(attempts), last_over


class ActivationArchive(ABC):
    """Activation records of every node, kept for a while (a TTL) in a shared store.

    Records are the dicts the controller writes (``id``, ``function``, ``version``,
    ``status``, ``trigger``, ``start``, ``end``, ``duration_ms``, ``wait_ms``, ``init_ms``,
    ``instance``, ``error``, ``result``, ``logs`` and, for async calls, ``attempts`` and
    friends); ``logs`` is at most the engine's ``log_cap`` (1 MiB by default) and ``result``
    64 KiB. A record of an id replaces the previous one (an async call is written as
    ``queued``, ``running``, then final), but never by one that tells less: nodes write
    concurrently (the node that accepted an async call writes ``queued`` while another
    already runs it), so an unfinished record must not replace one with a greater
    ``progress`` (compare-and-set); a final record replaces anything. An archive may cut
    ``logs`` to fit its value size, setting ``logs_truncated``.

    The controller calls ``put`` from a background task with the latest record of each id
    since the last successful ``put``; when ``put`` raises, it keeps them and tries again
    later (the node's own copy is already stored). ``get`` and ``list`` are called by the
    management API; their failures fall back to the node's own records. The archive is
    owned by the code store that returned it: the store's ``close`` ends it, after the
    controller's last ``put``.
    """

    @abstractmethod
    async def put(self, records: Sequence[dict[str, Any]]) -> None:
        """Store (or replace) each record; raise if any could not be stored."""

    @abstractmethod
    async def get(self, activation_id: str, *, function: str | None = None) -> dict[str, Any] | None:
        """The record of one id, or ``None``. ``function``, when the caller knows it, may
        make the lookup cheaper."""

    @abstractmethod
    async def list(self, *, function: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Up to ``limit`` records, of one function or all: the ones written last (an async
        call's final record counts as a write), sorted newest ``start`` first."""
