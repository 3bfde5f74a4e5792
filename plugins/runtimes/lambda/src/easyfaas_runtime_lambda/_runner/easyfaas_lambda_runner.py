"""The lambda runner: serves the AWS Lambda Runtime API to the function's ``bootstrap`` (custom runtimes).

Standard library only, plus ``easyfaas_runner_support``, ``easyfaas_runner_child`` and
``easyfaas_wire`` placed beside this file. Started as
``python -I -S -B easyfaas_lambda_runner.py SOCKET`` or, by a zygote, as ``serve(SOCKET)``.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing is not imported at run time: runners start faster without it
    from typing import Any

    from easyfaas import runner_child as child  # the same files, as the type checker finds them
    from easyfaas import runner_support as support
else:  # found through the sys.path line above
    import easyfaas_runner_child as child
    import easyfaas_runner_support as support

Kind = support.Kind
LOG_CAP = support.LOG_CAP
#: Seconds the bootstrap gets to initialise (ask for its first event); the function's env may change it.
INIT_TIMEOUT = 30.0
INIT_TIMEOUT_VAR = "EASYFAAS_INIT_TIMEOUT"
API = "/2018-06-01/runtime"
DEFAULT_REGION = "us-east-1"

_error = support.error


class Invocation:
    """One call handed to the bootstrap; ``outcome`` is set by its response or error POST."""

    def __init__(self, request_id: str, deadline_ms: float, body: bytes) -> None:
        self.request_id = request_id
        self.deadline_ms = deadline_ms
        self.body = body
        self.done = threading.Event()
        self.outcome: tuple[str, bytes, dict[str, str]] | None = None  # ("response"|"error", body, headers)


class RuntimeApi:
    """What the bootstrap talks to: the state shared between the HTTP handlers and the runner."""

    def __init__(self, function: dict[str, Any]) -> None:
        self.function = function
        self.pending: queue.Queue[Invocation] = queue.Queue()
        self.current: dict[str, Invocation] = {}
        self.lock = threading.Lock()
        self.first_next = threading.Event()  # the bootstrap finished initialising
        self.init_error: tuple[bytes, dict[str, str]] | None = None
        self.init_failed = threading.Event()

    def settle(self, request_id: str, kind: str, body: bytes, headers: dict[str, str]) -> bool:
        with self.lock:
            invocation = self.current.pop(request_id, None)
        if invocation is None:
            return False
        invocation.outcome = (kind, body, headers)
        invocation.done.set()
        return True


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, and `Expect: 100-continue` for curl's large POSTs
    # Headers and body go out in two writes: with Nagle on, the body waits for the client's
    # delayed ACK of the headers, 40 ms on Linux, on every call.
    disable_nagle_algorithm = True
    api: RuntimeApi  # set on the per-runner subclass

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the bootstrap's requests are not the function's logs

    def reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] != f"{API}/invocation/next":
            self.reply(404, b'{"errorType":"NotFound","errorMessage":"unknown Runtime API path"}')
            return
        api = self.api
        api.first_next.set()
        invocation = api.pending.get()  # a long poll: the bootstrap waits here between calls
        with api.lock:
            api.current[invocation.request_id] = invocation
        fn = api.function
        headers = {
            "Lambda-Runtime-Aws-Request-Id": invocation.request_id,
            "Lambda-Runtime-Deadline-Ms": str(int(invocation.deadline_ms)),
            "Lambda-Runtime-Invoked-Function-Arn": str(fn.get("arn", "")),
            "Lambda-Runtime-Trace-Id": f"Root=1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]};Parent={uuid.uuid4().hex[:16]};Sampled=0",
        }
        self.reply(200, invocation.body, headers)

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        body = self.read_body()
        headers = {k.lower(): v for k, v in self.headers.items()}
        if path == f"{API}/init/error":
            self.api.init_error = (body, headers)
            self.api.init_failed.set()
            self.reply(202, b'{"status":"OK"}')
            return
        prefix = f"{API}/invocation/"
        if path.startswith(prefix):
            request_id, _, action = path[len(prefix):].partition("/")
            if action in ("response", "error"):
                if self.api.settle(request_id, action, body, headers):
                    self.reply(202, b'{"status":"OK"}')
                else:
                    self.reply(400, b'{"errorType":"InvalidRequestID","errorMessage":"no such invocation in flight"}')
                return
        self.reply(404, b'{"errorType":"NotFound","errorMessage":"unknown Runtime API path"}')


def error_from(body: bytes, headers: dict[str, str], default_type: str) -> dict[str, Any]:
    """The protocol's error meta from a Runtime API error document ``{errorType, errorMessage, stackTrace}``."""
    try:
        doc = json.loads(body) if body else {}
    except ValueError:
        doc = {"errorMessage": body.decode("utf-8", "replace")}
    if not isinstance(doc, dict):
        doc = {"errorMessage": json.dumps(doc)}
    error_type = doc.get("errorType") or headers.get("lambda-runtime-function-error-type") or default_type
    stack = doc.get("stackTrace") or []
    if not isinstance(stack, list):
        stack = str(stack).split("\n")
    return {"type": str(error_type), "message": str(doc.get("errorMessage", "")), "stack": [str(line) for line in stack]}


