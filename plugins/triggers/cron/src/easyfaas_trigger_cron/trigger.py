"""The cron trigger: each due slot of a function's ``schedules`` becomes one asynchronous call.

Each run is ``Invoker.invoke_async`` with an idempotency key naming the schedule and the slot, so
a slot fired twice (a restart between firing and saving it) still runs once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from croniter import croniter

from easyfaas.errors import EasyFaaSError, FunctionNotFoundError, FunctionSpecError
from easyfaas.interfaces import Invoker, Trigger
from easyfaas.models import FunctionSpec, Schedule

__all__ = ["CronTrigger", "next_fire", "previous_fire"]

log = logging.getLogger(__name__)

STATE_FILE = "cron-state.json"


def _iterator(schedule: Schedule, at: float) -> croniter:
    # Six fields put seconds first (as Quartz, Spring and node-cron do); croniter's default is last.
    seconds_first = len(schedule.cron.split()) == 6
    start = datetime.fromtimestamp(at, ZoneInfo(schedule.timezone))
    return croniter(schedule.cron, start, second_at_beginning=seconds_first)


def next_fire(schedule: Schedule, after: float) -> float:
    """The first slot strictly after ``after`` (epoch seconds), in the schedule's time zone."""
    return float(_iterator(schedule, after).get_next(float))


def previous_fire(schedule: Schedule, before: float) -> float:
    """The last slot strictly before ``before``."""
    return float(_iterator(schedule, before).get_prev(float))


def schedule_key(function: str, schedule: Schedule) -> str:
    """Names a schedule across restarts: its function and content (a changed schedule is a new one)."""
    content = json.dumps([schedule.cron, schedule.timezone, schedule.event], sort_keys=True, default=str)
    return f"{function}:{hashlib.sha256(content.encode()).hexdigest()[:16]}"


@dataclass
class _Entry:
    key: str
    function: str
    schedule: Schedule
    next_at: float


class CronTrigger(Trigger):
    """Runs every deployed function's ``schedules`` (``{cron, timezone, event}``).

    Options: ``refresh`` — seconds between looks at the deployed functions (default 1);
    ``catch_up`` — when a schedule missed slots while the engine was down, run it once at
    start (default true; false: wait for the next slot). Last fire times are kept in
    ``<data_dir>/cron-state.json``.
    """

    PLUGIN_NAME = "cron"

    def __init__(self, *, data_dir: Path | None = None, refresh: float = 1.0, catch_up: bool = True) -> None:
        if not refresh > 0:
            raise ValueError("refresh must be a positive number of seconds")
        self.state_path = data_dir / STATE_FILE if data_dir is not None else None
        self.refresh = float(refresh)
        self.catch_up = catch_up
        self._invoker: Invoker | None = None
        self._entries: dict[str, _Entry] = {}
        self._last: dict[str, float] = self._load()
        self._dirty = False
        self._synced = 0.0
        self._task: asyncio.Task[None] | None = None

    # -- Trigger -------------------------------------------------------------------------

    async def start(self, invoker: Invoker) -> None:
        self._invoker = invoker
        await self._sync(time.time())
        self._task = asyncio.create_task(self._loop(), name="cron")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._save()

    def describe(self) -> dict[str, Any]:
        return {"schedules": len(self._entries)}

    def check_spec(self, spec: FunctionSpec) -> None:
        for i, schedule in enumerate(spec.schedules):
            try:
                next_fire(schedule, time.time())
            except Exception as exc:  # noqa: BLE001 - croniter's errors derive from ValueError, but not all it may raise
                raise FunctionSpecError(f"schedules[{i}].cron: {schedule.cron!r} is not a valid cron expression: {exc}") from None

    # -- the clock -----------------------------------------------------------------------

    async def _loop(self) -> None:
        while True:
            now = time.time()
            try:
                if now - self._synced >= self.refresh:
                    await self._sync(now)
                for entry in list(self._entries.values()):
                    if entry.next_at <= now:
                        await self._fire(entry, entry.next_at)
                        # From now, not from the slot: a loop that ran late skips to the next slot
                        # instead of firing every one it overslept.
                        entry.next_at = next_fire(entry.schedule, max(entry.next_at, now))
                await self._save()
            except Exception:
                log.exception("the cron trigger failed; retrying")
            now = time.time()
            wake = min([e.next_at for e in self._entries.values()] + [self._synced + self.refresh, now + self.refresh])
            await asyncio.sleep(max(0.0, wake - now))

    async def _sync(self, now: float) -> None:
        """Follow deploys and deletes; a schedule seen for the first time may catch up a missed slot."""
        assert self._invoker is not None
        current: dict[str, tuple[str, Schedule]] = {}
        for function, schedules in (await self._invoker.schedules()).items():
            for schedule in schedules:
                current[schedule_key(function, schedule)] = (function, schedule)
        self._synced = now
        for key in set(self._entries) - set(current):
            del self._entries[key]
        for key in set(self._last) - set(current):
            del self._last[key]  # a deleted function or changed schedule: nothing to catch up later
            self._dirty = True
        for key, (function, schedule) in current.items():
            if key in self._entries:
                continue
            try:
                entry = _Entry(key, function, schedule, next_fire(schedule, now))
            except Exception as exc:  # noqa: BLE001 - one bad schedule must not stop the others
                log.error("function %s: schedule %r cannot be parsed (%s); it will not run", function, schedule.cron, exc)
                continue
            self._entries[key] = entry
            last = self._last.get(key)
            if self.catch_up and last is not None:
                missed = previous_fire(schedule, now)
                if missed > last:
                    log.info("function %s: schedule %r missed the run of %s; running it now", function, schedule.cron, _iso(missed))
                    await self._fire(entry, missed, catch_up=True)

    async def _fire(self, entry: _Entry, slot: float, *, catch_up: bool = False) -> None:
        assert self._invoker is not None
        schedule = entry.schedule
        event = schedule.event
        if event is None:
            event = {
                "source": "easyfaas.cron", "detail-type": "Scheduled Event", "time": _iso(slot),
                "function": entry.function, "schedule": {"cron": schedule.cron, "timezone": schedule.timezone},
                "catch_up": catch_up,
            }  # fmt: skip
        try:
            await self._invoker.invoke_async(
                entry.function, json.dumps(event).encode(), idempotency_key=f"cron:{entry.key}:{int(slot)}", trigger="cron"
            )
        except FunctionNotFoundError:
            self._entries.pop(entry.key, None)  # deleted since the last look
            return
        except EasyFaaSError as exc:
            log.warning("function %s: scheduled run of %s was not accepted: %s", entry.function, _iso(slot), exc)
            return
        self._last[entry.key] = slot
        self._dirty = True

    # -- state ---------------------------------------------------------------------------

    def _load(self) -> dict[str, float]:
        if self.state_path is None:
            return {}
        try:
            data = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable cron state %s: %s", self.state_path, exc)
            return {}
        return {str(k): float(v) for k, v in data.items()} if isinstance(data, dict) else {}

    async def _save(self) -> None:
        if not self._dirty or self.state_path is None:
            return
        self._dirty = False
        await asyncio.to_thread(_write_atomically, self.state_path, json.dumps(self._last, indent=1, sort_keys=True))


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")
