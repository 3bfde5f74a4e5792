"""Entry point of the ``nats`` storage plugin."""

from __future__ import annotations

from easyfaas.plugin import Registry, hookimpl
from easyfaas_storage_nats.store import NatsStore


@hookimpl
def easyfaas_register_storage(register: Registry) -> None:
    register.add_storage(NatsStore)
