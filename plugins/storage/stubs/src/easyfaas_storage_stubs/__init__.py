"""easyfaas storage plugin: functions and their code in a local directory."""

from __future__ import annotations

from easyfaas_storage_stubs.store import StubsStore

__all__ = ["StubsStore"]
