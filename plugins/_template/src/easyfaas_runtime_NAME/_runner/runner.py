"""The NAME runner: serves the easyfaas runtime protocol inside a sandbox.

A minimal, complete runner: an "echo" whose handler returns the event. Keep the loop and
replace ``Runner.load`` and ``Runner.invoke`` with your language's loading and calling.
Standard library only, plus ``easyfaas_wire`` (core's ``easyfaas/wire.py``), which
``runner_files()`` places beside this file. Started as ``python -I -S -B runner.py SOCKET``.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import easyfaas_wire as wire  # found through the line above

Kind = wire.Kind


def _error(error_type: str, message: str) -> dict[str, Any]:
    return {"type": error_type, "message": message, "stack": [], "logs": ""}


class Runner:
    def __init__(self) -> None:
        self.function: dict[str, Any] | None = None
        self.stop = False

    def load(self, meta: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if self.function is not None:
            # An instance serves one function version for life; the engine never reuses it.
            return Kind.LOAD_ERROR, _error("ReloadRefused", "this instance already loaded a function")
        started = time.perf_counter()
        code_dir = meta.get("code_dir", "")
        if not os.path.isdir(code_dir):
            return Kind.LOAD_ERROR, _error("CodeNotFound", f"code directory {code_dir!r} does not exist")
        os.environ.update(meta.get("env") or {})
        self.function = meta
        return Kind.LOADED, {"init_ms": (time.perf_counter() - started) * 1000, "logs": ""}

    def invoke(self, meta: dict[str, Any], body: bytes) -> tuple[int, dict[str, Any], bytes]:
        if self.function is None:
            return Kind.ERROR, _error("NotLoaded", "no function is loaded"), b""
        started = time.perf_counter()
        # The echo handler: the event is JSON already, so it is a valid JSON result as is.
        result = body or b"null"
        return Kind.RESULT, {"ms": (time.perf_counter() - started) * 1000}, result

    def serve_connection(self, conn: socket.socket) -> None:
        while not self.stop:
            kind, rid, meta, body = wire.recv_frame(conn)
            if kind == Kind.INVOKE:
                out_kind, out_meta, out_body = self.invoke(meta, body)
                wire.send_frame(conn, out_kind, rid, out_meta, out_body)
            elif kind == Kind.LOAD:
                out_kind, out_meta = self.load(meta)
                wire.send_frame(conn, out_kind, rid, out_meta)
            elif kind == Kind.PING:
                wire.send_frame(conn, Kind.PONG, rid)
            elif kind == Kind.SHUTDOWN:
                self.stop = True
            else:
                raise wire.FrameError(f"unexpected message kind {kind}")


def serve(socket_path: str) -> None:
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
            # The peer left or broke the protocol: drop this connection, wait for the next
            # (the funclet's LOAD connection and the driver's readiness probe end this way).
            pass
        finally:
            conn.close()
    server.close()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.stderr.write("usage: runner.py SOCKET\n")
        raise SystemExit(2)
    serve(sys.argv[1])
