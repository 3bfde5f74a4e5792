"""easyfaas queue plugin: accepted async calls in SQLite (WAL, synchronous=FULL) in the data directory."""

from __future__ import annotations

from easyfaas_queue_sqlite.queue import SqliteQueue

__all__ = ["SqliteQueue"]
