"""easyfaas trigger plugin: the ``schedules`` of function specs, run as asynchronous calls."""

from __future__ import annotations

from easyfaas_trigger_cron.trigger import CronTrigger

__all__ = ["CronTrigger"]
