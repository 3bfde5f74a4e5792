"""The process sandbox with the real Python runner: create, warm up, events, cleanup."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

import psutil

from easyfaas import wire
from easyfaas._aiowire import request
from easyfaas.models import WarmupSpec
from easyfaas.sockets import connect_unix
from easyfaas_runtime_python import PythonRuntime
from easyfaas_sandbox_process import ProcessSandbox


def spec(code_dir: Path) -> WarmupSpec:
    return WarmupSpec(function_key="f:1", code_dir=str(code_dir), memory_mb=128, timeout_s=5)


async def invoke(socket_path: str, event: object) -> tuple[int, dict, bytes]:  # type: ignore[type-arg]
    sock = await connect_unix(socket_path)
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    writer.write(wire.encode(wire.Kind.INVOKE, 1, {"rid": "r", "deadline": 0}, json.dumps(event).encode()))
    from easyfaas._aiowire import read_frame

    kind, _, meta, body = await read_frame(reader)
    writer.close()
    return kind, meta, body


async def test_create_warmup_invoke_destroy(tmp_path: Path) -> None:
    driver = ProcessSandbox(state_dir=tmp_path / "state")
    runtime = PythonRuntime()
    await driver.start({"python": runtime})
    info = await driver.create(runtime)
    code = tmp_path / "code"
    code.mkdir()
    (code / "handler.py").write_text("import os\ndef handler(e, c):\n    return [e, os.environ.get('SECRET_OF_ENGINE')]\n")
    code_dir = await driver.warmup(info.id, spec(code))
    kind, _, _ = await request(info.socket_path, wire.Kind.LOAD, {"code_dir": code_dir, "handler": "handler.handler"}, timeout=10)
    assert kind == wire.Kind.LOADED
    kind, _, body = await invoke(info.socket_path, {"a": 1})
    assert kind == wire.Kind.RESULT and json.loads(body) == [{"a": 1}, None]
    stats = await driver.stats(info.id)
    assert stats.memory_rss > 0 and stats.pids >= 1
    await driver.destroy(info.id)
    assert not psutil.pid_exists(info.pid) or psutil.Process(info.pid).status() == psutil.STATUS_ZOMBIE
    await driver.stop()


async def test_engine_environment_does_not_reach_runners(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("SECRET_OF_ENGINE", "leaked")
    driver = ProcessSandbox(state_dir=tmp_path / "state", env={"LANG": "C.UTF-8"})
    runtime = PythonRuntime()
    await driver.start({"python": runtime})
    info = await driver.create(runtime)
    assert "SECRET_OF_ENGINE" not in psutil.Process(info.pid).environ()
    assert psutil.Process(info.pid).environ()["LANG"] == "C.UTF-8"
    await driver.stop()


async def test_a_runner_that_dies_is_reported_as_an_event(tmp_path: Path) -> None:
    driver = ProcessSandbox(state_dir=tmp_path / "state")
    runtime = PythonRuntime()
    await driver.start({"python": runtime})
    info = await driver.create(runtime)
    events = driver.events()
    os.kill(info.pid, signal.SIGKILL)
    event = await asyncio.wait_for(anext(events), 10)
    assert (event.sandbox_id, event.kind, event.signal) == (info.id, "exited", signal.SIGKILL)
    await driver.stop()


async def test_children_left_behind_are_killed_on_destroy(tmp_path: Path) -> None:
    driver = ProcessSandbox(state_dir=tmp_path / "state")
    runtime = PythonRuntime()
    await driver.start({"python": runtime})
    info = await driver.create(runtime)
    code = tmp_path / "code"
    code.mkdir()
    (code / "handler.py").write_text(
        "import subprocess\ndef handler(e, c):\n    return subprocess.Popen(['sleep', '300']).pid\n"
    )
    await request(info.socket_path, wire.Kind.LOAD, {"code_dir": str(code), "handler": "handler.handler"}, timeout=10)
    _, _, body = await invoke(info.socket_path, None)
    orphan = json.loads(body)
    assert psutil.pid_exists(orphan)
    await driver.destroy(info.id)
    await asyncio.sleep(0.1)
    assert not psutil.pid_exists(orphan) or psutil.Process(orphan).status() == psutil.STATUS_ZOMBIE
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
