"""The lambda runtime: deploy-time checks, the Runtime API as bootstraps see it, and its bash/curl example."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from easyfaas import wire
from easyfaas.errors import FunctionSpecError
from easyfaas.plugin.manager import Plugins
from easyfaas.testing import RunningEngine, sandbox_params
from easyfaas.testing.conformance import RunnerProcess, invoke_meta
from easyfaas.wire import Kind
from easyfaas_runtime_lambda import LambdaRuntime

REPO = Path(__file__).resolve().parents[4]

# A bootstrap that reports what it was given, and does what the event's "do" says.
PROBE = """#!/usr/bin/env python3
import json, os, sys, urllib.error, urllib.request

API = "http://" + os.environ["AWS_LAMBDA_RUNTIME_API"] + "/2018-06-01/runtime"
ENV = {k: os.environ.get(k) for k in ("_HANDLER", "LAMBDA_TASK_ROOT", "AWS_LAMBDA_FUNCTION_NAME", "AWS_LAMBDA_FUNCTION_VERSION",
       "AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "AWS_REGION", "AWS_LAMBDA_LOG_STREAM_NAME", "TZ", "GREETING")}


def post(path, body, headers=None):
    try:
        with urllib.request.urlopen(urllib.request.Request(API + path, data=body, method="POST", headers=headers or {})) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


print("initialising", os.environ["_HANDLER"])
if os.environ["_HANDLER"] == "fail.init":
    post("/init/error", json.dumps({"errorType": "Custom.InitFailure", "errorMessage": "no config",
                                    "stackTrace": ["frame 1", "frame 2"]}).encode())
    sys.exit(1)
if os.environ["_HANDLER"] == "exit.init":
    sys.exit(6)

while True:
    with urllib.request.urlopen(API + "/invocation/next") as r:
        event, headers = json.loads(r.read()), dict(r.headers)
    rid = headers["Lambda-Runtime-Aws-Request-Id"]
    do = event.get("do") if isinstance(event, dict) else None
    print("handling", rid)
    if do == "error-header-only":
        post(f"/invocation/{rid}/error", b"", {"Lambda-Runtime-Function-Error-Type": "Unhandled"})
    elif do == "raw":
        post(f"/invocation/{rid}/response", b"\\x00not json\\xff")
    elif do == "unknown-id":
        status = post("/invocation/not-a-request/response", b"{}")
        post(f"/invocation/{rid}/response", json.dumps({"status_for_unknown_id": status}).encode())
    elif do == "big":
        post(f"/invocation/{rid}/response", json.dumps("z" * 3_000_000).encode())
    elif do == "die":
        os._exit(9)
    else:
        post(f"/invocation/{rid}/response", json.dumps({"env": ENV, "headers": headers, "event": event}).encode())
"""


@pytest.fixture
def code(tmp_path: Path) -> Path:
    code = tmp_path / "code"
    code.mkdir()
    (code / "bootstrap").write_text(PROBE)
    (code / "bootstrap").chmod(0o755)
    return code


@pytest.fixture
def runner(tmp_path: Path) -> Iterator[RunnerProcess]:
    proc = RunnerProcess(LambdaRuntime(), tmp_path / "sandbox")
    yield proc
    proc.close()


# -- the runtime object ------------------------------------------------------------------------


def test_registered_under_its_entry_point_name() -> None:
    plugins = Plugins()
    plugins.load({"runtimes": ["lambda"]})
    assert plugins.get("runtimes", "lambda") is LambdaRuntime


def test_check_code(code: Path, tmp_path: Path) -> None:
    runtime = LambdaRuntime()
    runtime.check_code(code, "any.handler")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FunctionSpecError, match="named 'bootstrap'"):
        runtime.check_code(empty, "any.handler")
    (empty / "bootstrap").write_text("#!/bin/sh\n")
    with pytest.raises(FunctionSpecError, match="not executable"):
        runtime.check_code(empty, "any.handler")


# -- the runner --------------------------------------------------------------------------------


def test_bootstrap_gets_the_lambda_environment_and_headers(runner: RunnerProcess, code: Path) -> None:
    kind, meta = runner.load(code, "app.handler", {"GREETING": "a=b"})
    assert kind == Kind.LOADED and meta["logs"] == "initialising app.handler\n"
    kind, meta, body = runner.invoke({"x": "☃"}, rid=2, deadline=1_900_000_000_000.0)
    assert kind == Kind.RESULT and meta["logs"] == "handling call-2\n"
    seen = json.loads(body)
    assert seen["event"] == {"x": "☃"}
    assert seen["env"] == {
        "_HANDLER": "app.handler", "LAMBDA_TASK_ROOT": str(code), "AWS_LAMBDA_FUNCTION_NAME": "conformance",
        "AWS_LAMBDA_FUNCTION_VERSION": "1", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "256", "AWS_REGION": "us-east-1",
        "AWS_LAMBDA_LOG_STREAM_NAME": "conformance-0", "TZ": ":UTC", "GREETING": "a=b",
    }  # fmt: skip
    headers = seen["headers"]
    assert headers["Lambda-Runtime-Aws-Request-Id"] == "call-2"
    assert headers["Lambda-Runtime-Deadline-Ms"] == "1900000000000"
    assert headers["Lambda-Runtime-Invoked-Function-Arn"] == "arn:aws:lambda:easyfaas:000000000000:function:conformance:1"
    assert headers["Lambda-Runtime-Trace-Id"].startswith("Root=1-")


def test_init_error_is_a_load_error(runner: RunnerProcess, code: Path) -> None:
    kind, meta = runner.load(code, "fail.init")
    assert (kind, meta["type"], meta["message"], meta["stack"]) == (Kind.LOAD_ERROR, "Custom.InitFailure", "no config", ["frame 1", "frame 2"])
    assert meta["logs"] == "initialising fail.init\n"


def test_bootstrap_exiting_during_init_is_a_load_error(runner: RunnerProcess, code: Path) -> None:
    kind, meta = runner.load(code, "exit.init")
    assert (kind, meta["type"]) == (Kind.LOAD_ERROR, "Runtime.ExitError")
    assert "status 6" in meta["message"]


def test_missing_bootstrap_is_a_load_error(runner: RunnerProcess, tmp_path: Path) -> None:
    kind, meta = runner.load(tmp_path, "x.y")
    assert (kind, meta["type"]) == (Kind.LOAD_ERROR, "Runtime.InvalidEntrypoint")


def test_error_with_only_the_type_header(runner: RunnerProcess, code: Path) -> None:
    assert runner.load(code, "x.y")[0] == Kind.LOADED
    kind, meta, _body = runner.invoke({"do": "error-header-only"})
    assert (kind, meta["type"], meta["stack"]) == (Kind.ERROR, "Unhandled", [])


def test_responses_that_are_not_json_are_raw(runner: RunnerProcess, code: Path) -> None:
    assert runner.load(code, "x.y")[0] == Kind.LOADED
    kind, meta, body = runner.invoke({"do": "raw"})
    assert (kind, meta.get("raw"), body) == (Kind.RESULT, True, b"\x00not json\xff")


def test_unknown_request_ids_are_refused_and_big_responses_pass(runner: RunnerProcess, code: Path) -> None:
    assert runner.load(code, "x.y")[0] == Kind.LOADED
    with runner.connect() as sock:
        assert json.loads(runner.invoke({"do": "unknown-id"}, rid=1, sock=sock)[2]) == {"status_for_unknown_id": 400}
        assert json.loads(runner.invoke({"do": "big"}, rid=2, sock=sock)[2]) == "z" * 3_000_000


def test_bootstrap_dying_ends_the_instance(runner: RunnerProcess, code: Path) -> None:
    assert runner.load(code, "x.y")[0] == Kind.LOADED
    with runner.connect() as sock:
        wire.send_frame(sock, Kind.INVOKE, 1, invoke_meta(), b'{"do": "die"}')
        with pytest.raises((EOFError, ConnectionError)):
            wire.recv_frame(sock)
    assert runner.proc.wait(10) == 9


# -- the example (bash + curl, as in AWS's tutorial), through a real engine ------------------------


@pytest.fixture(scope="module", params=sandbox_params("process", "namespace"))
def engine(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningEngine]:
    eng = RunningEngine(tmp_path_factory.mktemp(f"lambda-{request.param}"), sandbox=request.param, pool={"lambda": 1},
                        extra={"runtimes": ["lambda"]})  # fmt: skip
    eng.start()
    yield eng
    assert eng.stop() == 0, eng.log()


def test_example_lambda_hello(engine: RunningEngine) -> None:
    fv = engine.deploy(REPO / "examples" / "lambda-hello")
    assert (fv["name"], fv["runtime"], fv["handler"]) == ("lambda-hello", "lambda", "function.handler")
    response = engine.call("lambda-hello", "/p?name=you", method="GET")
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["hello"], body["function"]) == ("from bash", "lambda-hello")
    assert body["event"]["rawPath"] == "/p" and body["event"]["queryStringParameters"] == {"name": "you"}
    api = engine.client.invoke("lambda-hello", b'{"k": "v"}', log_tail=True)
    assert api.json()["event"] == {"k": "v"}
    assert base64.b64decode(api.headers["X-Easyfaas-Log-Result"]).decode().endswith('got event: {"k": "v"}\n')
