"""The ``Runtime`` ABC: what a language runtime plugin tells the engine."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

__all__ = ["Runtime"]


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
