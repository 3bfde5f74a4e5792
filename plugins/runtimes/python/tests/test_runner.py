"""The Python runner, started as the sandboxes start it, spoken to with real frames."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from easyfaas import wire
from easyfaas.errors import FunctionSpecError
from easyfaas.wire import Kind
from easyfaas_runtime_python import PythonRuntime

HANDLER = '''
import os, sys, time
print("loading")
COUNT = 0

def handler(event, context):
    global COUNT
    COUNT += 1
    print("call", COUNT, "for", context.request_id)
    sys.stderr.write("to stderr\\n")
    if event == "raise":
        raise ValueError("bad value")
    if event == "bytes":
        return b"\\x00\\xffraw"
    if event == "exit":
        sys.exit(3)
    if event == "unserializable":
        return object()
    if event == "flood":
        print("x" * 3_000_000)
        return "flooded"
    if event == "env":
        return {k: os.environ.get(k) for k in ("GREETING", "WITH_EQUALS", "HOME_SECRET")}
    return {"event": event, "count": COUNT, "fn": context.function_name, "ver": context.function_version,
            "mem": context.memory_limit_in_mb, "remaining": context.get_remaining_time_in_millis(),
            "arn": context.invoked_function_arn, "aws_id": context.aws_request_id}

def other(event, context):
    return "other"
'''


class Runner:
    def __init__(self, proc: subprocess.Popen[bytes], path: str) -> None:
        self.proc = proc
        self.path = path
        self.sock: socket.socket | None = None

    def connect(self) -> socket.socket:
        if self.sock is not None:
            self.sock.close()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)
        return self.sock

    def ask(self, kind: int, meta: dict[str, Any] | None = None, body: bytes = b"", rid: int = 1) -> tuple[int, dict[str, Any], bytes]:
        assert self.sock is not None
        wire.send_frame(self.sock, kind, rid, meta, body)
        got_kind, got_rid, got_meta, got_body = wire.recv_frame(self.sock)
        assert got_rid == rid
        return got_kind, got_meta, got_body

    def invoke(self, event: Any, rid: int = 1, **meta: Any) -> tuple[int, dict[str, Any], bytes]:
        meta = {"rid": f"req-{rid}", "deadline": (time.time() + 5) * 1000, **meta}
        return self.ask(Kind.INVOKE, meta, json.dumps(event).encode(), rid)


@pytest.fixture
def code_dir(tmp_path: Path) -> Path:
    code = tmp_path / "code"
    code.mkdir()
    (code / "handler.py").write_text(HANDLER)
    (code / "pkg").mkdir()
    (code / "pkg" / "__init__.py").write_text("")
    (code / "pkg" / "mod.py").write_text("def run(event, context):\n    return {'nested': event}\n")
    (code / "broken.py").write_text("import not_a_module_anywhere\n")
    return code


@pytest.fixture
def runner(tmp_path: Path) -> Iterator[Runner]:
    runtime = PythonRuntime()
    runner_dir = tmp_path / "runner"
    runner_dir.mkdir()
    for name, source in runtime.runner_files().items():
        (runner_dir / name).symlink_to(source)
    path = str(tmp_path / "r.sock")
    env = {"PATH": "/usr/bin:/bin", "HOME_SECRET": "engine-only"}
    proc = subprocess.Popen(runtime.runner_command(str(runner_dir), path), env=env, stderr=subprocess.PIPE)
    r = Runner(proc, path)
    deadline = time.monotonic() + 10
    while True:  # the socket file appears at bind(), connections succeed after listen()
        try:
            r.connect()
            break
        except OSError:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else b""
            assert time.monotonic() < deadline
            time.sleep(0.005)
    yield r
    proc.kill()
    proc.wait()


def load(r: Runner, code_dir: Path, handler: str = "handler.handler", **extra: Any) -> tuple[int, dict[str, Any], bytes]:
    meta = {"code_dir": str(code_dir), "handler": handler, "function": "demo", "version": "7", "memory_mb": 256,
            "env": {"GREETING": "hi", "WITH_EQUALS": "a=b=c"}, "arn": "arn:easyfaas:demo", **extra}
    return r.ask(Kind.LOAD, meta)


def test_load_then_invoke_with_context(runner: Runner, code_dir: Path) -> None:
    kind, meta, _ = load(runner, code_dir)
    assert kind == Kind.LOADED
    assert meta["init_ms"] >= 0 and meta["logs"] == "loading\n"
    kind, meta, body = runner.invoke({"x": "ünïcödé ☃"}, rid=5)
    assert kind == Kind.RESULT
    result = json.loads(body)
    assert result["event"] == {"x": "ünïcödé ☃"}
    assert (result["fn"], result["ver"], result["mem"], result["aws_id"]) == ("demo", "7", 256, "req-5")
    assert 4000 < result["remaining"] <= 5000
    assert meta["logs"] == "call 1 for req-5\nto stderr\n"


def test_state_persists_between_calls_on_a_warm_instance(runner: Runner, code_dir: Path) -> None:
    load(runner, code_dir)
    counts = [json.loads(runner.invoke({}, rid=i)[2])["count"] for i in range(1, 4)]
    assert counts == [1, 2, 3]


def test_handler_exception_gives_type_message_and_stack(runner: Runner, code_dir: Path) -> None:
    load(runner, code_dir)
    kind, meta, _ = runner.invoke("raise")
    assert kind == Kind.ERROR
    assert (meta["type"], meta["message"]) == ("ValueError", "bad value")
    assert any("handler.py" in line and "handler" in line for line in meta["stack"])
    assert "call 1" in meta["logs"]
    kind, _, body = runner.invoke({"after": "error"}, rid=2)
    assert kind == Kind.RESULT and json.loads(body)["count"] == 2


def test_bytes_pass_through_untouched(runner: Runner, code_dir: Path) -> None:
    load(runner, code_dir)
    kind, meta, body = runner.invoke("bytes")
    assert (kind, meta.get("raw"), body) == (Kind.RESULT, True, b"\x00\xffraw")


def test_unserializable_result_is_a_marshal_error(runner: Runner, code_dir: Path) -> None:
    load(runner, code_dir)
    kind, meta, _ = runner.invoke("unserializable")
    assert kind == Kind.ERROR and meta["type"] == "Runtime.MarshalError"


def test_function_env_is_set_and_engine_env_is_not_leaked(runner: Runner, code_dir: Path) -> None:
    load(runner, code_dir)
    _, _, body = runner.invoke("env")
    # HOME_SECRET is in the runner's own environment here; -I keeps PYTHON* out, the sandbox driver
    # is what starts runners with a clean environment. The function's env arrives intact.
    env = json.loads(body)
    assert env["GREETING"] == "hi" and env["WITH_EQUALS"] == "a=b=c"


def test_logs_are_capped_per_call(runner: Runner, code_dir: Path) -> None:
    load(runner, code_dir)
    kind, meta, body = runner.invoke("flood", log_cap=1000)
    assert kind == Kind.RESULT and json.loads(body) == "flooded"
    assert len(meta["logs"]) == 1000
    assert meta["truncated"] > 2_000_000


def test_reload_is_refused(runner: Runner, code_dir: Path) -> None:
    load(runner, code_dir)
    kind, meta, _ = load(runner, code_dir, handler="handler.other")
    assert kind == Kind.LOAD_ERROR and meta["type"] == "ReloadRefused"


def test_missing_module_is_a_load_error_with_the_cause(runner: Runner, code_dir: Path) -> None:
    kind, meta, _ = load(runner, code_dir, handler="broken.handler")
    assert kind == Kind.LOAD_ERROR
    assert meta["type"] == "ModuleNotFoundError" and "not_a_module_anywhere" in meta["message"]


def test_missing_function_is_handler_not_found(runner: Runner, code_dir: Path) -> None:
    kind, meta, _ = load(runner, code_dir, handler="handler.nope")
    assert kind == Kind.LOAD_ERROR and meta["type"] == "HandlerNotFound"


def test_nested_module_handler(runner: Runner, code_dir: Path) -> None:
    assert load(runner, code_dir, handler="pkg.mod.run")[0] == Kind.LOADED
    assert json.loads(runner.invoke(1)[2]) == {"nested": 1}


def test_a_new_connection_finds_the_loaded_function(runner: Runner, code_dir: Path) -> None:
    # The funclet loads on one connection, the controller invokes on another.
    load(runner, code_dir)
    runner.connect()
    assert runner.invoke({"y": 1})[0] == Kind.RESULT


def test_ping(runner: Runner) -> None:
    assert runner.ask(Kind.PING)[0] == Kind.PONG


def test_sys_exit_in_handler_ends_the_instance(runner: Runner, code_dir: Path) -> None:
    load(runner, code_dir)
    kind, meta, _ = runner.invoke("exit")
    assert kind == Kind.ERROR and meta["type"] == "SystemExit"
    assert runner.proc.wait(5) == 0


def test_check_code_finds_modules_and_packages(code_dir: Path) -> None:
    runtime = PythonRuntime()
    runtime.check_code(code_dir, "handler.handler")
    runtime.check_code(code_dir, "pkg.mod.run")
    with pytest.raises(FunctionSpecError, match="module 'absent' not found"):
        runtime.check_code(code_dir, "absent.handler")


def test_runner_starts_without_site_packages(runner: Runner, tmp_path: Path) -> None:
    code = tmp_path / "probe"
    code.mkdir()
    (code / "probe.py").write_text("import sys\ndef handler(e, c):\n    return [p for p in sys.path if 'site-packages' in p]\n")
    load(runner, code, handler="probe.handler")
    assert json.loads(runner.invoke(None)[2]) == []
