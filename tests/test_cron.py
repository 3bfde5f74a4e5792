"""The cron trigger end to end: second-level schedules, waking functions scaled to zero, the
missed-run policy across a restart, and bad schedules refused at deploy."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from easyfaas.client import ApiError
from easyfaas.models import Schedule
from easyfaas.testing import RunningEngine, sandbox_params, write_function
from easyfaas_trigger_cron.trigger import schedule_key

TICK = "def handler(event, context):\n    return {'event': event, 'request_id': context.request_id}\n"


def wait_for(predicate: Callable[[], Any], timeout: float = 60.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} not met in time"
        time.sleep(0.2)


def cron_runs(engine: RunningEngine, name: str) -> list[dict[str, Any]]:
    """Finished scheduled runs of ``name``, oldest first."""
    rows = engine.client.activations(name, limit=1000)
    return [r for r in reversed(rows) if r["trigger"] == "cron" and r["status"] == "success"]


@pytest.fixture(scope="module", params=sandbox_params("process", "namespace"))
def engine(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningEngine]:
    eng = RunningEngine(tmp_path_factory.mktemp(f"cron-{request.param}"), sandbox=request.param,
                        triggers={"cron": {"refresh": 0.2}})  # fmt: skip
    eng.start()
    yield eng
    assert eng.stop() == 0, eng.log()


def test_a_second_level_schedule_fires_async_calls_with_its_event(engine: RunningEngine, tmp_path: Path) -> None:
    schedule = {"cron": "* * * * * *", "timezone": "Europe/Paris", "event": {"task": "tick"}}
    engine.deploy(write_function(tmp_path / "tick", TICK, schedules=[schedule]), "ticker")
    runs = wait_for(lambda: len(r := cron_runs(engine, "ticker")) >= 3 and r, what="three scheduled runs")
    engine.client.delete("ticker")
    for run in runs:
        assert json.loads(run["result"]) == {"event": {"task": "tick"}, "request_id": run["id"]}
        assert run["invocation_type"] == "Event" and run["idempotency_key"].startswith("cron:ticker:")
    # One run per second-slot: the slots in the keys are distinct.
    assert len({r["idempotency_key"] for r in runs}) == len(runs)
    wait_for(lambda: engine.client.health()["triggers"]["cron"] == {"schedules": 0}, what="deleted: no longer scheduled")


def test_a_schedule_wakes_a_function_scaled_to_zero(engine: RunningEngine, tmp_path: Path) -> None:
    schedule = {"cron": "*/3 * * * * *"}  # no event: the scheduled-event description
    engine.deploy(write_function(tmp_path / "sleepy", TICK, keep_alive=0.5, schedules=[schedule]), "sleepy")
    first = wait_for(lambda: cron_runs(engine, "sleepy"), what="a first run")[0]
    event = json.loads(first["result"])["event"]
    assert event["source"] == "easyfaas.cron" and event["schedule"] == {"cron": "*/3 * * * * *", "timezone": "UTC"}
    assert event["catch_up"] is False and event["time"].endswith("Z")
    wait_for(lambda: not [i for i in engine.client.instances() if i["function"] == "sleepy"], what="scale to zero")
    seen = len(cron_runs(engine, "sleepy"))
    later = wait_for(lambda: (r := cron_runs(engine, "sleepy"))[seen:] and r[seen:], what="a run after scaling to zero")
    engine.client.delete("sleepy")
    assert later[0]["init_ms"] is not None  # it cold-started: the schedule woke it


def test_a_bad_schedule_is_refused_at_deploy(engine: RunningEngine, tmp_path: Path) -> None:
    for schedule in ({"cron": "61 * * * *"}, {"cron": "* * * * *", "timezone": "Mars/Olympus"}, {"cron": "every day"}):
        with pytest.raises(ApiError) as refused:
            engine.deploy(write_function(tmp_path / "bad", TICK, schedules=[schedule]), "bad-schedule")
        assert refused.value.status == 400 and "schedules" in str(refused.value)


def test_runs_missed_while_the_engine_was_down_run_once_at_start(tmp_path: Path) -> None:
    yearly = {"cron": "0 0 1 1 *"}  # never due while the test runs
    first = RunningEngine(tmp_path, triggers={"cron": {}})
    first.start()
    try:
        first.deploy(write_function(tmp_path / "report", TICK, schedules=[yearly]), "report")
    finally:
        assert first.stop() == 0
    state_path = tmp_path / "data" / "cron-state.json"
    assert not state_path.exists() or json.loads(state_path.read_text()) == {}  # it never ran
    # Pretend it last ran two years ago: the slots of the last two New Years were missed.
    key = schedule_key("report", Schedule(**yearly))
    state_path.write_text(json.dumps({key: time.time() - 2 * 366 * 86400}))

    second = RunningEngine(tmp_path, triggers={"cron": {}})
    second.start()
    try:
        [run] = wait_for(lambda: cron_runs(second, "report"), what="the catch-up run")
        assert json.loads(run["result"])["event"]["catch_up"] is True
        time.sleep(1.5)
        assert len(cron_runs(second, "report")) == 1  # once, not once per missed slot
    finally:
        assert second.stop() == 0
    assert json.loads(state_path.read_text())[key] > time.time() - 366 * 86400
