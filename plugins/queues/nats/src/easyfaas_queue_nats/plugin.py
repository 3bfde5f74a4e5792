"""Entry point of the ``nats`` queue plugin."""

from __future__ import annotations

from easyfaas.plugin import Registry, hookimpl
from easyfaas_queue_nats.queue import NatsQueue


@hookimpl
def easyfaas_register_queues(register: Registry) -> None:
    register.add_queue(NatsQueue)
