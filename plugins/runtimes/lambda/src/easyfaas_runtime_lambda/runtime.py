"""The lambda runtime: AWS Lambda custom runtimes, a ``bootstrap`` that speaks the Lambda Runtime API.

The runner (``_runner/easyfaas_lambda_runner.py``, stdlib Python) serves the Runtime API on
127.0.0.1, starts ``bootstrap`` once per instance and hands it one event per call.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path
from typing import Any

import easyfaas.runner_child
import easyfaas.runner_support
import easyfaas.wire
from easyfaas.errors import FunctionSpecError
from easyfaas.interfaces import Runtime

__all__ = ["DEFAULT_HOST_PATHS", "LambdaRuntime"]

_RUNNER = Path(__file__).with_name("_runner") / "easyfaas_lambda_runner.py"
#: What bootstraps commonly need (a shell, curl, interpreters): shown read-only by isolating drivers.
DEFAULT_HOST_PATHS = ("/bin", "/usr/bin", "/usr/local/bin")


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


class LambdaRuntime(Runtime):
    """Runs Lambda custom-runtime functions (``provided``): the code's ``bootstrap`` executable
    polls the Runtime API at ``$AWS_LAMBDA_RUNTIME_API``; the spec's ``handler`` becomes ``$_HANDLER``.

    Options: ``host_paths`` — host directories bootstraps need, shown read-only by isolating
    sandboxes (default: ``/bin``, ``/usr/bin``, ``/usr/local/bin``).
    """

    PLUGIN_NAME = "lambda"

    def __init__(self, *, host_paths: list[str] | None = None, **options: Any) -> None:
        super().__init__(**options)
        paths = list(DEFAULT_HOST_PATHS if host_paths is None else host_paths)
        bad = [p for p in paths if not isinstance(p, str) or not p.startswith("/")]
        if bad:
            raise ValueError(f"host_paths must be absolute paths, got {bad}")
        self.extra_paths = paths
        self.interpreter = str(Path(sys.executable).resolve())

    def runner_files(self) -> dict[str, Path]:
        return {
            "easyfaas_lambda_runner.py": _RUNNER,
            "easyfaas_runner_support.py": Path(easyfaas.runner_support.__file__),
            "easyfaas_runner_child.py": Path(easyfaas.runner_child.__file__),
            "easyfaas_wire.py": Path(easyfaas.wire.__file__),
        }

    def runner_command(self, runner_dir: str, socket_path: str) -> list[str]:
        return [self.interpreter, "-I", "-S", "-B", f"{runner_dir}/easyfaas_lambda_runner.py", socket_path]

    def host_paths(self) -> list[str]:
        paths = {sys.base_prefix, sysconfig.get_paths()["stdlib"], str(Path(self.interpreter).parent), *self.extra_paths}
        libdir = sysconfig.get_config_var("LIBDIR")
        if libdir:
            paths.add(str(libdir))
        return sorted(paths)

    def python_entry(self) -> tuple[str, str]:
        return ("easyfaas_lambda_runner", "serve")

    def check_code(self, code_dir: Path, handler: str) -> None:
        check_bootstrap(code_dir)
