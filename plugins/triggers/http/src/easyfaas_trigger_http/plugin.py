"""Entry point of the ``http`` trigger plugin."""

from __future__ import annotations

from easyfaas.plugin import Registry, hookimpl
from easyfaas_trigger_http.trigger import HttpTrigger


@hookimpl
def easyfaas_register_triggers(register: Registry) -> None:
    register.add_trigger(HttpTrigger)
