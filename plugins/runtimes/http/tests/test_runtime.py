"""The http runtime: deploy-time checks, the runner and a real server behind it, and its example."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from easyfaas import wire
from easyfaas.errors import FunctionSpecError
from easyfaas.plugin.manager import Plugins
from easyfaas.testing import RunningEngine, sandbox_params
from easyfaas.testing.conformance import RunnerProcess, invoke_meta
from easyfaas.wire import Kind
from easyfaas_runtime_http import HttpRuntime

REPO = Path(__file__).resolve().parents[4]

# Answers every request with what it received; a few paths do something else.
MIRROR = """#!/usr/bin/env python3
import base64, json, os, sys
from http.server import BaseHTTPRequestHandler, HTTPServer

print("starting on", os.environ["PORT"], os.environ["K_SERVICE"], os.environ["K_REVISION"])


class Mirror(BaseHTTPRequestHandler):
    protocol_version = os.environ.get("PROTOCOL", "HTTP/1.1")

    def log_message(self, *args):
        pass

    def handle_one(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path == "/exit":
            os._exit(4)
        if self.path == "/binary":
            payload, ctype, status = bytes(range(256)), "application/octet-stream", 201
        else:
            print("handling", self.command, self.path)
            sys.stderr.write("to stderr\\n")
            payload = json.dumps({"method": self.command, "path": self.path, "body": base64.b64encode(body).decode(),
                                  "headers": {k.lower(): v for k, v in self.headers.items()}}).encode()
            ctype, status = "application/json", 200
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Set-Cookie", "a=1; Path=/")
        self.send_header("Set-Cookie", "b=2")
        self.send_header("X-Twice", "one")
        self.send_header("X-Twice", "two")
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = handle_one


HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Mirror).serve_forever()
"""


def executable(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


@pytest.fixture
def code(tmp_path: Path) -> Path:
    code = tmp_path / "code"
    executable(code / "mirror.py", MIRROR)
    executable(code / "dies.sh", "#!/bin/sh\necho 'cannot bind, giving up' >&2\nexit 5\n")
    executable(code / "deaf.sh", "#!/bin/sh\necho 'never listening'\nexec sleep 60\n")
    (code / "plain.txt").write_text("not a program\n")
    return code


@pytest.fixture
def runner(tmp_path: Path) -> Iterator[RunnerProcess]:
    proc = RunnerProcess(HttpRuntime(), tmp_path / "sandbox")
    yield proc
    proc.close()


def http_event(method: str = "GET", path: str = "/p", query: str = "", body: bytes = b"", **extra: Any) -> dict[str, Any]:
    return {
        "version": "2.0", "rawPath": path, "rawQueryString": query,
        "headers": {"x-custom": "yes", "connection": "close", "host": "example.test"}, "cookies": ["c=1", "d=2"],
        "requestContext": {"http": {"method": method, "path": path, "sourceIp": "10.1.2.3"}},
        "body": base64.b64encode(body).decode(), "isBase64Encoded": True, **extra,
    }  # fmt: skip


# -- the runtime object ------------------------------------------------------------------------


def test_registered_under_its_entry_point_name() -> None:
    plugins = Plugins()
    plugins.load({"runtimes": ["http"]})
    assert plugins.get("runtimes", "http") is HttpRuntime


def test_check_code(code: Path) -> None:
    runtime = HttpRuntime()
    runtime.check_code(code, "mirror.py")
    with pytest.raises(FunctionSpecError, match="no such file"):
        runtime.check_code(code, "server")
    with pytest.raises(FunctionSpecError, match="not executable"):
        runtime.check_code(code, "plain.txt")


# -- the runner --------------------------------------------------------------------------------


def test_load_starts_the_server_and_reports_its_output(runner: RunnerProcess, code: Path) -> None:
    kind, meta = runner.load(code, "mirror.py")
    assert kind == Kind.LOADED, meta
    assert meta["logs"].startswith("starting on ") and meta["logs"].endswith(" conformance conformance-1\n")


def test_http_event_becomes_the_same_request(runner: RunnerProcess, code: Path) -> None:
    assert runner.load(code, "mirror.py")[0] == Kind.LOADED
    kind, meta, body = runner.invoke(http_event("PUT", "/a/b", "x=1&y=%20", bytes(range(256))), rid=3)
    assert kind == Kind.RESULT and "raw" not in meta
    result = json.loads(body)
    assert next(iter(result)) == "statusCode" and result["statusCode"] == 200
    seen = json.loads(result["body"])
    assert (seen["method"], seen["path"]) == ("PUT", "/a/b?x=1&y=%20")
    assert base64.b64decode(seen["body"]) == bytes(range(256))
    headers = seen["headers"]
    assert (headers["x-custom"], headers["cookie"], headers["host"]) == ("yes", "c=1; d=2", "example.test")
    assert (headers["x-forwarded-for"], headers["x-easyfaas-request-id"]) == ("10.1.2.3", "call-3")
    assert headers.get("connection") != "close"  # hop-by-hop headers are the runner's, not the caller's
    assert result["cookies"] == ["a=1; Path=/", "b=2"]
    assert result["headers"]["X-Twice"] == "one, two" and "Content-Length" not in result["headers"]
    assert meta["logs"] == "handling PUT /a/b?x=1&y=%20\nto stderr\n"


def test_binary_response_is_base64_and_status_passes_through(runner: RunnerProcess, code: Path) -> None:
    assert runner.load(code, "mirror.py")[0] == Kind.LOADED
    result = json.loads(runner.invoke(http_event(path="/binary"))[2])
    assert (result["statusCode"], result["isBase64Encoded"]) == (201, True)
    assert base64.b64decode(result["body"]) == bytes(range(256))


def test_other_events_are_posted_as_json(runner: RunnerProcess, code: Path) -> None:
    assert runner.load(code, "mirror.py")[0] == Kind.LOADED
    seen = json.loads(runner.invoke({"plain": "☃"})[2])
    assert (seen["method"], seen["path"], seen["headers"]["content-type"]) == ("POST", "/", "application/json")
    assert json.loads(base64.b64decode(seen["body"])) == {"plain": "☃"}


def test_a_server_that_closes_connections_is_fine(runner: RunnerProcess, code: Path) -> None:
    assert runner.load(code, "mirror.py", {"PROTOCOL": "HTTP/1.0"})[0] == Kind.LOADED
    with runner.connect() as sock:
        for rid in range(1, 6):
            kind, _meta, body = runner.invoke(http_event(path=f"/n{rid}"), rid=rid, sock=sock)
            assert kind == Kind.RESULT and json.loads(json.loads(body)["body"])["path"] == f"/n{rid}"


def test_server_exiting_before_listening_is_a_load_error_with_its_output(runner: RunnerProcess, code: Path) -> None:
    kind, meta = runner.load(code, "dies.sh")
    assert (kind, meta["type"]) == (Kind.LOAD_ERROR, "Runtime.ExitError")
    assert "exited with status 5" in meta["message"] and meta["logs"] == "cannot bind, giving up\n"


def test_server_never_listening_is_a_ready_timeout(runner: RunnerProcess, code: Path) -> None:
    kind, meta = runner.load(code, "deaf.sh", {"EASYFAAS_READY_TIMEOUT": "0.5"})
    assert (kind, meta["type"]) == (Kind.LOAD_ERROR, "Runtime.ReadyTimeout")
    assert meta["logs"] == "never listening\n"


def test_server_exiting_later_ends_the_instance(runner: RunnerProcess, code: Path) -> None:
    assert runner.load(code, "mirror.py")[0] == Kind.LOADED
    with runner.connect() as sock:
        wire.send_frame(sock, Kind.INVOKE, 1, invoke_meta(), json.dumps(http_event(path="/exit")).encode())
        with pytest.raises((EOFError, ConnectionError)):
            wire.recv_frame(sock)
    assert runner.proc.wait(10) == 4


def test_port_from_the_function_env_is_used(runner: RunnerProcess, code: Path) -> None:
    from easyfaas.testing import free_port

    port = free_port()
    kind, meta = runner.load(code, "mirror.py", {"PORT": str(port)})
    assert kind == Kind.LOADED and f"starting on {port} " in meta["logs"]


# -- the example, through a real engine ---------------------------------------------------------


@pytest.fixture(scope="module", params=sandbox_params("process", "namespace"))
def engine(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningEngine]:
    eng = RunningEngine(tmp_path_factory.mktemp(f"http-{request.param}"), sandbox=request.param, pool={"http": 1},
                        extra={"runtimes": ["http"]})  # fmt: skip
    eng.start()
    yield eng
    assert eng.stop() == 0, eng.log()


def test_example_http_hello(engine: RunningEngine) -> None:
    fv = engine.deploy(REPO / "examples" / "http-hello")
    assert (fv["name"], fv["runtime"], fv["handler"]) == ("http-hello", "http", "server.py")
    response = engine.call("http-hello", "/deep/path?name=you", method="GET")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body == {"hello": "you", "path": "/deep/path", "function": "http-hello",
                    "request_id": response.headers["X-Easyfaas-Request-Id"]}  # fmt: skip
    assert response.headers["set-cookie"] == "greeted=you"
    logs = engine.client.invoke("http-hello", b'{"any": "event"}', log_tail=True)
    assert logs.json()["hello"] == "world"
    assert base64.b64decode(logs.headers["X-Easyfaas-Log-Result"]).decode().endswith("greeting world\n")
