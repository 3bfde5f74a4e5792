"""The Node.js runtime: a plain-Node runner (no npm packages) for Lambda-style handlers.

The runner is ``_runner/easyfaas_runner.cjs``; this module finds ``node`` and tells the funclet
how to start it and which host files it needs.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from easyfaas.errors import ConfigurationError, FunctionSpecError
from easyfaas.interfaces import Runtime

__all__ = ["MIN_NODE_MAJOR", "NodeRuntime", "find_node", "split_handler"]

_RUNNER = Path(__file__).with_name("_runner") / "easyfaas_runner.cjs"
#: AsyncLocalStorage (per-call log capture) is stable from Node.js 16.
MIN_NODE_MAJOR = 16
#: Where sandboxes look for programs: searched too when the engine's own PATH has no node.
_SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"
_MODULE_EXTENSIONS = (".js", ".mjs", ".cjs")
_INSTALL_HINT = (
    "install Node.js {min} or later (e.g. `apt-get install nodejs`, or a build from https://nodejs.org) "
    "or set its path in the engine profile: `runtimes: {{node: {{node: /path/to/node}}}}`"
)


def find_node(node: str | None = None) -> str:
    """The absolute path of the node binary to use, or ``ConfigurationError`` saying what to install."""
    hint = _INSTALL_HINT.format(min=MIN_NODE_MAJOR)
    if node:
        path = shutil.which(node) if os.sep not in node else node
        if not path or not os.access(path, os.X_OK) or os.path.isdir(path):
            raise ConfigurationError(f"node runtime: {node!r} (the `node` option) is not an executable file; {hint}")
        return os.path.abspath(path)
    search = os.pathsep.join(p for p in (os.environ.get("PATH", ""), _SANDBOX_PATH) if p)
    found = shutil.which("node", path=search)
    if not found:
        raise ConfigurationError(f"node runtime: Node.js is not installed (no `node` on PATH {search}); {hint}")
    return os.path.abspath(found)


def _node_major(node: str) -> int:
    try:
        out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30, check=True,
                             env={"PATH": _SANDBOX_PATH}).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError) as exc:
        raise ConfigurationError(f"node runtime: cannot run {node} --version: {exc}") from exc
    match = re.match(r"v(\d+)\.", out.strip())
    if not match:
        raise ConfigurationError(f"node runtime: {node} --version printed {out.strip()!r}, not a Node.js version")
    return int(match.group(1))


def split_handler(handler: str) -> tuple[str, list[str]]:
    """``"src/app.a.b"`` → (``"src/app"``, ``["a", "b"]``): split at the first dot of the last
    path segment, as Lambda's Node.js runtime does (the runner does the same)."""
    directory, _, base = handler.rpartition("/")
    module, dot, rest = base.partition(".")
    if not module or not dot or not rest or "" in rest.split("."):
        raise FunctionSpecError(
            f"handler {handler!r} must look like 'file.function' (e.g. index.handler, src/app.main): "
            "the file's name without extension, then the exported function"
        )
    return (f"{directory}/{module}" if directory else module), rest.split(".")


class NodeRuntime(Runtime):
    """Runs ``exports.handler = async (event, context) => …`` functions (and callback style).

    Options: ``node`` — the node binary (default: ``node`` found on PATH). The engine refuses
    to start when no Node.js 16+ is found, naming what to install.
    """

    PLUGIN_NAME = "node"

    def __init__(self, *, node: str | None = None, **options: Any) -> None:
        super().__init__(**options)
        self.node = find_node(node)
        self.major = _node_major(self.node)
        if self.major < MIN_NODE_MAJOR:
            raise ConfigurationError(
                f"node runtime: {self.node} is Node.js {self.major}, older than {MIN_NODE_MAJOR}; "
                + _INSTALL_HINT.format(min=MIN_NODE_MAJOR)
            )

    def runner_files(self) -> dict[str, Path]:
        return {"easyfaas_runner.cjs": _RUNNER}

    def runner_command(self, runner_dir: str, socket_path: str) -> list[str]:
        return [self.node, f"{runner_dir}/easyfaas_runner.cjs", socket_path]

    def host_paths(self) -> list[str]:
        real = Path(self.node).resolve()
        prefix = real.parent.parent
        # A self-contained install (/opt/node-v20/bin/node, ~/.nvm/…) keeps its lib/ and include/
        # beside bin/: show all of it. A distribution's /usr/bin/node needs only itself (its shared
        # libraries are in the system library directories every isolating driver shows).
        if real.parent.name == "bin" and str(prefix) not in ("/", "/usr", "/usr/local"):
            return [str(prefix)]
        return [str(real)]

    def check_code(self, code_dir: Path, handler: str) -> None:
        if not os.access(self.node, os.X_OK):
            raise ConfigurationError(
                f"node runtime: {self.node} is gone or not executable; " + _INSTALL_HINT.format(min=MIN_NODE_MAJOR)
            )
        module, _props = split_handler(handler)
        candidates = [f"{module}{ext}" for ext in _MODULE_EXTENSIONS]
        if not any((code_dir / c).is_file() for c in candidates):
            raise FunctionSpecError(f"handler {handler!r}: module {module!r} not found in the code (expected one of {', '.join(candidates)})")
