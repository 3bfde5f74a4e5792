"""The NAME runner: serves the easyfaas runtime protocol inside a sandbox.

A minimal, complete runner: an "echo" whose handler returns the event. Replace
``Runner.load`` and ``Runner.invoke`` with your language's loading and calling; the loop
(LOAD, INVOKE, PING, SHUTDOWN, one call at a time, buffered frame reads) is core's
``easyfaas_runner_support`` (``easyfaas/runner_support.py``), which ``runner_files()``
places beside this file with ``easyfaas_wire``. Standard library only. Started as
``python -I -S -B runner.py SOCKET``. A runner in another language writes that loop itself:
see the checklist at the end of docs/runtime-protocol.md.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import easyfaas_runner_support as support  # found through the line above

Kind = support.Kind


class Runner(support.Runner):
    def __init__(self) -> None:
        super().__init__()
        self.function: dict[str, Any] | None = None

    def load(self, meta: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if self.function is not None:
            # An instance serves one function version for life; the engine never reuses it.
            return Kind.LOAD_ERROR, support.error("ReloadRefused", "this instance already loaded a function")
        started = time.perf_counter()
        code_dir = meta.get("code_dir", "")
        if not os.path.isdir(code_dir):
            return Kind.LOAD_ERROR, support.error("CodeNotFound", f"code directory {code_dir!r} does not exist")
        os.environ.update(meta.get("env") or {})
        self.function = meta
        return Kind.LOADED, {"init_ms": (time.perf_counter() - started) * 1000, "logs": ""}

    def invoke(self, meta: dict[str, Any], body: bytes) -> tuple[int, dict[str, Any], bytes]:
        if self.function is None:
            return Kind.ERROR, support.error("NotLoaded", "no function is loaded"), b""
        started = time.perf_counter()
        # The echo handler: the event is JSON already, so it is a valid JSON result as is.
        result = body or b"null"
        return Kind.RESULT, {"ms": (time.perf_counter() - started) * 1000}, result


def serve(socket_path: str) -> None:
    support.serve(Runner(), socket_path)


if __name__ == "__main__":
    support.main(serve, "runner.py")
