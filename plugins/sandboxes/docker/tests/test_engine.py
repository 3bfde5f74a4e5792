"""The docker sandbox under a whole engine: deploy, call over HTTP, crash, OOM, and a clean shutdown.

Both engine processes are real (``easyfaas up``), with ``funclet.sandbox: docker``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from easyfaas.testing import RunningEngine, write_function

SOURCE = """
import os, socket

def handler(event, context):
    path = event.get("rawPath", "")
    if path == "/hog":
        hog = []
        while True:
            hog.append(b"x" * (8 << 20))
    if path == "/crash":
        os._exit(9)
    with open("/proc/self/status") as f:
        caps = [line.split()[1] for line in f if line.startswith("CapEff")][0]
    return {
        "name": event["queryStringParameters"]["name"],
        "uid": os.getuid(),
        "hostname": socket.gethostname(),
        "caps": caps,
        "code": sorted(os.listdir("/code")),
        "env": os.environ.get("GREETING"),
        "function": context.function_name,
    }
"""


@pytest.fixture(scope="module")
def engine(docker_engine: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningEngine]:
    eng = RunningEngine(tmp_path_factory.mktemp("engine-docker"), sandbox="docker", pool={"python": 2})
    eng.start(timeout=120)
    yield eng
    assert eng.stop() == 0, eng.log()


def test_deploy_and_call_over_http(engine: RunningEngine, tmp_path: Path) -> None:
    code = write_function(tmp_path / "greet", SOURCE, memory=64, timeout=10, env={"GREETING": "hello"})
    engine.deploy(code, "greet")
    response = engine.call("greet", "?name=you", method="GET")
    assert response.status_code == 200, response.text
    assert response.json() == {
        "name": "you",
        "uid": 65534,
        "hostname": "sandbox",
        "caps": "0000000000000000",
        "code": ["function.yaml", "handler.py"],
        "env": "hello",
        "function": "greet",
    }
    assert engine.call("greet", "?name=again", method="GET").json()["name"] == "again"  # the warm instance
    health = engine.client.health()
    assert "docker" in str(health), health


def test_crash_and_oom_are_reported_and_the_engine_keeps_serving(engine: RunningEngine, tmp_path: Path) -> None:
    engine.deploy(write_function(tmp_path / "frail", SOURCE, memory=64, timeout=30), "frail")
    crashed = engine.call("frail", "/crash", method="GET")
    assert crashed.status_code == 502
    assert crashed.json()["error"]["errorType"] == "InstanceCrashed"
    assert "code 9" in crashed.json()["error"]["errorMessage"]

    oom = engine.call("frail", "/hog", method="GET")
    assert oom.status_code == 502
    error = oom.json()["error"]
    assert error["errorType"] == "InstanceCrashed"
    assert "ran out of memory" in error["errorMessage"] and "64 MB" in error["errorMessage"]

    assert engine.call("frail", "?name=still", method="GET").json()["name"] == "still"


def test_stop_removes_every_container(
    docker_containers: Callable[[Path], list[dict[str, Any]]], tmp_path: Path
) -> None:
    engine = RunningEngine(tmp_path / "engine", sandbox="docker", pool={"python": 2})
    engine.start(timeout=120)
    state_dir = engine.data_dir / "data" / "sandboxes" / "docker"
    try:
        engine.deploy(write_function(tmp_path / "hi", SOURCE), "hi")
        assert engine.call("hi", "?name=x", method="GET").status_code == 200
        assert len(docker_containers(state_dir)) >= 1
    finally:
        assert engine.stop() == 0, engine.log()
    assert docker_containers(state_dir) == []
    assert list(state_dir.iterdir()) == []
    with open("/proc/self/mountinfo") as f:
        assert str(state_dir) not in f.read()
