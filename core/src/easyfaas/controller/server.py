"""The controller process: the engine, its management API and its triggers, until a signal.

Run as ``python -m easyfaas.controller --profile FILE``; ``easyfaas up`` starts it.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from easyfaas.controller.api import build_app
from easyfaas.controller.engine import Controller
from easyfaas.profile import Profile

__all__ = ["run_controller"]

log = logging.getLogger(__name__)


async def run_controller(profile: Profile, *, ready: asyncio.Event | None = None) -> None:
    controller = Controller(profile)
    await controller.start()
    host, _, port = profile.model.controller.api.rpartition(":")
    runner = web.AppRunner(build_app(controller), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, int(port), reuse_address=True)
    await site.start()
    log.info("management API on http://%s:%s/v1", host, port)
    for name, trigger in controller.triggers.items():
        log.info("trigger %s: %s", name, trigger.describe())

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        log.info("draining in-flight calls")
        await controller.stop()
        await runner.cleanup()
        log.info("controller stopped")
