"""`easyfaas up` as a supervisor: restarts a dead child, drains and cleans up on SIGTERM."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest

from easyfaas.testing import RunningEngine, sandbox_params, write_function

# An id per instance (pids repeat across pid namespaces: every namespace sandbox's runner is pid 3).
HELLO = "import uuid\nID = uuid.uuid4().hex\ndef handler(e, c):\n    return {'pid': ID}\n"
SLOW = "import time\ndef handler(e, c):\n    time.sleep(1.5)\n    return 'finished'\n"


def wait_until(predicate, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def call_ok(engine: RunningEngine, name: str) -> bool:
    try:
        return engine.call(name, method="GET").status_code == 200
    except Exception:
        return False


def runner_pids(engine: RunningEngine) -> set[int]:
    """Every process under the engine's data directory's sandboxes (runners and their children)."""
    found = set()
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if str(engine.data_dir) in cmd and "easyfaas_runner" in cmd:
            found.add(proc.pid)
    return found


@pytest.mark.parametrize("sandbox", sandbox_params("process", "namespace"))
def test_killed_funclet_is_restarted_and_calls_work_again(tmp_path: Path, sandbox: str) -> None:
    with RunningEngine(tmp_path / "e", sandbox=sandbox) as engine:
        engine.deploy(write_function(tmp_path / "f", HELLO), "hello")
        first = engine.call("hello", method="GET").json()["pid"]
        old = engine.children()["funclet"]
        os.kill(old, signal.SIGKILL)
        wait_until(lambda: engine.children().get("funclet") not in (None, old))
        wait_until(lambda: call_ok(engine, "hello"))
        second = engine.call("hello", method="GET").json()["pid"]
        assert second != first  # the old instance died with its funclet; a new one was cold-started
        assert "funclet exited with code -9; restarting it" in engine.log()


def test_killed_controller_is_restarted_and_keeps_its_functions(tmp_path: Path) -> None:
    with RunningEngine(tmp_path / "e") as engine:
        engine.deploy(write_function(tmp_path / "f", HELLO), "hello")
        old = engine.children()["controller"]
        os.kill(old, signal.SIGKILL)
        wait_until(lambda: engine.children().get("controller") not in (None, old))
        wait_until(lambda: call_ok(engine, "hello"))
        assert [f["name"] for f in engine.client.list()] == ["hello"]


def test_sigterm_drains_in_flight_calls_and_leaves_nothing_behind(tmp_path: Path) -> None:
    engine = RunningEngine(tmp_path / "e").start()
    engine.deploy(write_function(tmp_path / "f", SLOW), "slow")
    engine.call("slow", method="GET")  # warm
    children = engine.children()
    result: dict[str, object] = {}

    def slow_call() -> None:
        response = engine.call("slow", method="GET")
        result["status"], result["body"] = response.status_code, response.json()

    thread = threading.Thread(target=slow_call)
    thread.start()
    time.sleep(0.4)
    assert engine.stop() == 0
    thread.join()
    assert result == {"status": 200, "body": "finished"}
    for pid in children.values():
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert runner_pids(engine) == set()
    assert not (tmp_path / "e" / "data" / "funclet.sock").exists()
    leftovers = list((tmp_path / "e" / "data" / "sandboxes").rglob("*.sock"))
    assert leftovers == []
