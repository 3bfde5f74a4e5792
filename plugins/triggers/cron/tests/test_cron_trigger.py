"""The cron trigger against a fake invoker: parsing, time zones, firing, missed runs, state."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from easyfaas.errors import FunctionNotFoundError, FunctionSpecError
from easyfaas.models import FunctionSpec, Schedule
from easyfaas.plugin.manager import Plugins
from easyfaas_trigger_cron import CronTrigger
from easyfaas_trigger_cron.trigger import STATE_FILE, next_fire, previous_fire, schedule_key


class FakeInvoker:
    def __init__(self, schedules: dict[str, list[Schedule]]) -> None:
        self.table = schedules
        self.calls: list[dict[str, Any]] = []
        self.keys: set[str] = set()

    async def schedules(self) -> dict[str, list[Schedule]]:
        return self.table

    async def invoke_async(self, function: str, event: bytes, *, qualifier: str = "$LATEST",
                           idempotency_key: str | None = None, trigger: str = "api") -> str:  # fmt: skip
        if function not in self.table:
            raise FunctionNotFoundError(function)
        self.calls.append({"function": function, "event": json.loads(event), "key": idempotency_key, "trigger": trigger})
        self.keys.add(idempotency_key or "")
        return f"a{len(self.calls)}"


def ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


async def wait_until(predicate: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def test_the_plugin_host_builds_it_with_the_data_dir(tmp_path: Path) -> None:
    host = Plugins()
    host.load({"triggers": ["cron"]})
    trigger = host.create_trigger("cron", data_dir=tmp_path)
    assert isinstance(trigger, CronTrigger) and trigger.state_path == tmp_path / STATE_FILE


def test_six_fields_put_seconds_first() -> None:
    every_5s = Schedule(cron="*/5 * * * * *")
    assert next_fire(every_5s, ts("2025-01-01T00:00:03+00:00")) == ts("2025-01-01T00:00:05+00:00")
    assert previous_fire(every_5s, ts("2025-01-01T00:00:03+00:00")) == ts("2025-01-01T00:00:00+00:00")
    at_second_30 = Schedule(cron="30 * * * * *")
    assert next_fire(at_second_30, ts("2025-01-01T00:00:31+00:00")) == ts("2025-01-01T00:01:30+00:00")


def test_five_fields_and_time_zones_follow_daylight_saving() -> None:
    nine_in_paris = Schedule(cron="0 9 * * *", timezone="Europe/Paris")
    assert next_fire(nine_in_paris, ts("2025-01-15T00:00:00+00:00")) == ts("2025-01-15T08:00:00+00:00")  # CET
    assert next_fire(nine_in_paris, ts("2025-07-15T00:00:00+00:00")) == ts("2025-07-15T07:00:00+00:00")  # CEST
    assert next_fire(Schedule(cron="@hourly"), ts("2025-01-01T10:20:00+00:00")) == ts("2025-01-01T11:00:00+00:00")


def test_bad_expressions_are_refused_at_deploy() -> None:
    trigger = CronTrigger()
    trigger.check_spec(FunctionSpec(name="ok", schedules=[Schedule(cron="*/5 * * * * *")]))
    for bad in ("61 * * * *", "0 0 31 2 *", "* * * JAN-FOO *"):
        with pytest.raises(FunctionSpecError, match=r"schedules\[0\]\.cron"):
            trigger.check_spec(FunctionSpec(name="bad", schedules=[Schedule(cron=bad)]))


def test_a_schedule_is_named_by_its_function_and_content() -> None:
    a = Schedule(cron="* * * * *", event={"x": 1})
    assert schedule_key("f", a) == schedule_key("f", Schedule(cron="* * * * *", event={"x": 1}))
    assert schedule_key("f", a) != schedule_key("g", a)
    assert schedule_key("f", a) != schedule_key("f", Schedule(cron="* * * * *", event={"x": 2}))


async def test_every_second_schedule_fires_async_calls_with_one_key_per_slot(tmp_path: Path) -> None:
    invoker = FakeInvoker({"tick": [Schedule(cron="* * * * * *")], "tock": [Schedule(cron="* * * * * *", event={"k": "v"})]})
    trigger = CronTrigger(data_dir=tmp_path)
    await trigger.start(invoker)  # type: ignore[arg-type]
    try:
        await wait_until(lambda: sum(c["function"] == "tick" for c in invoker.calls) >= 3)
    finally:
        await trigger.stop()
    ticks = [c for c in invoker.calls if c["function"] == "tick"]
    assert all(c["trigger"] == "cron" for c in invoker.calls)
    assert len({c["key"] for c in ticks}) == len(ticks)  # one idempotency key per slot
    first = ticks[0]["event"]
    assert first["source"] == "easyfaas.cron" and first["schedule"] == {"cron": "* * * * * *", "timezone": "UTC"}
    assert first["catch_up"] is False and first["time"].endswith("Z")
    assert all(c["event"] == {"k": "v"} for c in invoker.calls if c["function"] == "tock")
    state = json.loads((tmp_path / STATE_FILE).read_text())
    assert set(state) == {schedule_key("tick", Schedule(cron="* * * * * *")), schedule_key("tock", Schedule(cron="* * * * * *", event={"k": "v"}))}


async def test_a_schedule_missed_while_down_runs_once_at_start(tmp_path: Path) -> None:
    hourly = Schedule(cron="0 * * * *")
    key = schedule_key("report", hourly)
    (tmp_path / STATE_FILE).write_text(json.dumps({key: time.time() - 5 * 3600}))  # five slots missed
    invoker = FakeInvoker({"report": [hourly]})
    trigger = CronTrigger(data_dir=tmp_path)
    await trigger.start(invoker)  # type: ignore[arg-type]
    await trigger.stop()
    assert len(invoker.calls) == 1
    assert invoker.calls[0]["event"]["catch_up"] is True
    missed = previous_fire(hourly, time.time())
    assert invoker.calls[0]["key"] == f"cron:{key}:{int(missed)}"
    assert json.loads((tmp_path / STATE_FILE).read_text())[key] == missed


async def test_no_catch_up_when_disabled_up_to_date_or_never_run(tmp_path: Path) -> None:
    hourly = Schedule(cron="0 * * * *")
    key = schedule_key("report", hourly)
    (tmp_path / STATE_FILE).write_text(json.dumps({key: time.time() - 5 * 3600}))
    for trigger in (CronTrigger(data_dir=tmp_path, catch_up=False), CronTrigger(data_dir=tmp_path / "fresh")):
        invoker = FakeInvoker({"report": [hourly]})
        await trigger.start(invoker)  # type: ignore[arg-type]
        await trigger.stop()
        assert invoker.calls == []
    (tmp_path / STATE_FILE).write_text(json.dumps({key: previous_fire(hourly, time.time())}))
    invoker = FakeInvoker({"report": [hourly]})
    trigger = CronTrigger(data_dir=tmp_path)
    await trigger.start(invoker)  # type: ignore[arg-type]
    await trigger.stop()
    assert invoker.calls == []


async def test_deleted_functions_stop_firing_and_new_ones_are_picked_up(tmp_path: Path) -> None:
    invoker = FakeInvoker({})
    trigger = CronTrigger(data_dir=tmp_path, refresh=0.1)
    await trigger.start(invoker)  # type: ignore[arg-type]
    try:
        assert trigger.describe() == {"schedules": 0}
        invoker.table = {"late": [Schedule(cron="* * * * * *")]}
        await wait_until(lambda: len(invoker.calls) >= 1)
        invoker.table = {}
        await wait_until(lambda: trigger.describe() == {"schedules": 0})
        fired = len(invoker.calls)
        await asyncio.sleep(1.5)
        assert len(invoker.calls) == fired
    finally:
        await trigger.stop()


def test_a_bad_refresh_is_refused() -> None:
    with pytest.raises(ValueError):
        CronTrigger(refresh=0)

