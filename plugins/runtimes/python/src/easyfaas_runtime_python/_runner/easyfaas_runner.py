"""The Python runner: serves the runtime protocol inside a sandbox.

Standard library only, plus ``easyfaas_wire`` (core's ``easyfaas/wire.py``) placed beside
this file. Started as ``python -I -S easyfaas_runner.py SOCKET`` or, by a zygote that has
imported this module, as ``serve(SOCKET)``. A small blocking loop: one connection at a
time, one call at a time.
"""

from __future__ import annotations

import gc
import importlib
import io
import json
import os
import socket
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import easyfaas_wire as wire  # found through the line above

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing is not imported at run time: runners start faster without it
    from typing import Any

Kind = wire.Kind
LOG_CAP = 1024 * 1024

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


class CappedLog(io.TextIOBase):
    """A per-call stdout/stderr: keeps the first ``cap`` characters, counts the rest."""

    def __init__(self, shared: list[str], state: list[int], cap: int) -> None:
        self._parts = shared
        self._state = state  # [kept, dropped]
        self._cap = cap

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        room = self._cap - self._state[0]
        if room > 0:
            part = s[:room]
            self._parts.append(part)
            self._state[0] += len(part)
            self._state[1] += len(s) - len(part)
        else:
            self._state[1] += len(s)
        return len(s)

    def flush(self) -> None:
        pass


class Context:
    """The ``context`` argument of a handler; Lambda-compatible names included."""

    def __init__(self, function: dict[str, Any], request_id: str, deadline_ms: float) -> None:
        self.request_id = self.aws_request_id = request_id
        self.function_name = function.get("function", "")
        self.function_version = function.get("version", "$LATEST")
        self.memory_limit_in_mb = int(function.get("memory_mb", 128))
        self.invoked_function_arn = function.get("arn", "")
        self.log_group_name = "/easyfaas/" + self.function_name
        self.log_stream_name = function.get("instance", "")
        self.deadline_ms = deadline_ms
        self.identity = None
        self.client_context = None

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int(self.deadline_ms - time.time() * 1000))


def _error_meta(exc: BaseException, error_type: str | None = None) -> dict[str, Any]:
    tb = traceback.extract_tb(exc.__traceback__)
    return {
        "type": error_type or type(exc).__name__,
        "message": str(exc),
        "stack": [line.rstrip("\n") for line in traceback.format_list(tb)],
    }


class Runner:
    def __init__(self) -> None:
        self.handler = None
        self.function: dict[str, Any] = {}
        self.stop = False

    def load(self, meta: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if self.handler is not None:
            return Kind.LOAD_ERROR, {"type": "ReloadRefused", "message": "this instance already loaded a function", "stack": []}
        started = time.perf_counter()
        code_dir = meta["code_dir"]
        module_name, _, func_name = meta["handler"].rpartition(".")
        os.environ.update(meta.get("env") or {})
        parts: list[str] = []
        state = [0, 0]
        real = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = CappedLog(parts, state, LOG_CAP)
        try:
            os.chdir(code_dir)
            sys.path.insert(0, code_dir)
            module = importlib.import_module(module_name)
            handler = getattr(module, func_name, None)
            if handler is None:
                raise AttributeError(f"module {module_name!r} has no attribute {func_name!r}")
            if not callable(handler):
                raise TypeError(f"{meta['handler']} is not callable")
        except BaseException as exc:
            sys.stdout, sys.stderr = real
            err = _error_meta(exc, "HandlerNotFound" if isinstance(exc, AttributeError) else None)
            err["logs"] = "".join(parts)
            return Kind.LOAD_ERROR, err
        sys.stdout, sys.stderr = real
        self.handler = handler
        self.function = meta
        gc.collect()
        return Kind.LOADED, {"init_ms": (time.perf_counter() - started) * 1000, "logs": "".join(parts)}

    def invoke(self, meta: dict[str, Any], body: bytes) -> tuple[int, dict[str, Any], bytes]:
        if self.handler is None:
            return Kind.ERROR, {"type": "NotLoaded", "message": "no function is loaded", "stack": []}, b""
        context = Context(self.function, meta.get("rid", ""), meta.get("deadline", 0.0))
        parts: list[str] = []
        state = [0, 0]
        real = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = CappedLog(parts, state, int(meta.get("log_cap", LOG_CAP)))
        started = time.perf_counter()
        try:
            event = json.loads(body) if body else None
            result = self.handler(event, context)
            if isinstance(result, (bytes, bytearray, memoryview)):
                out, raw = bytes(result), True
            else:
                try:
                    out, raw = _dumps(result).encode(), False
                except (TypeError, ValueError) as exc:
                    sys.stdout, sys.stderr = real
                    err = _error_meta(exc, "Runtime.MarshalError")
                    err["logs"] = "".join(parts)
                    return Kind.ERROR, err, b""
        except BaseException as exc:
            sys.stdout, sys.stderr = real
            if isinstance(exc, SystemExit):
                # A handler calling sys.exit() ends its instance, as it would in Lambda.
                self.stop = True
            err = _error_meta(exc)
            err["logs"] = "".join(parts)
            err["truncated"] = state[1]
            return Kind.ERROR, err, b""
        sys.stdout, sys.stderr = real
        reply: dict[str, Any] = {"ms": (time.perf_counter() - started) * 1000}
        if raw:
            reply["raw"] = True
        if parts:
            reply["logs"] = "".join(parts)
        if state[1]:
            reply["truncated"] = state[1]
        return Kind.RESULT, reply, out

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


def listen(socket_path: str) -> socket.socket:
    try:
        os.unlink(socket_path)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(socket_path)
    sock.listen(16)
    return sock


def serve(socket_path: str, sock: socket.socket | None = None) -> None:
    """Listen on ``socket_path`` (unless a bound ``sock`` is given) and serve until SHUTDOWN."""
    server = sock if sock is not None else listen(socket_path)
    runner = Runner()
    while not runner.stop:
        conn, _ = server.accept()
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        try:
            runner.serve_connection(conn)
        except (EOFError, ConnectionError, wire.FrameError):
            pass
        finally:
            conn.close()
    server.close()


def main() -> None:
    if len(sys.argv) != 2:
        sys.stderr.write("usage: easyfaas_runner.py SOCKET\n")
        raise SystemExit(2)
    serve(sys.argv[1])


if __name__ == "__main__":
    main()
