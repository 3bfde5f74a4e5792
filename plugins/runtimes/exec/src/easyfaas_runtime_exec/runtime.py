"""The exec runtime: any executable is a function, one process per call (OpenFaaS classic watchdog style).

The runner (``_runner/easyfaas_exec_runner.py``, stdlib Python) starts the executable for
each call with the request on stdin and returns what it prints on stdout.
"""

from __future__ import annotations

import os
from pathlib import Path

from easyfaas.errors import FunctionSpecError
from easyfaas.interfaces import ChildProcessRuntime

__all__ = ["ExecRuntime", "check_executable"]

_RUNNER = Path(__file__).with_name("_runner") / "easyfaas_exec_runner.py"


def check_executable(code_dir: Path, handler: str, what: str = "handler") -> Path:
    """The executable ``handler`` names inside ``code_dir``, or ``FunctionSpecError`` saying what is wrong."""
    path = code_dir / handler
    try:
        inside = path.resolve().is_relative_to(code_dir.resolve())
    except OSError:
        inside = False
    if not inside:
        raise FunctionSpecError(f"{what} {handler!r} points outside the function's code")
    if not path.is_file():
        raise FunctionSpecError(f"{what} {handler!r}: no such file in the code (it names the executable to run, e.g. handler.sh)")
    if not path.stat().st_mode & 0o111:
        raise FunctionSpecError(f"{what} {handler!r} is not executable: chmod +x it before deploying")
    with open(path, "rb") as f:
        head = f.read(256)
    if head.startswith(b"#!"):
        # The kernel reports a missing interpreter as "No such file" on the script itself: say it here.
        interpreter = head[2:].split(b"\n", 1)[0].strip().split(b" ", 1)[0].decode(errors="replace")
        if interpreter.startswith("/") and not os.access(interpreter, os.X_OK):
            raise FunctionSpecError(f"{what} {handler!r}: its interpreter {interpreter} (#! line) is not installed")
    return path




class ExecRuntime(ChildProcessRuntime):
    """Runs an executable per call: the request body on stdin, the response from stdout.

    The spec's ``handler`` names the executable, relative to the code (``handler.sh``,
    ``bin/run``). Options: ``host_paths`` — host directories the functions' programs need,
    shown read-only by isolating sandboxes (default: ``/bin``, ``/usr/bin``, ``/usr/local/bin``).
    """

    PLUGIN_NAME = "exec"
    STREAMING = True  # streaming: true functions get their HTTP bodies in chunks, of any size

    RUNNER = _RUNNER
    RUNNER_MODULE = "easyfaas_exec_runner"

    def check_code(self, code_dir: Path, handler: str) -> None:
        check_executable(code_dir, handler)
