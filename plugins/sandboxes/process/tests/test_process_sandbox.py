"""The process sandbox's own contract: its ``env`` option, and cleanup after a funclet that never stopped.

Create, warmup, events and children killed on destroy are the conformance suite's (``test_conformance.py``).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import psutil
import pytest

from easyfaas_runtime_python import PythonRuntime
from easyfaas_sandbox_process import ProcessSandbox


async def test_engine_environment_does_not_reach_runners(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECRET_OF_ENGINE", "leaked")
    driver = ProcessSandbox(state_dir=tmp_path / "state", env={"LANG": "C.UTF-8"})
    runtime = PythonRuntime()
    await driver.start({"python": runtime})
    info = await driver.create(runtime)
    assert "SECRET_OF_ENGINE" not in psutil.Process(info.pid).environ()
    assert psutil.Process(info.pid).environ()["LANG"] == "C.UTF-8"
    await driver.stop()


async def test_leftovers_of_a_crashed_funclet_are_cleaned(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = ProcessSandbox(state_dir=state)
    runtime = PythonRuntime()
    await first.start({"python": runtime})
    info = await first.create(runtime)
    # The funclet "crashes": no stop(). A new driver on the same state dir cleans up.
    second = ProcessSandbox(state_dir=state)
    await second.start({"python": runtime})
    await asyncio.sleep(0.1)
    assert not psutil.pid_exists(info.pid) or psutil.Process(info.pid).status() == psutil.STATUS_ZOMBIE
    assert not (state / info.id).exists()
    await second.stop()
    assert list(state.iterdir()) == []
