"""The exec runner: runs the function's executable once per call, as OpenFaaS's classic watchdog does.

Standard library only, plus ``easyfaas_runner_support``, ``easyfaas_runner_child`` and
``easyfaas_wire`` placed beside this file. Started as
``python -I -S -B easyfaas_exec_runner.py SOCKET`` or, by a zygote, as ``serve(SOCKET)``.
"""

from __future__ import annotations

import base64
import os
import selectors
import signal
import subprocess
import sys
import time

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
#: How many trailing stderr lines an ERROR carries as its ``stack``.
STACK_LINES = 50
_CHUNK = 1 << 16

_error = support.error


def header_variable(name: str) -> str:
    """``content-type`` → ``Http_Content_Type``: Go's canonical header form, '-' → '_', as the watchdog names them."""
    return "Http_" + "_".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


def http_request(event: dict[str, Any]) -> tuple[bytes, dict[str, str], str]:
    """(stdin, environment, request content type) of one payload-2.0 event."""
    http = event["requestContext"]["http"]
    env = {"Http_Method": str(http.get("method", "")), "Http_Path": str(event.get("rawPath", http.get("path", "")))}
    query = event.get("rawQueryString") or ""
    if query:
        env["Http_Query"] = str(query)
    headers = {str(k).lower(): str(v) for k, v in (event.get("headers") or {}).items()}
    if event.get("cookies"):
        headers["cookie"] = "; ".join(str(c) for c in event["cookies"])
    for key, value in headers.items():
        if "\0" not in value and "=" not in key:
            env[header_variable(key)] = value
    body = event.get("body") or ""
    data = base64.b64decode(body) if event.get("isBase64Encoded") else str(body).encode()
    return data, env, headers.get("content-type", "")


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return "unknown signal"


