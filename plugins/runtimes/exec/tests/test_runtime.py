"""The exec runtime: deploy-time checks, the runner spoken to with frames, and its example."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from easyfaas.errors import FunctionSpecError
from easyfaas.models import FunctionSpec
from easyfaas.plugin.manager import Plugins
from easyfaas.testing import RunningEngine, sandbox_params
from easyfaas.testing.conformance import RunnerProcess
from easyfaas.wire import Kind
from easyfaas_runtime_exec import ExecRuntime

REPO = Path(__file__).resolve().parents[4]

# Prints what the program was given: its HTTP variables, the length and hash of its stdin.
SHOW = """#!/usr/bin/env python3
import hashlib, json, os, sys
data = sys.stdin.buffer.read()
print(json.dumps({"env": {k: v for k, v in os.environ.items() if k.startswith(("Http_", "EASYFAAS_"))},
                  "stdin": data.decode("utf-8", "replace"), "sha": hashlib.sha256(data).hexdigest()}))
"""


def executable(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


@pytest.fixture
def code(tmp_path: Path) -> Path:
    code = tmp_path / "code"
    executable(code / "show.py", SHOW)
    executable(code / "fail.sh", "#!/bin/sh\necho 'some output' \necho 'first problem' >&2\necho 'the real cause' >&2\nexit 3\n")
    executable(code / "killed.sh", "#!/bin/sh\nkill -9 $$\n")
    executable(code / "binary.sh", "#!/bin/sh\nprintf '\\000\\377raw'\n")
    executable(code / "text.sh", "#!/bin/sh\necho 'plain text, not JSON'\n")
    executable(code / "ignores-stdin.sh", "#!/bin/sh\necho '\"ok\"'\n")
    executable(code / "noisy.sh", "#!/bin/sh\nhead -c 300000 /dev/zero | tr '\\0' 'e' >&2\necho '\"done\"'\n")
    executable(code / "big.sh", "#!/bin/sh\nprintf '\"'\nhead -c 5000000 /dev/zero | tr '\\0' 'b'\nprintf '\"'\n")
    (code / "not-executable.sh").write_text("#!/bin/sh\necho hi\n")
    return code


@pytest.fixture
def runner(tmp_path: Path) -> Iterator[RunnerProcess]:
    proc = RunnerProcess(ExecRuntime(), tmp_path / "sandbox")
    yield proc
    proc.close()


def http_event(body: bytes = b"", *, base64_body: bool = False, **extra: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "version": "2.0", "rawPath": "/some/path", "rawQueryString": "a=1&b=two",
        "headers": {"content-type": "application/x-custom", "x-forwarded-for": "10.0.0.1", "x-multi-part-name": "v"},
        "cookies": ["c=1", "d=2"],
        "requestContext": {"http": {"method": "PUT", "path": "/some/path", "sourceIp": "10.0.0.1"}},
        "body": base64.b64encode(body).decode() if base64_body else body.decode(), "isBase64Encoded": base64_body,
        **extra,
    }  # fmt: skip
    return event


# -- the runtime object ------------------------------------------------------------------------


def test_registered_under_its_entry_point_name() -> None:
    plugins = Plugins()
    plugins.load({"runtimes": ["exec"]})
    assert plugins.get("runtimes", "exec") is ExecRuntime


def test_function_specs_accept_file_names_as_handlers() -> None:
    for handler in ("run", "handler.sh", "bin/run-me", "bin/v1.2/start+go"):
        assert FunctionSpec(name="f", runtime="exec", handler=handler).handler == handler
    for handler in ("../up.sh", "/abs/path", "bin/../x", ".hidden", "-rf", "a//b", ""):
        with pytest.raises(ValueError, match="handler"):
            FunctionSpec(name="f", runtime="exec", handler=handler)


def test_check_code(code: Path, tmp_path: Path) -> None:
    runtime = ExecRuntime()
    runtime.check_code(code, "show.py")
    with pytest.raises(FunctionSpecError, match="no such file"):
        runtime.check_code(code, "absent.sh")
    with pytest.raises(FunctionSpecError, match="not executable: chmod"):
        runtime.check_code(code, "not-executable.sh")
    executable(code / "mars.sh", "#!/opt/martian/bin/sh\n")
    with pytest.raises(FunctionSpecError, match="interpreter /opt/martian/bin/sh"):
        runtime.check_code(code, "mars.sh")
    executable(tmp_path / "outside.sh", "#!/bin/sh\n")
    (code / "link.sh").symlink_to(tmp_path / "outside.sh")
    with pytest.raises(FunctionSpecError, match="outside"):
        runtime.check_code(code, "link.sh")


def test_options_and_host_paths() -> None:
    assert {"/bin", "/usr/bin"} <= set(ExecRuntime().host_paths())
    assert "/usr/bin" not in ExecRuntime(host_paths=["/opt/tools"]).host_paths()
    with pytest.raises(ValueError, match="absolute"):
        ExecRuntime(host_paths=["relative/dir"])


# -- the runner --------------------------------------------------------------------------------


def test_http_event_becomes_stdin_and_watchdog_variables(runner: RunnerProcess, code: Path) -> None:
    assert runner.load(code, "show.py")[0] == Kind.LOADED
    payload = bytes(range(256))
    kind, meta, body = runner.invoke(http_event(payload, base64_body=True), rid=4)
    assert kind == Kind.RESULT and "raw" not in meta
    result = json.loads(body)
    assert (result["statusCode"], result["headers"]["Content-Type"]) == (200, "application/x-custom")
    shown = json.loads(result["body"])
    assert shown["env"] | {"EASYFAAS_DEADLINE_MS": "?"} == {
        "Http_Method": "PUT", "Http_Path": "/some/path", "Http_Query": "a=1&b=two",
        "Http_Content_Type": "application/x-custom", "Http_X_Forwarded_For": "10.0.0.1", "Http_X_Multi_Part_Name": "v",
        "Http_Cookie": "c=1; d=2", "EASYFAAS_REQUEST_ID": "call-4", "EASYFAAS_DEADLINE_MS": "?",
        "EASYFAAS_FUNCTION_NAME": "conformance", "EASYFAAS_FUNCTION_VERSION": "1", "EASYFAAS_MEMORY_MB": "256",
        "EASYFAAS_FUNCTION_ARN": "arn:aws:lambda:easyfaas:000000000000:function:conformance:1",
        "EASYFAAS_INSTANCE": "conformance-0",
    }  # fmt: skip
    assert shown["sha"] == hashlib.sha256(payload).hexdigest()


def test_content_type_variable_overrides_the_response_type(runner: RunnerProcess, code: Path) -> None:
    assert runner.load(code, "show.py", {"content_type": "text/csv"})[0] == Kind.LOADED
    result = json.loads(runner.invoke(http_event(b"x"))[2])
    assert result["headers"] == {"Content-Type": "text/csv"}


def test_other_events_are_stdin_as_json(runner: RunnerProcess, code: Path) -> None:
    assert runner.load(code, "show.py")[0] == Kind.LOADED
    result = json.loads(runner.invoke({"plain": "event ☃"})[2])
    assert json.loads(result["stdin"]) == {"plain": "event ☃"}
    assert "Http_Method" not in result["env"]


@pytest.mark.parametrize(("handler", "raw"), [("binary.sh", b"\x00\xffraw"), ("text.sh", b"plain text, not JSON\n")])
def test_output_that_is_not_json_is_raw(runner: RunnerProcess, code: Path, handler: str, raw: bytes) -> None:
    assert runner.load(code, handler)[0] == Kind.LOADED
    kind, meta, body = runner.invoke(None)
    assert (kind, meta.get("raw"), body) == (Kind.RESULT, True, raw)


def test_binary_output_of_an_http_call_is_base64(runner: RunnerProcess, code: Path) -> None:
    assert runner.load(code, "binary.sh")[0] == Kind.LOADED
    result = json.loads(runner.invoke(http_event(headers={}))[2])
    assert result["isBase64Encoded"] is True and base64.b64decode(result["body"]) == b"\x00\xffraw"
    assert result["headers"]["Content-Type"] == "application/octet-stream"


def test_non_zero_exit_is_an_exit_error_with_stderr(runner: RunnerProcess, code: Path) -> None:
    assert runner.load(code, "fail.sh")[0] == Kind.LOADED
    kind, meta, _body = runner.invoke(None)
    assert kind == Kind.ERROR and meta["type"] == "Runtime.ExitError"
    assert meta["message"] == "fail.sh exited with status 3: the real cause"
    assert meta["stack"] == ["first problem", "the real cause"]
    assert meta["logs"] == "first problem\nthe real cause\n"


def test_killed_by_a_signal(runner: RunnerProcess, code: Path) -> None:
    assert runner.load(code, "killed.sh")[0] == Kind.LOADED
    kind, meta, _body = runner.invoke(None)
    assert (kind, meta["message"]) == (Kind.ERROR, "killed.sh was killed by signal 9 (SIGKILL)")


def test_large_input_not_read_and_large_output(runner: RunnerProcess, code: Path, tmp_path: Path) -> None:
    assert runner.load(code, "ignores-stdin.sh")[0] == Kind.LOADED
    assert runner.invoke("y" * 3_000_000)[2] == b'"ok"'
    second = RunnerProcess(ExecRuntime(), tmp_path / "second")
    try:
        assert second.load(code, "big.sh")[0] == Kind.LOADED
        assert json.loads(second.invoke(None)[2]) == "b" * 5_000_000
    finally:
        second.close()


def test_stderr_is_capped_per_call(runner: RunnerProcess, code: Path) -> None:
    assert runner.load(code, "noisy.sh")[0] == Kind.LOADED
    kind, meta, body = runner.invoke(None, log_cap=1000)
    assert (kind, body) == (Kind.RESULT, b'"done"')
    assert meta["logs"] == "e" * 1000 and meta["truncated"] == 299_000


def test_missing_or_non_executable_handler_is_a_load_error(runner: RunnerProcess, code: Path) -> None:
    kind, meta = runner.load(code, "not-executable.sh")
    assert (kind, meta["type"]) == (Kind.LOAD_ERROR, "HandlerNotExecutable")
    kind, meta = runner.load(code, "absent.sh")
    assert (kind, meta["type"]) == (Kind.LOAD_ERROR, "HandlerNotFound")


# -- the example, through a real engine ---------------------------------------------------------


@pytest.fixture(scope="module", params=sandbox_params("process", "namespace"))
def engine(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningEngine]:
    eng = RunningEngine(tmp_path_factory.mktemp(f"exec-{request.param}"), sandbox=request.param, pool={"exec": 1},
                        extra={"runtimes": ["exec"]})  # fmt: skip
    eng.start()
    yield eng
    assert eng.stop() == 0, eng.log()


def test_example_exec_hello(engine: RunningEngine) -> None:
    fv = engine.deploy(REPO / "examples" / "exec-hello")
    assert (fv["name"], fv["runtime"], fv["handler"]) == ("exec-hello", "exec", "handler.sh")
    response = engine.call("exec-hello", "/greet?name=you", content=b"12345")
    assert response.status_code == 200, response.text
    assert response.text == "hello you from exec-hello: POST /greet with 5 bytes of body\n"
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    api = engine.client.invoke("exec-hello", b'"x"', log_tail=True)
    assert api.content == b"hello world from exec-hello: INVOKE  with 3 bytes of body\n"
    logs = base64.b64decode(api.headers["X-Easyfaas-Log-Result"]).decode()
    assert logs == f"served request {api.headers['X-Easyfaas-Request-Id']}\n"
