"""The lambda runtime: AWS Lambda custom runtimes, a ``bootstrap`` that speaks the Lambda Runtime API.

The runner (``_runner/easyfaas_lambda_runner.py``, stdlib Python) serves the Runtime API on
127.0.0.1, starts ``bootstrap`` once per instance and hands it one event per call.
"""

from __future__ import annotations

import os
from pathlib import Path

from easyfaas.errors import FunctionSpecError
from easyfaas.interfaces import ChildProcessRuntime

__all__ = ["LambdaRuntime"]

_RUNNER = Path(__file__).with_name("_runner") / "easyfaas_lambda_runner.py"


def check_bootstrap(code_dir: Path) -> Path:
    """``code_dir/bootstrap``, or ``FunctionSpecError`` saying what is wrong with it."""
    path = code_dir / "bootstrap"
    if not path.is_file():
        raise FunctionSpecError("a lambda runtime function needs an executable file named 'bootstrap' at the top of its code")
    if not path.resolve().is_relative_to(code_dir.resolve()):
        raise FunctionSpecError("'bootstrap' points outside the function's code")
    if not path.stat().st_mode & 0o111:
        raise FunctionSpecError("'bootstrap' is not executable: chmod +x it before deploying")
    with open(path, "rb") as f:
        head = f.read(256)
    if head.startswith(b"#!"):
        # The kernel reports a missing interpreter as "No such file" on the script itself: say it here.
        interpreter = head[2:].split(b"\n", 1)[0].strip().split(b" ", 1)[0].decode(errors="replace")
        if interpreter.startswith("/") and not os.access(interpreter, os.X_OK):
            raise FunctionSpecError(f"'bootstrap': its interpreter {interpreter} (#! line) is not installed")
    return path


class LambdaRuntime(ChildProcessRuntime):
    """Runs Lambda custom-runtime functions (``provided``): the code's ``bootstrap`` executable
    polls the Runtime API at ``$AWS_LAMBDA_RUNTIME_API``; the spec's ``handler`` becomes ``$_HANDLER``.

    Options: ``host_paths`` — host directories bootstraps need, shown read-only by isolating
    sandboxes (default: ``/bin``, ``/usr/bin``, ``/usr/local/bin``).
    """

    PLUGIN_NAME = "lambda"

    RUNNER = _RUNNER
    RUNNER_MODULE = "easyfaas_lambda_runner"

    def check_code(self, code_dir: Path, handler: str) -> None:
        check_bootstrap(code_dir)
