"""The Python runner: serves the runtime protocol inside a sandbox.

Standard library only, plus ``easyfaas_runner_support`` and ``easyfaas_wire`` (core's
``easyfaas/runner_support.py`` and ``easyfaas/wire.py``) placed beside this file. Started as
``python -I -S easyfaas_runner.py SOCKET`` or, by a zygote that has imported this module, as
``serve(SOCKET)``. A small blocking loop: one connection at a time, one call at a time.
"""

from __future__ import annotations

import gc
import importlib
import io
import json
import os
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing is not imported at run time: runners start faster without it
    import socket
    from typing import Any

    from easyfaas import runner_support as support  # the same file, as the type checker finds it
else:
    import easyfaas_runner_support as support  # found through the sys.path line above

Kind = support.Kind
LOG_CAP = support.LOG_CAP

_dumps = support.dumps


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


class Runner(support.Runner):
    def __init__(self) -> None:
        super().__init__()
        self.handler = None
        self.function: dict[str, Any] = {}

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


def serve(socket_path: str, sock: socket.socket | None = None) -> None:
    """Listen on ``socket_path`` (unless a bound ``sock`` is given) and serve until SHUTDOWN."""
    support.serve(Runner(), socket_path, sock, sndbuf=1 << 20)


def main() -> None:
    support.main(serve, "easyfaas_runner.py")


if __name__ == "__main__":
    main()
