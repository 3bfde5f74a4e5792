"""Entry point of the ``stubs`` storage plugin."""

from __future__ import annotations

from easyfaas.plugin import Registry, hookimpl
from easyfaas_storage_stubs.store import StubsStore


@hookimpl
def easyfaas_register_storage(register: Registry) -> None:
    register.add_storage(StubsStore)
