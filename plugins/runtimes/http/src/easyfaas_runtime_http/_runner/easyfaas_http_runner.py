"""The http runner: starts the function's HTTP server on $PORT and proxies each call to it.

Standard library only, plus ``easyfaas_wire`` placed beside this file. Started as
``python -I -S -B easyfaas_http_runner.py SOCKET`` or, by a zygote, as ``serve(SOCKET)``.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import select
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import easyfaas_wire as wire  # found through the line above

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing is not imported at run time: runners start faster without it
    from typing import Any, TypeGuard

Kind = wire.Kind
LOG_CAP = 1024 * 1024
#: Seconds the server gets to accept connections on $PORT; the function's env may change it.
READY_TIMEOUT = 30.0
READY_TIMEOUT_VAR = "EASYFAAS_READY_TIMEOUT"
#: Output kept between calls (shown with the next call) before the oldest is dropped.
PENDING_CAP = 4 * 1024 * 1024
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade", "content-length"}
)

_TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", None)  # Linux only

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _error(error_type: str, message: str, stack: list[str] | None = None, logs: str = "") -> dict[str, Any]:
    return {"type": error_type, "message": message, "stack": stack or [], "logs": logs}


def is_http_event(event: object) -> TypeGuard[dict[str, Any]]:
    """A payload-2.0 event, as the HTTP trigger builds them (Lambda function URLs)."""
    if not isinstance(event, dict) or event.get("version") != "2.0":
        return False
    context = event.get("requestContext")
    return isinstance(context, dict) and isinstance(context.get("http"), dict)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class OutputPump:
    """The server's stdout+stderr, read by a thread so the server never blocks on a full pipe.

    Reads happen only under the lock, so ``take()`` after a response sees everything the
    server wrote before answering: nothing sits in a read the lock does not cover.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        os.set_blocking(fd, False)
        self.lock = threading.Lock()
        self.parts: list[bytes] = []
        self.size = 0
        self.dropped = 0
        self.eof = False
        threading.Thread(target=self._pump, name="output", daemon=True).start()

    def _read_available(self) -> None:
        while not self.eof:
            try:
                data = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self.eof = True
                return
            self.parts.append(data)
            self.size += len(data)
            while self.size > PENDING_CAP and len(self.parts) > 1:
                old = self.parts.pop(0)
                self.size -= len(old)
                self.dropped += len(old)

    def _pump(self) -> None:
        while not self.eof:
            select.select([self.fd], [], [])
            with self.lock:
                self._read_available()

    def take(self, cap: int) -> tuple[str, int]:
        """What arrived since the last take: (text, characters dropped), at most ``cap`` characters kept."""
        with self.lock:
            self._read_available()
            data, dropped = b"".join(self.parts), self.dropped
            self.parts, self.size, self.dropped = [], 0, 0
        text = data.decode("utf-8", "replace")
        if len(text) > cap:
            dropped += len(text) - cap
            text = text[:cap]
        return text, dropped


