"""The exec runtime: any executable is a function, one process per call (OpenFaaS classic watchdog style).

The runner (``_runner/easyfaas_exec_runner.py``, stdlib Python) starts the executable for
each call with the request on stdin and returns what it prints on stdout.
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

__all__ = ["DEFAULT_HOST_PATHS", "ExecRuntime", "check_executable"]

_RUNNER = Path(__file__).with_name("_runner") / "easyfaas_exec_runner.py"
#: Programs functions commonly need (a shell, env, coreutils, interpreters): shown read-only by isolating drivers.
DEFAULT_HOST_PATHS = ("/bin", "/usr/bin", "/usr/local/bin")


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


def python_host_paths(interpreter: str) -> list[str]:
    """What a stdlib-only Python runner needs from the host: the interpreter and its standard library."""
    paths = {sys.base_prefix, sysconfig.get_paths()["stdlib"], str(Path(interpreter).parent)}
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir:
        paths.add(str(libdir))
    return sorted(paths)


class ExecRuntime(Runtime):
    """Runs an executable per call: the request body on stdin, the response from stdout.

    The spec's ``handler`` names the executable, relative to the code (``handler.sh``,
    ``bin/run``). Options: ``host_paths`` — host directories the functions' programs need,
    shown read-only by isolating sandboxes (default: ``/bin``, ``/usr/bin``, ``/usr/local/bin``).
    """

    PLUGIN_NAME = "exec"

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
            "easyfaas_exec_runner.py": _RUNNER,
            "easyfaas_runner_support.py": Path(easyfaas.runner_support.__file__),
            "easyfaas_runner_child.py": Path(easyfaas.runner_child.__file__),
            "easyfaas_wire.py": Path(easyfaas.wire.__file__),
        }

    def runner_command(self, runner_dir: str, socket_path: str) -> list[str]:
        return [self.interpreter, "-I", "-S", "-B", f"{runner_dir}/easyfaas_exec_runner.py", socket_path]

    def host_paths(self) -> list[str]:
        return sorted({*python_host_paths(self.interpreter), *self.extra_paths})

    def python_entry(self) -> tuple[str, str]:
        return ("easyfaas_exec_runner", "serve")

    def check_code(self, code_dir: Path, handler: str) -> None:
        check_executable(code_dir, handler)