class Runner(support.Runner):
    def __init__(self) -> None:
        super().__init__()
        self.function: dict[str, Any] | None = None
        self.loading = False
        self.api: RuntimeApi | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.output: child.OutputPump | None = None

    def load(self, meta: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if self.function is not None or self.loading:
            return Kind.LOAD_ERROR, _error("ReloadRefused", "this instance already loaded a function")
        self.loading = True
        started = time.perf_counter()
        code_dir = str(meta.get("code_dir", ""))
        bootstrap = os.path.join(code_dir, "bootstrap")
        if not os.path.isfile(bootstrap) or not os.access(bootstrap, os.X_OK):
            self.loading = False
            return Kind.LOAD_ERROR, _error("Runtime.InvalidEntrypoint", "the code has no executable 'bootstrap' at its top")
        os.environ.update(meta.get("env") or {})
        os.chdir(code_dir)
        api = self.api = RuntimeApi(meta)
        handler_class = type("BoundHandler", (Handler,), {"api": api})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler_class)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, name="runtime-api", daemon=True).start()
        address = f"127.0.0.1:{server.server_address[1]}"
        name, version = str(meta.get("function", "")), str(meta.get("version", "$LATEST"))
        env = dict(os.environ)
        region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or DEFAULT_REGION
        env.setdefault("TZ", ":UTC")
        env.setdefault("PYTHONUNBUFFERED", "1")  # a Python bootstrap's prints reach its call's logs at once
        env.update({
            "_HANDLER": str(meta.get("handler", "")), "LAMBDA_TASK_ROOT": code_dir, "AWS_LAMBDA_RUNTIME_API": address,
            "AWS_LAMBDA_FUNCTION_NAME": name, "AWS_LAMBDA_FUNCTION_VERSION": version,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(meta.get("memory_mb", 128)),
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/easyfaas/{name}", "AWS_LAMBDA_LOG_STREAM_NAME": str(meta.get("instance", "")),
            "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand", "AWS_EXECUTION_ENV": "AWS_Lambda_provided",
            "AWS_REGION": region, "AWS_DEFAULT_REGION": region,
            "LD_LIBRARY_PATH": ":".join(p for p in (f"{code_dir}/lib", env.get("LD_LIBRARY_PATH", "")) if p),
        })  # fmt: skip
        try:
            self.proc, self.output = child.spawn([bootstrap], code_dir, env)
        except OSError as exc:
            self.loading = False
            return Kind.LOAD_ERROR, _error("Runtime.InvalidEntrypoint", f"cannot start bootstrap: {exc}")
        timeout = child.seconds_from_env(INIT_TIMEOUT_VAR, INIT_TIMEOUT)
        problem = self._wait_initialised(timeout)
        logs, _dropped = self.output.take(LOG_CAP)
        if problem is not None:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            return Kind.LOAD_ERROR, {**problem, "logs": logs}
        self.function = meta
        child.watch(self.proc, "easyfaas lambda runner: bootstrap")
        return Kind.LOADED, {"init_ms": (time.perf_counter() - started) * 1000, "logs": logs}

    def _wait_initialised(self, timeout: float) -> dict[str, Any] | None:
        """Lambda's init phase: over when the bootstrap first asks for an event."""
        assert self.api is not None and self.proc is not None
        deadline = time.monotonic() + timeout
        while not self.api.first_next.wait(0.01):
            if self.api.init_failed.is_set():
                assert self.api.init_error is not None
                return error_from(*self.api.init_error, default_type="Runtime.InitError")
            code = self.proc.poll()
            if code is not None:
                return _error("Runtime.ExitError", f"bootstrap exited with status {code} during initialisation")
            if time.monotonic() > deadline:
                return _error("Runtime.InitTimeout", f"bootstrap did not ask for an event within {timeout:g}s")
        return None

    def invoke(self, meta: dict[str, Any], body: bytes) -> tuple[int, dict[str, Any], bytes]:
        if self.function is None or self.api is None or self.output is None:
            return Kind.ERROR, _error("NotLoaded", "no function is loaded"), b""
        started = time.perf_counter()
        deadline_ms = float(meta.get("deadline") or 0) or (time.time() + 900) * 1000
        invocation = Invocation(str(meta.get("rid") or uuid.uuid4().hex), deadline_ms, body or b"null")
        self.api.pending.put(invocation)
        # The engine kills the sandbox at the deadline; this bound only keeps a stray call finite.
        invocation.done.wait(max(1.0, deadline_ms / 1000 - time.time() + 1.0))
        reply = child.reply_meta(started, *self.output.take(int(meta.get("log_cap", LOG_CAP))))
        if invocation.outcome is None:
            return Kind.ERROR, {**reply, **_error("Runtime.Timeout", "the bootstrap did not answer before the deadline")}, b""
        kind, out, headers = invocation.outcome
        if kind == "error":
            return Kind.ERROR, {**reply, **error_from(out, headers, default_type="Runtime.UnknownError")}, b""
        if not child.is_json(out):
            reply["raw"] = True  # not JSON: the bytes as the bootstrap posted them
        return Kind.RESULT, reply, out

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()


def serve(socket_path: str) -> None:
    """Listen on ``socket_path`` and serve until SHUTDOWN."""
    support.serve(Runner(), socket_path)


if __name__ == "__main__":
    support.main(serve, "easyfaas_lambda_runner.py")