class Runner:
    def __init__(self) -> None:
        self.function: dict[str, Any] | None = None
        self.loading = False
        self.proc: subprocess.Popen[bytes] | None = None
        self.output: OutputPump | None = None
        self.port = 0
        self.conn: http.client.HTTPConnection | None = None
        self.stop = False

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
        env.update({
            "PORT": str(self.port), "K_SERVICE": name, "K_CONFIGURATION": name, "K_REVISION": f"{name}-{version}",
            "EASYFAAS_FUNCTION_NAME": name, "EASYFAAS_FUNCTION_VERSION": version,
            "EASYFAAS_MEMORY_MB": str(meta.get("memory_mb", 128)), "EASYFAAS_FUNCTION_ARN": str(meta.get("arn", "")),
            "EASYFAAS_INSTANCE": str(meta.get("instance", "")),
        })  # fmt: skip
        read_fd, write_fd = os.pipe()
        try:
            self.proc = subprocess.Popen([path], cwd=code_dir, env=env, stdin=subprocess.DEVNULL, stdout=write_fd, stderr=write_fd)
        except OSError as exc:
            self.loading = False
            return Kind.LOAD_ERROR, _error("Runtime.ExecError", f"cannot start {handler!r}: {exc}")
        finally:
            os.close(write_fd)
        self.output = OutputPump(read_fd)
        try:
            timeout = float(os.environ.get(READY_TIMEOUT_VAR) or READY_TIMEOUT)
        except ValueError:
            timeout = READY_TIMEOUT
        problem = self._wait_ready(handler, timeout)
        logs, _dropped = self.output.take(LOG_CAP)
        if problem is not None:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            return Kind.LOAD_ERROR, {**problem, "logs": logs}
        self.function = meta
        self.conn = http.client.HTTPConnection("127.0.0.1", self.port)
        threading.Thread(target=self._watch, name="watch", daemon=True).start()
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

    def _watch(self) -> None:
        """The server is the function: when it ends, so does the instance."""
        assert self.proc is not None
        self._exit_with_server(self.proc.wait())

    def _exit_with_server(self, code: int) -> None:
        sys.stderr.write(f"easyfaas http runner: the function's server exited with status {code}\n")
        sys.stderr.flush()
        os._exit(code if 0 < code < 256 else 1)

    def _exit_if_server_died(self) -> None:
        """A request that failed because the server is dying ends the instance, not just the call:
        its connection closes a moment before its exit status is known, so give it that moment."""
        assert self.proc is not None
        try:
            code = self.proc.wait(1.0)
        except subprocess.TimeoutExpired:
            return
        self._exit_with_server(code)

    # -- INVOKE: one HTTP request per call ----------------------------------------------------

    def request_for(self, event: Any, body: bytes, meta: dict[str, Any]) -> tuple[str, str, dict[str, str], bytes]:
        """(method, target, headers, body) of the HTTP request one call becomes."""
        headers: dict[str, str] = {}
        if is_http_event(event):
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
        try:
            event = json.loads(body) if body else None
        except ValueError:
            event = None
        deadline = float(meta.get("deadline") or 0) / 1000
        timeout = max(1.0, deadline - time.time() + 1.0) if deadline else 900.0
        method, target, headers, data = self.request_for(event, body, meta)
        failure: dict[str, Any] | None = None
        try:
            status, reason, response_headers, payload = self.send_request(method, target, headers, data, timeout)
        except Exception as exc:  # refused, reset, timed out, or a header http.client cannot encode
            self._exit_if_server_died()
            failure = _error("Runtime.HttpError", f"the function's server failed the request: {type(exc).__name__}: {exc}")
        logs, dropped = self.output.take(int(meta.get("log_cap", LOG_CAP)))
        reply: dict[str, Any] = {"ms": (time.perf_counter() - started) * 1000}
        if logs:
            reply["logs"] = logs
        if dropped:
            reply["truncated"] = dropped
        if failure is not None:
            return Kind.ERROR, {**failure, **reply}, b""
        if is_http_event(event):
            return Kind.RESULT, reply, _dumps(shape_response(status, response_headers, payload)).encode()
        if status >= 400:
            text = payload[:4096].decode("utf-8", "replace")
            return Kind.ERROR, {**reply, "type": "Runtime.HttpError", "message": f"HTTP {status} {reason}: {text}", "stack": []}, b""
        try:
            json.loads(payload)
        except ValueError:
            reply["raw"] = True  # not JSON: the bytes as they are
        return Kind.RESULT, reply, payload

    def serve_connection(self, conn: socket.socket) -> None:
        recv, encode = wire.recv_frame, wire.encode
        while not self.stop:
            kind, rid, meta, body = recv(conn)
            if kind == Kind.INVOKE:
                out_kind, out_meta, out_body = self.invoke(meta, body)
                conn.sendall(encode(out_kind, rid, out_meta, out_body))
            elif kind == Kind.LOAD:
                out_kind, out_meta = self.load(meta)
                conn.sendall(encode(out_kind, rid, out_meta))
            elif kind == Kind.PING:
                conn.sendall(encode(Kind.PONG, rid))
            elif kind == Kind.SHUTDOWN:
                self.stop = True
            else:
                raise wire.FrameError(f"unexpected message kind {kind}")


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
    try:
        os.unlink(socket_path)
    except FileNotFoundError:
        pass
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(socket_path)
    server.listen(16)
    runner = Runner()
    while not runner.stop:
        conn, _ = server.accept()
        try:
            runner.serve_connection(conn)
        except (EOFError, ConnectionError, wire.FrameError):
            pass  # the peer left or broke the protocol: wait for the next connection
        finally:
            conn.close()
    server.close()
    if runner.proc is not None and runner.proc.poll() is None:
        runner.proc.kill()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.stderr.write("usage: easyfaas_http_runner.py SOCKET\n")
        raise SystemExit(2)
    serve(sys.argv[1])
