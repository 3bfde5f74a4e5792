"""The http runtime: the function is an HTTP server on ``$PORT`` (of-watchdog http mode, Knative's contract).

The runner (``_runner/easyfaas_http_runner.py``, stdlib Python) starts the server once per
instance and turns every call into one HTTP request to it.
"""

from __future__ import annotations

import os
from pathlib import Path

from easyfaas.errors import FunctionSpecError
from easyfaas.interfaces import ChildProcessRuntime

__all__ = ["HttpRuntime"]

_RUNNER = Path(__file__).with_name("_runner") / "easyfaas_http_runner.py"


def check_executable(code_dir: Path, handler: str) -> Path:
    """The executable ``handler`` names inside ``code_dir``, or ``FunctionSpecError`` saying what is wrong."""
    path = code_dir / handler
    try:
        inside = path.resolve().is_relative_to(code_dir.resolve())
    except OSError:
        inside = False
    if not inside:
        raise FunctionSpecError(f"handler {handler!r} points outside the function's code")
    if not path.is_file():
        raise FunctionSpecError(f"handler {handler!r}: no such file in the code (it names the server's executable, e.g. server.py)")
    if not path.stat().st_mode & 0o111:
        raise FunctionSpecError(f"handler {handler!r} is not executable: chmod +x it before deploying")
    with open(path, "rb") as f:
        head = f.read(256)
    if head.startswith(b"#!"):
        # The kernel reports a missing interpreter as "No such file" on the script itself: say it here.
        interpreter = head[2:].split(b"\n", 1)[0].strip().split(b" ", 1)[0].decode(errors="replace")
        if interpreter.startswith("/") and not os.access(interpreter, os.X_OK):
            raise FunctionSpecError(f"handler {handler!r}: its interpreter {interpreter} (#! line) is not installed")
    return path


class HttpRuntime(ChildProcessRuntime):
    """Runs a long-lived HTTP server per instance and proxies each call to it.

    The spec's ``handler`` names the server's executable, relative to the code (``server.py``,
    ``bin/serve``); it must listen on ``127.0.0.1:$PORT``. Options: ``host_paths`` — host
    directories the server needs, shown read-only by isolating sandboxes (default: ``/bin``,
    ``/usr/bin``, ``/usr/local/bin``).
    """

    PLUGIN_NAME = "http"

    RUNNER = _RUNNER
    RUNNER_MODULE = "easyfaas_http_runner"

    def check_code(self, code_dir: Path, handler: str) -> None:
        check_executable(code_dir, handler)
