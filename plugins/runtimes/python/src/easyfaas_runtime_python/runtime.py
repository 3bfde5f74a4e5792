"""The Python runtime: a stdlib-only runner started from a clean, isolated interpreter."""

from __future__ import annotations

import sys
import sysconfig
from pathlib import Path
from typing import Any

import easyfaas.runner_support
import easyfaas.wire
from easyfaas.errors import FunctionSpecError
from easyfaas.interfaces import Runtime
from easyfaas.models import HANDLER_RE

__all__ = ["PythonRuntime"]

_RUNNER = Path(__file__).with_name("_runner") / "easyfaas_runner.py"


class PythonRuntime(Runtime):
    """Runs ``def handler(event, context)`` functions on this engine's Python interpreter.

    Options: ``interpreter`` — path of the Python to run functions with (default: the
    engine's own). The runner starts with ``-I -S``: no site-packages, no environment
    variables, so a function imports only the standard library and its own code.
    """

    PLUGIN_NAME = "python"
    SERIAL = True  # the runner is runner_support's one-call-at-a-time loop

    def __init__(self, *, interpreter: str | None = None, **options: Any) -> None:
        super().__init__(**options)
        self.interpreter = interpreter or _real_executable()

    def runner_files(self) -> dict[str, Path]:
        return {
            "easyfaas_runner.py": _RUNNER,
            "easyfaas_runner_support.py": Path(easyfaas.runner_support.__file__),
            "easyfaas_wire.py": Path(easyfaas.wire.__file__),
        }

    def runner_command(self, runner_dir: str, socket_path: str) -> list[str]:
        return [self.interpreter, "-I", "-S", "-B", f"{runner_dir}/easyfaas_runner.py", socket_path]

    def host_paths(self) -> list[str]:
        paths = {sys.base_prefix, sysconfig.get_paths()["stdlib"], str(Path(self.interpreter).resolve().parent)}
        libdir = sysconfig.get_config_var("LIBDIR")
        if libdir:
            paths.add(str(libdir))
        return sorted(paths)

    def python_entry(self) -> tuple[str, str]:
        return ("easyfaas_runner", "serve")

    def check_code(self, code_dir: Path, handler: str) -> None:
        # FunctionSpec accepts any runtime's handler shape (file paths too): this one needs module.function.
        if not HANDLER_RE.match(handler):
            raise FunctionSpecError(f"handler {handler!r} must look like 'module.function' (dotted module path, then the function name)")
        module, _, _func = handler.rpartition(".")
        rel = Path(*module.split("."))
        if not ((code_dir / rel).with_suffix(".py").is_file() or (code_dir / rel / "__init__.py").is_file()):
            raise FunctionSpecError(
                f"handler {handler!r}: module {module!r} not found in the code "
                f"(expected {rel.with_suffix('.py')} or {rel / '__init__.py'})"
            )


def _real_executable() -> str:
    """The interpreter binary itself: a venv's python is a symlink we can run from anywhere."""
    return str(Path(sys.executable).resolve())
