"""The ``Runtime`` ABC: what a language runtime plugin tells the engine."""

from __future__ import annotations

import sys
import sysconfig
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

__all__ = ["ChildProcessRuntime", "Runtime"]


class Runtime(ABC):
    """A language runtime: how to start its runner, and which host files the runner needs.

    The runner is the process inside a sandbox that speaks the runtime protocol
    (``docs/runtime-protocol.md``). It starts *before* any function is known, listens on
    a unix socket, then loads one function on ``LOAD`` and serves ``INVOKE`` messages.

    Call order, in the funclet: ``runner_files()`` and ``host_paths()`` once at start,
    then ``runner_command()`` for every generic sandbox a driver creates.
    In the controller: ``check_code()`` at deploy time.

    Options from the profile (``runtimes: {python: {...}}``) arrive as keyword arguments.

    Example::

        class RubyRuntime(Runtime):
            PLUGIN_NAME = "ruby"
            def runner_files(self): return {"runner.rb": Path(__file__).with_name("runner.rb")}
            def runner_command(self, runner_dir, socket_path):
                return ["/usr/bin/ruby", f"{runner_dir}/runner.rb", socket_path]
            def host_paths(self): return ["/usr/lib/ruby"]
    """

    PLUGIN_NAME: ClassVar[str]
    #: True when the runner serves INVOKEs one at a time, in the order they were sent, and
    #: honours an INVOKE's ``timeout`` meta (its deadline counts from when the runner starts
    #: the call) — as every runner built on ``easyfaas.runner_support`` does. The controller
    #: may then send the next call to a busy instance before the current one is answered
    #: (prefetch, docs/runtime-protocol.md), saving the runner a wake-up per call.
    SERIAL: ClassVar[bool] = False
    #: True when the runner serves streamed calls (INVOKE_STREAM, docs/runtime-protocol.md):
    #: only then may a function of this runtime be deployed with ``streaming: true``.
    STREAMING: ClassVar[bool] = False

    def __init__(self, **options: Any) -> None:
        if options:
            raise TypeError(f"runtime {self.PLUGIN_NAME!r} takes no options, got {sorted(options)}")

    @abstractmethod
    def runner_files(self) -> dict[str, Path]:
        """Files that make up the runner, keyed by their name in the runner directory.

        A driver makes them visible, read-only, in one directory (``runner_dir``).
        """

    @abstractmethod
    def runner_command(self, runner_dir: str, socket_path: str) -> list[str]:
        """argv that starts the runner, with paths as the sandbox sees them.

        The runner must listen on ``socket_path`` and accept connections one at a time.
        """

    def host_paths(self) -> list[str]:
        """Host directories the runner needs read-only (interpreter, standard library)."""
        return []

    def python_entry(self) -> tuple[str, str] | None:
        """``(module, function)`` in the runner files that a *Python* zygote may import and
        call as ``function(socket_path)`` instead of exec'ing ``runner_command``.

        Only for runners written in Python with the standard library alone; ``None`` otherwise.
        """
        return None

    def check_code(self, code_dir: Path, handler: str) -> None:  # noqa: B027 - optional hook, no-op by default
        """Raise ``FunctionSpecError`` if ``code_dir`` cannot hold ``handler``. Called at deploy."""


class ChildProcessRuntime(Runtime):
    """A runtime whose stdlib Python runner starts the function as a child process (exec, http, lambda).

    Subclasses name their runner (``RUNNER``, a file beside core's shared runner modules) and
    its module (``RUNNER_MODULE``); this class supplies the runner files, the command, the
    zygote entry and the ``host_paths`` option: host directories the functions' programs need,
    shown read-only by isolating sandboxes (default ``/bin``, ``/usr/bin``, ``/usr/local/bin``).
    """

    RUNNER: ClassVar[Path]
    RUNNER_MODULE: ClassVar[str]
    SERIAL = True  # runner_support.Runner serves one call at a time
    DEFAULT_HOST_PATHS: ClassVar[tuple[str, ...]] = ("/bin", "/usr/bin", "/usr/local/bin")

    def __init__(self, *, host_paths: list[str] | None = None, **options: Any) -> None:
        super().__init__(**options)
        paths = list(self.DEFAULT_HOST_PATHS if host_paths is None else host_paths)
        bad = [p for p in paths if not isinstance(p, str) or not p.startswith("/")]
        if bad:
            raise ValueError(f"host_paths must be absolute paths, got {bad}")
        self.extra_paths = paths
        self.interpreter = str(Path(sys.executable).resolve())

    def runner_files(self) -> dict[str, Path]:
        import easyfaas.runner_child
        import easyfaas.runner_support
        import easyfaas.wire

        return {
            f"{self.RUNNER_MODULE}.py": self.RUNNER,
            "easyfaas_runner_support.py": Path(easyfaas.runner_support.__file__),
            "easyfaas_runner_child.py": Path(easyfaas.runner_child.__file__),
            "easyfaas_wire.py": Path(easyfaas.wire.__file__),
        }

    def runner_command(self, runner_dir: str, socket_path: str) -> list[str]:
        return [self.interpreter, "-I", "-S", "-B", f"{runner_dir}/{self.RUNNER_MODULE}.py", socket_path]

    def host_paths(self) -> list[str]:
        paths = {sys.base_prefix, sysconfig.get_paths()["stdlib"], str(Path(self.interpreter).parent), *self.extra_paths}
        libdir = sysconfig.get_config_var("LIBDIR")
        if libdir:
            paths.add(str(libdir))
        return sorted(paths)

    def python_entry(self) -> tuple[str, str]:
        return (self.RUNNER_MODULE, "serve")
