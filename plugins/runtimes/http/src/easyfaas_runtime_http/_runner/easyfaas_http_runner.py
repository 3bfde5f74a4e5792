"""The http runner: starts the function's HTTP server on $PORT and proxies each call to it.

Standard library only, plus ``easyfaas_runner_support``, ``easyfaas_runner_child`` and
``easyfaas_wire`` placed beside this file. Started as
``python -I -S -B easyfaas_http_runner.py SOCKET`` or, by a zygote, as ``serve(SOCKET)``.
"""

from __future__ import annotations

import base64
import http.client
import os
import socket
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
#: Seconds the server gets to accept connections on $PORT; the function's env may change it.
READY_TIMEOUT = 30.0
READY_TIMEOUT_VAR = "EASYFAAS_READY_TIMEOUT"
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade", "content-length"}
)

_TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", None)  # Linux only

_error = support.error
#: The function's process, as the runner names it when it exits (and so ends the instance).
_SERVER = "easyfaas http runner: the function's server"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Runner(support.Runner):
    def __init__(self) -> None:
        super().__init__()
        self.function: dict[str, Any] | None = None
        self.loading = False
        self.proc: subprocess.Popen[bytes] | None = None
        self.output: child.OutputPump | None = None
        self.port = 0
        self.conn: http.client.HTTPConnection | None = None

    # -- LOAD: start the server, wait until it accepts connections ---------------------------

    def load(self, meta: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if self.function is not None or self.loading:
            return Kind.LOAD_ERROR, _error("ReloadRefused", "this instance already loaded a function")
        self.loading = True
        started = time.perf_counter()
        code_dir = str(meta.get("code_dir", ""))
        handler = str(meta.get("handler", ""))
        path = os.path.join(code_dir, handler)
        if not os.path.isfile(path) or not os.access(path, os.X_OK):
            self.loading = False
            return Kind.LOAD_ERROR, _error("HandlerNotFound", f"no executable {handler!r} in the function's code")
        os.environ.update(meta.get("env") or {})
        os.chdir(code_dir)
        # $PORT from the function's env wins (a server with a fixed port); else a free one.
        self.port = int(os.environ.get("PORT") or free_port())
        name, version = str(meta.get("function", "")), str(meta.get("version", "$LATEST"))
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")  # a Python server's prints reach its call's logs at once
        env.update({"PORT": str(self.port), "K_SERVICE": name, "K_CONFIGURATION": name, "K_REVISION": f"{name}-{version}"})
        env.update(child.function_env(meta))
        try:
            self.proc, self.output = child.spawn([path], code_dir, env)
        except OSError as exc:
            self.loading = False
            return Kind.LOAD_ERROR, _error("Runtime.ExecError", f"cannot start {handler!r}: {exc}")
        timeout = child.seconds_from_env(READY_TIMEOUT_VAR, READY_TIMEOUT)
        problem = self._wait_ready(handler, timeout)
        logs, _dropped = self.output.take(LOG_CAP)
        if problem is not None:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            return Kind.LOAD_ERROR, {**problem, "logs": logs}
        self.function = meta
        self.conn = http.client.HTTPConnection("127.0.0.1", self.port)
        child.watch(self.proc, _SERVER)
        return Kind.LOADED, {"init_ms": (time.perf_counter() - started) * 1000, "logs": logs}

    def _wait_ready(self, handler: str, timeout: float) -> dict[str, Any] | None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        delay = 0.002
        while True:
            code = self.proc.poll()
            if code is not None:
                return _error("Runtime.ExitError", f"{handler} exited with status {code} before listening on port {self.port}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return None
            except OSError:
                pass
            if time.monotonic() > deadline:
                return _error("Runtime.ReadyTimeout", f"{handler} did not accept connections on 127.0.0.1:{self.port} within {timeout:g}s")
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def _exit_if_server_died(self) -> None:
        """A request that failed because the server is dying ends the instance, not just the call:
        its connection closes a moment before its exit status is known, so give it that moment."""
        assert self.proc is not None
        try:
            code = self.proc.wait(1.0)
        except subprocess.TimeoutExpired:
            return
        child.exit_after(_SERVER, code)

    # -- INVOKE: one HTTP request per call ----------------------------------------------------

    def request_for(self, event: Any, body: bytes, meta: dict[str, Any]) -> tuple[str, str, dict[str, str], bytes]:
        """(method, target, headers, body) of the HTTP request one call becomes."""
        headers: dict[str, str] = {}
        if child.is_http_event(event):
            http = event["requestContext"]["http"]
            method = str(http.get("method") or "GET")
            target = str(event.get("rawPath") or "/")
            if not target.startswith("/"):
                target = "/" + target
            if event.get("rawQueryString"):
                target += "?" + str(event["rawQueryString"])
            for key, value in (event.get("headers") or {}).items():
                if str(key).lower() not in HOP_BY_HOP:
                    headers[str(key)] = str(value)
            if event.get("cookies"):
                headers["cookie"] = "; ".join(str(c) for c in event["cookies"])
            if http.get("sourceIp") and "x-forwarded-for" not in headers:
                headers["x-forwarded-for"] = str(http["sourceIp"])
            raw = event.get("body") or ""
            data = base64.b64decode(raw) if event.get("isBase64Encoded") else str(raw).encode()
        else:
            # Not an HTTP call (the management API, easyfaas invoke): the event is POSTed as JSON.
            method, target, data = "POST", "/", body
            headers["content-type"] = "application/json"
        headers["x-easyfaas-request-id"] = str(meta.get("rid", ""))
        headers["x-easyfaas-deadline-ms"] = str(int(float(meta.get("deadline") or 0)))
        return method, target, headers, data

    def send_request(self, method: str, target: str, headers: dict[str, str], data: bytes, timeout: float) -> tuple[int, str, list[tuple[str, str]], bytes]:
        assert self.conn is not None
        for attempt in (1, 2):
            reused = self.conn.sock is not None
            self.conn.timeout = timeout
            if self.conn.sock is not None:
                self.conn.sock.settimeout(timeout)
            try:
                self.conn.request(method, target, body=data, headers=headers)
                if self.conn.sock is not None and _TCP_QUICKACK is not None:
                    # ACK the response at once: a server that writes headers and body separately
                    # with Nagle on (Python's http.server) otherwise waits 40 ms for our delayed ACK.
                    self.conn.sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
                response = self.conn.getresponse()
                payload = response.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.conn.close()
                # A kept-alive connection the server closed between calls: the request never
                # reached it, so sending it again on a new connection runs it once.
                if reused and attempt == 1:
                    continue
                raise
            except BaseException:
                self.conn.close()
                raise
            if response.will_close:
                self.conn.close()
            return response.status, response.reason, response.getheaders(), payload
        raise AssertionError("unreachable")

    def invoke(self, meta: dict[str, Any], body: bytes) -> tuple[int, dict[str, Any], bytes]:
        if self.function is None or self.output is None:
            return Kind.ERROR, _error("NotLoaded", "no function is loaded"), b""
        started = time.perf_counter()
        event = child.decode_event(body)
        timeout = child.call_timeout(meta)
        method, target, headers, data = self.request_for(event, body, meta)
        failure: dict[str, Any] | None = None
        try:
            status, reason, response_headers, payload = self.send_request(method, target, headers, data, timeout)
        except Exception as exc:  # refused, reset, timed out, or a header http.client cannot encode
            self._exit_if_server_died()
            failure = _error("Runtime.HttpError", f"the function's server failed the request: {type(exc).__name__}: {exc}")
        reply = child.reply_meta(started, *self.output.take(int(meta.get("log_cap", LOG_CAP))))
        if failure is not None:
            return Kind.ERROR, {**failure, **reply}, b""
        if child.is_http_event(event):
            return Kind.RESULT, reply, support.dumps(shape_response(status, response_headers, payload)).encode()
        if status >= 400:
            text = payload[:4096].decode("utf-8", "replace")
            return Kind.ERROR, {**reply, "type": "Runtime.HttpError", "message": f"HTTP {status} {reason}: {text}", "stack": []}, b""
        if not child.is_json(payload):
            reply["raw"] = True  # not JSON: the bytes as they are
        return Kind.RESULT, reply, payload

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()


def shape_response(status: int, headers: list[tuple[str, str]], payload: bytes) -> dict[str, Any]:
    """A real HTTP response as the ``{statusCode, headers, body, isBase64Encoded, cookies}`` result."""
    merged: dict[str, tuple[str, str]] = {}
    cookies: list[str] = []
    for name, value in headers:
        lower = name.lower()
        if lower in HOP_BY_HOP:
            continue
        if lower == "set-cookie":
            cookies.append(value)
        elif lower in merged:
            merged[lower] = (merged[lower][0], f"{merged[lower][1]}, {value}")
        else:
            merged[lower] = (name, value)
    # statusCode first: the HTTP trigger recognises shaped results by their opening bytes.
    result: dict[str, Any] = {"statusCode": status, "headers": dict(merged.values())}
    try:
        result["body"], result["isBase64Encoded"] = payload.decode("utf-8"), False
    except UnicodeDecodeError:
        result["body"], result["isBase64Encoded"] = base64.b64encode(payload).decode(), True
    if cookies:
        result["cookies"] = cookies
    return result


def serve(socket_path: str) -> None:
    """Listen on ``socket_path`` and serve until SHUTDOWN."""
    support.serve(Runner(), socket_path)


if __name__ == "__main__":
    support.main(serve, "easyfaas_http_runner.py")
