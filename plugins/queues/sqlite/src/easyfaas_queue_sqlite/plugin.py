"""Entry point of the ``sqlite`` queue plugin."""

from __future__ import annotations

from easyfaas.plugin import Registry, hookimpl
from easyfaas_queue_sqlite.queue import SqliteQueue


@hookimpl
def easyfaas_register_queues(register: Registry) -> None:
    register.add_queue(SqliteQueue)
