"""Test helpers for easyfaas and its plugin authors: run a real engine from a profile.

``RunningEngine`` starts ``easyfaas up`` (supervisor, controller and funclet as real
processes) on a temporary data directory and free ports, and stops it with SIGTERM.
The pytest fixtures in ``easyfaas.testing.pytest_plugin`` wrap it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from easyfaas.client import EngineClient, load_function_dir

__all__ = ["RunningEngine", "free_port", "sandbox_params", "sandbox_unavailable", "write_function"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_function(directory: Path, source: str, *, handler: str = "handler.handler", **spec: Any) -> Path:
    """Write a one-file function (``handler.py`` by default) and its function.yaml; return the directory."""
    directory.mkdir(parents=True, exist_ok=True)
    module = handler.rpartition(".")[0]
    (directory / f"{module.replace('.', '/')}.py").write_text(source)
    (directory / "function.yaml").write_text(yaml.safe_dump({"handler": handler, **spec}))
    return directory


class RunningEngine:
    """A real engine in subprocesses. Use as a context manager, or ``start()``/``stop()``."""

    def __init__(self, data_dir: Path, *, sandbox: str = "process", pool: dict[str, int] | None = None,
                 controller: dict[str, Any] | None = None, extra: dict[str, Any] | None = None,
                 triggers: dict[str, Any] | None = None) -> None:  # fmt: skip
        self.data_dir = data_dir
        self.sandbox = sandbox
        self.api_port = free_port()
        self.http_port = free_port()
        profile: dict[str, Any] = {
            "node": {"name": "test", "data_dir": str(data_dir / "data")},
            "controller": {"api": f"127.0.0.1:{self.api_port}", **(controller or {})},
            "funclet": {"sandbox": sandbox, "pool": pool if pool is not None else {"python": 1}},
            "triggers": {"http": {"listen": f"127.0.0.1:{self.http_port}"}, **(triggers or {})},
        }
        profile.update(extra or {})
        self.profile_path = data_dir / "engine.yaml"
        data_dir.mkdir(parents=True, exist_ok=True)
        self.profile_path.write_text(yaml.safe_dump(profile))
        self.log_path = data_dir / "engine.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.endpoint = f"http://127.0.0.1:{self.api_port}"
        self.http_url = f"http://127.0.0.1:{self.http_port}"
        #: Environment for CLI subprocesses aimed at this engine: its endpoint, token and config dir.
        self.env = {**os.environ, "XDG_CONFIG_HOME": str(data_dir / "config"), "EASYFAAS_ENDPOINT": self.endpoint}
        self.token: str | None = None
        self.client = EngineClient(self.endpoint, token="")
        self.http = httpx.Client(base_url=self.http_url, timeout=60)

    def start(self, timeout: float = 60.0) -> RunningEngine:
        env = {**self.env, "EASYFAAS_LOG_LEVEL": os.environ.get("EASYFAAS_LOG_LEVEL", "INFO")}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "easyfaas.cli", "--endpoint", self.endpoint, "up", "--profile", str(self.profile_path)],
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"engine exited with {self.proc.returncode}:\n{self.log()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.endpoint}/v1/health", timeout=1).status_code == 200 and "easyfaas is up" in self.log():
                    token_file = self.data_dir / "data" / "token"
                    self.token = token_file.read_text().strip() if token_file.exists() else None
                    self.env["EASYFAAS_TOKEN"] = self.token or ""
                    self.client.close()
                    self.client = EngineClient(self.endpoint, token=self.token or "")
                    return self
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"engine did not come up in {timeout:.0f}s:\n{self.log()}")
            time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def deploy(self, directory: Path, name: str | None = None, **overrides: Any) -> dict[str, Any]:
        spec, archive = load_function_dir(directory, overrides)
        name = name or str(spec.get("name") or directory.name)
        return self.client.deploy(name, {**spec, "name": name}, archive)

    def call(self, name: str, path: str = "", **kwargs: Any) -> httpx.Response:
        """A request through the HTTP trigger (POST unless ``method`` is given)."""
        method = kwargs.pop("method", "POST")
        return self.http.request(method, f"/function/{name}{path}", **kwargs)

    def children(self) -> dict[str, int]:
        """pids of the supervisor's children by role (``funclet``, ``controller``)."""
        import psutil

        assert self.proc is not None
        found = {}
        for child in psutil.Process(self.proc.pid).children():
            try:
                cmd = " ".join(child.cmdline())
            except psutil.Error:  # a child that just died and is not reaped yet
                continue
            for role in ("funclet", "controller"):
                if f"easyfaas.{role}" in cmd:
                    found[role] = child.pid
        return found

    def kill(self) -> None:
        """SIGKILL the supervisor, controller and funclet at once, as a power cut would: no
        cleanup runs. (Killing only the supervisor's process group is not that: the children
        have sessions of their own and stop gracefully when their parent dies.)"""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)  # so that it restarts no child between the kills
        for pid in self.children().values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.client.close()
        self.http.close()

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM the supervisor and wait; returns its exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
                raise RuntimeError(f"engine did not stop within {timeout:.0f}s:\n{self.log()}") from None
        self.client.close()
        self.http.close()
        return self.proc.returncode

    def __enter__(self) -> RunningEngine:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def sandbox_unavailable(name: str) -> str | None:
    """Why the sandbox driver ``name`` cannot run here, or ``None`` if it can."""
    from easyfaas.plugin.manager import Plugins

    host = Plugins()
    try:
        host.load({"sandboxes": [name]})
    except Exception as exc:  # noqa: BLE001 - any failure to load is a reason to skip
        return f"the {name!r} sandbox plugin does not load: {exc}"
    reason: str | None = host.get("sandboxes", name).availability()
    return reason


def sandbox_params(*names: str) -> list[Any]:
    """``pytest.param`` per sandbox driver, each skipped with its reason where it cannot run."""
    import pytest

    params = []
    for name in names:
        reason = sandbox_unavailable(name)
        marks = [pytest.mark.skipif(True, reason=f"{name} sandbox unavailable: {reason}")] if reason else []
        params.append(pytest.param(name, id=name, marks=marks))
    return params
