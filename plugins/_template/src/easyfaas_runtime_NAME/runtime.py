"""The NAME runtime: what the funclet needs to start its runner in a sandbox.

The template's runner is a stdlib-only Python "echo" (its handler returns the event);
replace it and ``runner_command`` with your language's runner. The protocol it must speak
is in ``docs/runtime-protocol.md`` of the easyfaas repository.
"""

from __future__ import annotations

import sys
import sysconfig
from pathlib import Path

import easyfaas.runner_support
import easyfaas.wire
from easyfaas.interfaces import Runtime

__all__ = ["NAMERuntime"]

_RUNNER = Path(__file__).with_name("_runner") / "runner.py"


class NAMERuntime(Runtime):
    """Runs NAME functions. Takes no options; add keyword-only ``__init__`` parameters to
    accept some from the profile (``runtimes: {NAME: {...}}``)."""

    PLUGIN_NAME = "NAME"  # must equal the entry point's name in pyproject.toml
    # The runner is runner_support's one-call-at-a-time loop: the controller may prefetch.
    # A runner that serves calls concurrently must leave this False (docs/runtime-protocol.md).
    SERIAL = True

    def runner_files(self) -> dict[str, Path]:
        # The runner imports these modules by file name: it runs without easyfaas installed.
        return {
            "runner.py": _RUNNER,
            "easyfaas_runner_support.py": Path(easyfaas.runner_support.__file__),
            "easyfaas_wire.py": Path(easyfaas.wire.__file__),
        }

    def runner_command(self, runner_dir: str, socket_path: str) -> list[str]:
        # -I -S: no site-packages and no PYTHON* variables, so functions see only the stdlib.
        return [_interpreter(), "-I", "-S", "-B", f"{runner_dir}/runner.py", socket_path]

    def host_paths(self) -> list[str]:
        # Isolating drivers (namespace) mount only these, read-only: the interpreter and stdlib.
        paths = {sys.base_prefix, sysconfig.get_paths()["stdlib"], str(Path(_interpreter()).parent)}
        libdir = sysconfig.get_config_var("LIBDIR")
        if libdir:
            paths.add(str(libdir))
        return sorted(paths)


def _interpreter() -> str:
    # Sandboxes mount the real binary's directory (host_paths), not a venv's symlink to it.
    return str(Path(sys.executable).resolve())
