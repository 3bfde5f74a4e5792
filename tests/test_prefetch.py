"""Prefetch: a call sent to a busy instance of a short function runs right after the current
one (scheduler.py). It never runs two calls at once, its timeout starts when it starts, and a
call queued behind one that kills its instance runs elsewhere instead of failing."""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from easyfaas.testing import RunningEngine, sandbox_params, write_function

# Records, per call, the instance, when the handler ran (host clock) and the time it was told
# it had left; event {"sleep": s} sleeps, {"exit": true} kills the runner, {"hang": true} hangs.
PROBE = """\
import os, time, uuid
ID = uuid.uuid4().hex
def handler(event, context):
    event = event or {}
    began = time.time()
    left = context.get_remaining_time_in_millis()
    if event.get("exit"):
        os._exit(3)
    if event.get("hang"):
        time.sleep(3600)
    time.sleep(event.get("sleep", 0))
    return {"id": ID, "began": began, "ended": time.time(), "left": left}
"""


@pytest.fixture(scope="module", params=sandbox_params("process", "namespace"))
def engine(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningEngine]:
    # A high threshold, so calls of a few hundred ms are prefetched too.
    eng = RunningEngine(
        tmp_path_factory.mktemp(f"prefetch-{request.param}"),
        sandbox=request.param,
        pool={"python": 2},
        controller={"max_queue_wait": "20s", "keep_alive": "60s", "prefetch_below": "10s"},
    )
    eng.start()
    yield eng
    assert eng.stop() == 0, eng.log()


def prefetched(engine: RunningEngine, name: str) -> float:
    text = httpx.get(f"{engine.endpoint}/metrics", headers={"Authorization": f"Bearer {engine.token}"}).text
    match = re.search(rf'^easyfaas_prefetched_calls_total\{{function="{name}"\}} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


def invoke(engine: RunningEngine, name: str, event: dict) -> httpx.Response:  # type: ignore[type-arg]
    """A call through the management API: the handler gets ``event`` itself."""
    return httpx.post(
        f"{engine.endpoint}/v1/functions/{name}/invoke", json=event,
        headers={"Authorization": f"Bearer {engine.token}"}, timeout=60,
    )  # fmt: skip


def test_prefetched_calls_run_one_at_a_time_with_their_full_timeout(engine: RunningEngine, tmp_path: Path) -> None:
    engine.deploy(write_function(tmp_path / "p", PROBE, concurrency=1, timeout=3), "serial")
    assert invoke(engine, "serial", {}).status_code == 200  # the instance learns its call time
    with ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(lambda _: invoke(engine, "serial", {"sleep": 0.3}), range(4)))
    assert [r.status_code for r in replies] == [200] * 4, [r.text for r in replies]
    runs = sorted((r.json() for r in replies), key=lambda run: run["began"])
    assert len({run["id"] for run in runs}) == 1  # one instance served them all
    for before, after in itertools.pairwise(runs):
        assert after["began"] >= before["ended"] - 0.005  # never two at once
    # Each call was told it had (almost) its whole 3 s when it began, prefetched or not.
    assert min(run["left"] for run in runs) >= 3000 - 50, runs
    assert prefetched(engine, "serial") >= 1


def test_a_call_behind_one_that_times_out_runs_elsewhere(engine: RunningEngine, tmp_path: Path) -> None:
    engine.deploy(write_function(tmp_path / "t", PROBE, concurrency=1, timeout=1), "behind-timeout")
    first = invoke(engine, "behind-timeout", {}).json()["id"]
    before = prefetched(engine, "behind-timeout")
    with ThreadPoolExecutor(2) as pool:
        hang = pool.submit(invoke, engine, "behind-timeout", {"hang": True})
        time.sleep(0.3)  # the hanging call is running: the next one is prefetched behind it
        quick = pool.submit(invoke, engine, "behind-timeout", {})
        hung, served = hang.result(), quick.result()
    assert hung.status_code == 504 and hung.json()["error"]["errorType"] == "Timeout"
    assert served.status_code == 200, served.text
    assert served.json()["id"] != first  # on a new instance: the old one was killed
    assert prefetched(engine, "behind-timeout") > before


def test_a_call_behind_one_that_crashes_runs_elsewhere(engine: RunningEngine, tmp_path: Path) -> None:
    engine.deploy(write_function(tmp_path / "c", PROBE, concurrency=1, timeout=5), "behind-crash")
    assert invoke(engine, "behind-crash", {}).status_code == 200
    with ThreadPoolExecutor(2) as pool:
        crash = pool.submit(invoke, engine, "behind-crash", {"sleep": 0.5, "exit": True})
        time.sleep(0.2)
        quick = pool.submit(invoke, engine, "behind-crash", {})
        crashed, served = crash.result(), quick.result()
    assert crashed.status_code == 502 and crashed.json()["error"]["errorType"] == "InstanceCrashed"
    assert served.status_code == 200, served.text


def test_a_prefetched_call_that_hangs_times_out_itself(engine: RunningEngine, tmp_path: Path) -> None:
    engine.deploy(write_function(tmp_path / "h", PROBE, concurrency=1, timeout=1), "hangs-behind")
    assert invoke(engine, "hangs-behind", {}).status_code == 200
    with ThreadPoolExecutor(2) as pool:
        slow = pool.submit(invoke, engine, "hangs-behind", {"sleep": 0.6})
        time.sleep(0.2)
        hang = pool.submit(invoke, engine, "hangs-behind", {"hang": True})
        done, hung = slow.result(), hang.result()
    assert done.status_code == 200  # the call ahead is not harmed by the one behind it
    assert hung.status_code == 504
    assert invoke(engine, "hangs-behind", {}).status_code == 200  # and the engine serves the next