class Capped:
    """The first ``cap`` bytes of a stream, and how many more there were."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.parts: list[bytes] = []
        self.kept = 0
        self.dropped = 0

    def add(self, data: bytes) -> None:
        room = self.cap - self.kept
        if room > 0:
            self.parts.append(data[:room])
            self.kept += min(room, len(data))
        self.dropped += max(0, len(data) - room)

    def text(self) -> str:
        return b"".join(self.parts).decode("utf-8", "replace")


def run(argv: list[str], cwd: str, env: dict[str, str], stdin: bytes, timeout: float, log_cap: int) -> tuple[int, bytes, Capped]:
    """Run one process to its end: (returncode, stdout, capped stderr). Feeds stdin while reading
    both outputs, so a function may stream any amount through without a pipe deadlock."""
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    out: list[bytes] = []
    err = Capped(log_cap)
    view = memoryview(stdin)
    sel = selectors.DefaultSelector()
    if view:
        os.set_blocking(proc.stdin.fileno(), False)
        sel.register(proc.stdin, selectors.EVENT_WRITE)
    else:
        proc.stdin.close()
    sel.register(proc.stdout, selectors.EVENT_READ, out.append)
    sel.register(proc.stderr, selectors.EVENT_READ, err.add)
    deadline = time.monotonic() + timeout
    try:
        while sel.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                proc.kill()
                break
            for key, _events in sel.select(remaining):
                if key.fileobj is proc.stdin:
                    try:
                        sent = os.write(proc.stdin.fileno(), view[:_CHUNK])
                    except BrokenPipeError:  # the function does not read its input: fine
                        sent = len(view)
                    view = view[sent:]
                    if not view:
                        sel.unregister(proc.stdin)
                        proc.stdin.close()
                    continue
                data = os.read(key.fd, _CHUNK)
                if data:
                    key.data(data)
                else:
                    sel.unregister(key.fileobj)
    finally:
        sel.close()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            stream.close()
    return proc.wait(), b"".join(out), err


class Runner(support.Runner):
    def __init__(self) -> None:
        super().__init__()
        self.function: dict[str, Any] | None = None
        self.executable = ""

    def load(self, meta: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if self.function is not None:
            return Kind.LOAD_ERROR, _error("ReloadRefused", "this instance already loaded a function")
        started = time.perf_counter()
        code_dir = str(meta.get("code_dir", ""))
        handler = str(meta.get("handler", ""))
        path = os.path.join(code_dir, handler)
        if not os.path.isfile(path):
            return Kind.LOAD_ERROR, _error("HandlerNotFound", f"no executable {handler!r} in the function's code")
        if not os.access(path, os.X_OK):
            return Kind.LOAD_ERROR, _error("HandlerNotExecutable", f"{handler!r} is not executable (chmod +x it before packaging)")
        os.environ.update(meta.get("env") or {})
        # The platform's names win over the function's env: they describe this very instance.
        os.environ.update(child.function_env(meta))
        os.chdir(code_dir)
        self.executable = path
        self.function = meta
        return Kind.LOADED, {"init_ms": (time.perf_counter() - started) * 1000, "logs": ""}

    def invoke(self, meta: dict[str, Any], body: bytes) -> tuple[int, dict[str, Any], bytes]:
        if self.function is None:
            return Kind.ERROR, _error("NotLoaded", "no function is loaded"), b""
        started = time.perf_counter()
        deadline = float(meta.get("deadline") or 0) / 1000
        env = dict(os.environ)
        env["EASYFAAS_REQUEST_ID"] = str(meta.get("rid", ""))
        env["EASYFAAS_DEADLINE_MS"] = str(int(deadline * 1000))
        event = child.decode_event(body)
        http = False
        content_type = ""
        if child.is_http_event(event):
            http = True
            stdin, http_env, content_type = http_request(event)
            env.update(http_env)
        else:
            stdin = body
        timeout = child.call_timeout(meta)
        try:
            code, out, err = run([self.executable], os.getcwd(), env, stdin, timeout, int(meta.get("log_cap", LOG_CAP)))
        except OSError as exc:
            return Kind.ERROR, _error("Runtime.ExecError", f"cannot run {self.function['handler']!r}: {exc}"), b""
        logs = err.text()
        reply = child.reply_meta(started, logs, err.dropped)
        if code != 0:
            lines = [line for line in logs.split("\n") if line.strip()]  # not splitlines(): U+2028 is no line end here
            if code < 0:
                message = f"{self.function['handler']} was killed by signal {-code} ({_signal_name(-code)})"
            else:
                message = f"{self.function['handler']} exited with status {code}"
            if lines:
                message += ": " + lines[-1]
            return Kind.ERROR, {**reply, "type": "Runtime.ExitError", "message": message, "stack": lines[-STACK_LINES:]}, b""
        if http:
            return Kind.RESULT, reply, support.dumps(self.http_response(out, content_type)).encode()
        if not child.is_json(out):
            reply["raw"] = True  # not JSON: the bytes as they are
            return Kind.RESULT, reply, out
        return Kind.RESULT, reply, out.strip()

    @staticmethod
    def http_response(out: bytes, request_type: str) -> dict[str, Any]:
        # The watchdog's rule: the function's `content_type` env var, else the request's type.
        content_type = os.environ.get("content_type") or request_type  # noqa: SIM112 - the watchdog spells it so
        try:
            text = out.decode("utf-8")
        except UnicodeDecodeError:
            content_type = content_type or "application/octet-stream"
            return {"statusCode": 200, "headers": {"Content-Type": content_type},
                    "body": base64.b64encode(out).decode(), "isBase64Encoded": True}  # fmt: skip
        return {"statusCode": 200, "headers": {"Content-Type": content_type or "text/plain; charset=utf-8"},
                "body": text, "isBase64Encoded": False}  # fmt: skip


def serve(socket_path: str) -> None:
    """Listen on ``socket_path`` and serve until SHUTDOWN."""
    support.serve(Runner(), socket_path)


if __name__ == "__main__":
    support.main(serve, "easyfaas_exec_runner.py")
