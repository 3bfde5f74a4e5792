"""The node runtime: finding node, deploy-time checks, the runner spoken to with frames, and its example."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

import easyfaas_runtime_node.runtime as node_runtime
from easyfaas import wire
from easyfaas.errors import ConfigurationError, FunctionSpecError
from easyfaas.plugin.manager import Plugins
from easyfaas.testing import RunningEngine, sandbox_params
from easyfaas.testing.conformance import RunnerProcess, invoke_meta
from easyfaas.wire import Kind
from easyfaas_runtime_node import NodeRuntime

REPO = Path(__file__).resolve().parents[4]

HANDLERS = """
console.log('loading', process.env.GREETING);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

exports.callback = (event, context, callback) => setTimeout(() => callback(null, { cb: event }), 1);
exports.callbackError = (event, context, callback) => callback(new TypeError('bad input'));
exports.succeed = (event, context) => { context.succeed({ legacy: true }); };
exports.promise = (event) => Promise.resolve({ promised: event });
exports.buffer = async () => Buffer.from([0, 255, 1, 2]);
exports.uint8 = async () => new Uint8Array([7, 8, 9]);
exports.nothing = async () => undefined;
exports.bigint = async () => ({ n: 10n });
exports.throwString = async () => { throw 'just a string'; };
exports.rejection = async () => { Promise.reject(new RangeError('nobody awaited me')); await sleep(1000); return 'late'; };
exports.timerThrow = async () => { setTimeout(() => { throw new SyntaxError('from a timer'); }, 1); await sleep(1000); };
exports.exit = async () => process.exit(7);
exports.flood = async () => { console.log('x'.repeat(5000)); return 'flooded'; };
let release;
const gate = new Promise((resolve) => { release = resolve; });
exports.overlap = async (event) => {
  console.log(`start ${event.name}`);
  if (event.name === 'first') await gate; else setTimeout(release, 1);  // the second call frees the first
  await sleep(1);
  process.stderr.write(`end ${event.name}\\n`);
  return event.name;
};
exports.env = async () => ({ greeting: process.env.GREETING, cwd: process.cwd() });
exports.notAFunction = 42;
"""


@pytest.fixture
def code(tmp_path: Path) -> Path:
    code = tmp_path / "code"
    code.mkdir()
    (code / "handlers.js").write_text(HANDLERS)
    (code / "broken.js").write_text("exports.handler = async () => {\n")
    esm = code / "esm"
    esm.mkdir()
    (esm / "package.json").write_text('{"type": "module"}')
    (esm / "app.js").write_text("import { sep } from 'node:path';\nexport const handler = async (e) => ({ esm: e, sep });\n")
    return code


@pytest.fixture
def runner(tmp_path: Path) -> Iterator[RunnerProcess]:
    proc = RunnerProcess(NodeRuntime(), tmp_path / "sandbox")
    yield proc
    proc.close()


def loaded(runner: RunnerProcess, code: Path, handler: str) -> RunnerProcess:
    kind, meta = runner.load(code, handler, {"GREETING": "hi=there"})
    assert kind == Kind.LOADED, meta
    return runner


# -- the runtime object ------------------------------------------------------------------------


def test_registered_under_its_entry_point_name() -> None:
    plugins = Plugins()
    plugins.load({"runtimes": ["node"]})
    assert plugins.get("runtimes", "node") is NodeRuntime


def test_no_node_installed_is_a_configuration_error_naming_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(node_runtime, "_SANDBOX_PATH", str(tmp_path))
    with pytest.raises(ConfigurationError, match=r"Node\.js is not installed.*install Node\.js 16 or later"):
        NodeRuntime()
    with pytest.raises(ConfigurationError, match="not an executable file"):
        NodeRuntime(node=str(tmp_path / "missing" / "node"))


def fake_node(path: Path, version: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\necho {version}\n")
    path.chmod(0o755)
    return path


def test_old_node_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"Node\.js 14, older than 16"):
        NodeRuntime(node=str(fake_node(tmp_path / "node", "v14.21.3")))


def test_host_paths_show_the_binary_or_a_self_contained_install(tmp_path: Path) -> None:
    prefix = tmp_path / "opt" / "node-v20"
    assert NodeRuntime(node=str(fake_node(prefix / "bin" / "node", "v20.1.0"))).host_paths() == [str(prefix)]
    assert NodeRuntime(node=str(fake_node(tmp_path / "node", "v20.1.0"))).host_paths() == [str(tmp_path / "node")]


def test_check_code(code: Path) -> None:
    runtime = NodeRuntime()
    runtime.check_code(code, "handlers.callback")
    runtime.check_code(code, "esm/app.handler")
    runtime.check_code(code, "handlers.nested.path")
    with pytest.raises(FunctionSpecError, match="module 'absent' not found"):
        runtime.check_code(code, "absent.handler")
    with pytest.raises(FunctionSpecError, match=r"must look like 'file\.function'"):
        runtime.check_code(code, "handlers")
    runtime.node = str(code / "gone" / "node")
    with pytest.raises(ConfigurationError, match=r"install Node\.js"):
        runtime.check_code(code, "handlers.callback")


# -- the runner --------------------------------------------------------------------------------


def test_load_applies_env_first_and_reports_what_loading_printed(runner: RunnerProcess, code: Path) -> None:
    kind, meta = runner.load(code, "handlers.env", {"GREETING": "hi=there"})
    assert kind == Kind.LOADED and meta["logs"] == "loading hi=there\n"
    assert json.loads(runner.invoke(None)[2]) == {"greeting": "hi=there", "cwd": str(code)}


@pytest.mark.parametrize(
    ("handler", "result"),
    [("callback", {"cb": 5}), ("succeed", {"legacy": True}), ("promise", {"promised": 5}), ("nothing", None)],
)
def test_handler_styles(runner: RunnerProcess, code: Path, handler: str, result: object) -> None:
    kind, meta, body = loaded(runner, code, f"handlers.{handler}").invoke(5)
    assert kind == Kind.RESULT, meta
    assert json.loads(body) == result


def test_es_module_under_type_module(runner: RunnerProcess, code: Path) -> None:
    kind, _meta, body = loaded(runner, code, "esm/app.handler").invoke("x")
    assert (kind, json.loads(body)) == (Kind.RESULT, {"esm": "x", "sep": "/"})


@pytest.mark.parametrize(("handler", "raw"), [("buffer", b"\x00\xff\x01\x02"), ("uint8", b"\x07\x08\x09")])
def test_bytes_are_returned_raw(runner: RunnerProcess, code: Path, handler: str, raw: bytes) -> None:
    kind, meta, body = loaded(runner, code, f"handlers.{handler}").invoke(None)
    assert (kind, meta.get("raw"), body) == (Kind.RESULT, True, raw)


@pytest.mark.parametrize(
    ("handler", "error_type", "message"),
    [
        ("bigint", "Runtime.MarshalError", "BigInt"),
        ("callbackError", "TypeError", "bad input"),
        ("throwString", "Error", "just a string"),
        ("rejection", "Runtime.UnhandledPromiseRejection", "RangeError: nobody awaited me"),
        ("timerThrow", "SyntaxError", "from a timer"),
    ],
)
def test_errors(runner: RunnerProcess, code: Path, handler: str, error_type: str, message: str) -> None:
    loaded(runner, code, f"handlers.{handler}")
    kind, meta, _body = runner.invoke(None)
    assert kind == Kind.ERROR
    assert meta["type"] == error_type and message in meta["message"]
    # The instance keeps serving after any of them.
    assert runner.request(Kind.PING, rid=9)[0] == Kind.PONG


@pytest.mark.parametrize(
    ("handler", "error_type"),
    [("broken.handler", "SyntaxError"), ("absent.handler", "Runtime.ImportModuleError"),
     ("handlers.missing", "HandlerNotFound"), ("handlers.notAFunction", "HandlerNotFound"),
     ("handlers", "Runtime.MalformedHandlerName")],
)  # fmt: skip
def test_load_errors(runner: RunnerProcess, code: Path, handler: str, error_type: str) -> None:
    kind, meta = runner.load(code, handler)
    assert (kind, meta["type"]) == (Kind.LOAD_ERROR, error_type), meta


def test_logs_are_capped_per_call(runner: RunnerProcess, code: Path) -> None:
    kind, meta, body = loaded(runner, code, "handlers.flood").invoke(None, log_cap=100)
    assert (kind, json.loads(body)) == (Kind.RESULT, "flooded")
    assert len(meta["logs"]) == 100 and meta["truncated"] == 5001 - 100


def test_overlapping_calls_keep_their_own_logs(runner: RunnerProcess, code: Path) -> None:
    loaded(runner, code, "handlers.overlap")
    with runner.connect() as sock:
        wire.send_frame(sock, Kind.INVOKE, 1, invoke_meta("first"), b'{"name": "first"}')
        wire.send_frame(sock, Kind.INVOKE, 2, invoke_meta("second"), b'{"name": "second"}')
        replies = [wire.recv_frame(sock) for _ in range(2)]
    logs = {rid: meta["logs"] for _kind, rid, meta, _body in replies}
    # The first call waits for the second, so their output interleaves in time; each keeps its own.
    assert logs == {1: "start first\nend first\n", 2: "start second\nend second\n"}


def test_process_exit_ends_the_instance(runner: RunnerProcess, code: Path) -> None:
    loaded(runner, code, "handlers.exit")
    with runner.connect() as sock:
        wire.send_frame(sock, Kind.INVOKE, 1, invoke_meta("exit"), b"null")
        with pytest.raises((EOFError, ConnectionError)):
            wire.recv_frame(sock)
    assert runner.proc.wait(10) == 7


def test_shutdown_ends_the_runner(runner: RunnerProcess) -> None:
    with runner.connect() as sock:
        wire.send_frame(sock, Kind.SHUTDOWN)
    assert runner.proc.wait(10) == 0


def test_oversized_frame_closes_the_connection(runner: RunnerProcess) -> None:
    with runner.connect() as sock:
        sock.sendall(wire.HEADER.pack(1, 0, wire.MAX_FRAME + 1, Kind.INVOKE))
        with pytest.raises((EOFError, ConnectionError, socket.timeout)):
            wire.recv_frame(sock)
    assert runner.request(Kind.PING, rid=3)[0] == Kind.PONG


# -- the example, through a real engine ---------------------------------------------------------


@pytest.fixture(scope="module", params=sandbox_params("process", "namespace"))
def engine(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningEngine]:
    eng = RunningEngine(tmp_path_factory.mktemp(f"node-{request.param}"), sandbox=request.param, pool={"node": 1},
                        extra={"runtimes": ["node"]})  # fmt: skip
    eng.start()
    yield eng
    assert eng.stop() == 0, eng.log()


def test_example_node_hello(engine: RunningEngine) -> None:
    fv = engine.deploy(REPO / "examples" / "node-hello")
    assert (fv["name"], fv["runtime"]) == ("node-hello", "node")
    response = engine.call("node-hello", "?name=you", method="GET")
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["hello"], body["function"], body["version"]) == ("you", "node-hello", fv["version"])
    assert body["request_id"] == response.headers["X-Easyfaas-Request-Id"]
    logs = engine.client.invoke("node-hello", b'{"name": "ada"}', log_tail=True)
    assert logs.json()["hello"] == "ada"


def test_deploy_refuses_a_missing_module(engine: RunningEngine, tmp_path: Path) -> None:
    from easyfaas.client import ApiError

    (tmp_path / "index.js").write_text("exports.handler = async () => 1;\n")
    with pytest.raises(ApiError, match="module 'app' not found"):
        engine.deploy(tmp_path, "node-nomod", runtime="node", handler="app.handler")
    with pytest.raises(ApiError, match="does not load"):
        (tmp_path / "bad.js").write_text("throw new Error('at import time');\n")
        engine.deploy(tmp_path, "node-bad", runtime="node", handler="bad.handler")


def test_raw_bytes_through_the_http_trigger(engine: RunningEngine, tmp_path: Path) -> None:
    (tmp_path / "index.js").write_text("exports.handler = async () => Buffer.from('\\x00raw\\xff', 'latin1');\n")
    engine.deploy(tmp_path, "node-raw", runtime="node", handler="index.handler")
    response = engine.call("node-raw", method="GET")
    assert response.content == b"\x00raw\xff" and response.headers["content-type"] == "application/octet-stream"
