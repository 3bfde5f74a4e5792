"""Entry point of the ``cron`` trigger plugin."""

from __future__ import annotations

from easyfaas.plugin import Registry, hookimpl
from easyfaas_trigger_cron.trigger import CronTrigger


@hookimpl
def easyfaas_register_triggers(register: Registry) -> None:
    register.add_trigger(CronTrigger)
