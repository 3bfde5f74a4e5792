"""The NAME runtime: its registration, its runner spoken to with real frames, a real engine.

Run after ``pip install -e plugins/runtimes/NAME``: ``pytest plugins/runtimes/NAME``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from easyfaas_runtime_NAME import NAMERuntime

from easyfaas import wire
from easyfaas.plugin.manager import Plugins
from easyfaas.testing import RunningEngine
from easyfaas.wire import Kind


class Runner:
    """A runner process started the way a sandbox driver starts it."""

    def __init__(self, tmp_path: Path) -> None:
        runtime = NAMERuntime()
        runner_dir = tmp_path / "runner"
        runner_dir.mkdir()
        for name, source in runtime.runner_files().items():
            (runner_dir / name).symlink_to(source)
        self.path = str(tmp_path / "r.sock")
        env = {"PATH": "/usr/bin:/bin"}  # drivers start runners with a clean environment
        self.proc = subprocess.Popen(runtime.runner_command(str(runner_dir), self.path), env=env)
        deadline = time.monotonic() + 10
        while not os.path.exists(self.path):
            assert self.proc.poll() is None, "the runner exited before listening"
            assert time.monotonic() < deadline, "the runner did not listen within 10s"
            time.sleep(0.005)

    def connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        sock.connect(self.path)
        return sock

    def load(self, code_dir: Path) -> tuple[int, dict[str, Any]]:
        """LOAD on its own connection, as the funclet does."""
        meta = {"code_dir": str(code_dir), "handler": "handler.handler", "function": "demo", "version": "1",
                "memory_mb": 128, "env": {}, "instance": "test"}  # fmt: skip
        with self.connect() as sock:
            wire.send_frame(sock, Kind.LOAD, 0, meta)
            kind, _rid, reply, _body = wire.recv_frame(sock)
        return kind, reply


def invoke_meta(request_id: str) -> dict[str, Any]:
    return {"rid": request_id, "deadline": (time.time() + 5) * 1000, "log_cap": 1 << 20}


@pytest.fixture
def runner(tmp_path: Path) -> Iterator[Runner]:
    r = Runner(tmp_path)
    yield r
    r.proc.kill()
    r.proc.wait()


def test_registered_under_its_entry_point_name() -> None:
    plugins = Plugins()
    plugins.load({"runtimes": ["NAME"]})
    assert plugins.get("runtimes", "NAME") is NAMERuntime


def test_load_then_invoke(runner: Runner, tmp_path: Path) -> None:
    runner.connect().close()  # the process driver's readiness probe: no frame at all
    assert runner.load(tmp_path)[0] == Kind.LOADED
    with runner.connect() as sock:
        wire.send_frame(sock, Kind.PING, 7)
        assert wire.recv_frame(sock)[:2] == (Kind.PONG, 7)
        # Two calls in flight: each reply carries its request's id.
        wire.send_frame(sock, Kind.INVOKE, 1, invoke_meta("a"), b'{"n":1}')
        wire.send_frame(sock, Kind.INVOKE, 2, invoke_meta("b"), b'{"n":2}')
        replies = {rid: (kind, body) for kind, rid, _meta, body in (wire.recv_frame(sock), wire.recv_frame(sock))}
    assert replies == {1: (Kind.RESULT, b'{"n":1}'), 2: (Kind.RESULT, b'{"n":2}')}


def test_second_load_is_refused(runner: Runner, tmp_path: Path) -> None:
    assert runner.load(tmp_path)[0] == Kind.LOADED
    kind, meta = runner.load(tmp_path)
    assert (kind, meta["type"]) == (Kind.LOAD_ERROR, "ReloadRefused")


def test_invoke_before_load_is_an_error(runner: Runner) -> None:
    with runner.connect() as sock:
        wire.send_frame(sock, Kind.INVOKE, 1, invoke_meta("a"), b"{}")
        kind, rid, meta, _body = wire.recv_frame(sock)
    assert (kind, rid, meta["type"]) == (Kind.ERROR, 1, "NotLoaded")


def test_unknown_kind_closes_only_that_connection(runner: Runner, tmp_path: Path) -> None:
    with runner.connect() as sock:
        wire.send_frame(sock, 200, 1)
        with pytest.raises(EOFError):
            wire.recv_frame(sock)
    assert runner.load(tmp_path)[0] == Kind.LOADED


def test_shutdown_ends_the_runner(runner: Runner) -> None:
    with runner.connect() as sock:
        wire.send_frame(sock, Kind.SHUTDOWN)
    assert runner.proc.wait(10) == 0


@pytest.mark.slow
def test_engine_runs_a_function(easyfaas_engine: Callable[..., RunningEngine], tmp_path: Path) -> None:
    code = tmp_path / "fn"
    code.mkdir()
    (code / "README").write_text("the echo runtime needs no code\n")
    engine = easyfaas_engine(pool={"NAME": 1}, extra={"runtimes": ["NAME"]})
    engine.deploy(code, name="demo", runtime="NAME")
    response = engine.client.invoke("demo", b'{"hello":"world"}')
    assert response.status_code == 200, response.text
    assert response.json() == {"hello": "world"}
