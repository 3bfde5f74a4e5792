"""Fixtures of the docker driver's tests: a running dockerd and the driver's sandbox conformance adapter.

Everything is real: dockerd (started here when root and none runs), containers, the Python runtime's
runner, unix sockets. Tests that need an engine skip, with the reason, only when none can be started.
The harness (started drivers, functions on disk, a wire client) is ``easyfaas.testing.sandbox_conformance``'s.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import psutil
import pytest

from easyfaas.interfaces import Runtime, SandboxDriver
from easyfaas.models import SandboxInfo
from easyfaas.testing.sandbox_conformance import SandboxAdapter, SandboxHarness
from easyfaas_runtime_python import PythonRuntime
from easyfaas_sandbox_docker import DockerSandbox, _mounts
from easyfaas_sandbox_docker.driver import LABEL_SANDBOX, LABEL_STATE

DOCKERD_WAIT = 60.0


def _start_dockerd(log_path: Path) -> tuple[subprocess.Popen[bytes] | None, str | None]:
    """Make sure an engine answers: (the dockerd we started or None, None) or (None, why there is none)."""
    reason = DockerSandbox.availability()
    if reason is None:
        return None, None
    if os.environ.get("DOCKER_HOST"):
        return None, f"{reason} (DOCKER_HOST is set, so no local dockerd is started)"
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        return None, f"{reason}; no dockerd binary to start (.ci/install-docker installs docker.io)"
    if os.geteuid() != 0:
        return None, f"{reason}; not root, so dockerd cannot be started here"
    with open(log_path, "wb") as log:
        # No iptables or bridge: every test container runs with network 'none'.
        proc = subprocess.Popen(
            [dockerd, "--iptables=false", "--bridge=none"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + DOCKERD_WAIT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-1500:]
            return None, f"dockerd exited with code {proc.returncode}: {tail}"
        if DockerSandbox.availability() is None:
            return proc, None
        time.sleep(0.2)
    _stop_dockerd(proc)
    return None, f"dockerd did not answer within {DOCKERD_WAIT:.0f}s (log: {log_path})"


def _stop_dockerd(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def docker_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A Docker engine that answers on the default URL; started (and stopped at the end) if needed."""
    proc, reason = _start_dockerd(tmp_path_factory.mktemp("dockerd") / "dockerd.log")
    if reason is not None:
        pytest.skip(f"no Docker engine: {reason}")
    yield
    if proc is not None:
        _stop_dockerd(proc)


def containers_of(state_dir: Path) -> list[dict[str, Any]]:
    """The containers dockerd holds for the driver on ``state_dir``, running or not."""
    api = docker.APIClient(version="auto")
    try:
        return list(api.containers(all=True, filters={"label": f"{LABEL_STATE}={state_dir}"}))
    finally:
        api.close()


class DockerAdapter(SandboxAdapter):
    """The docker driver for ``easyfaas.testing.sandbox_conformance``."""

    driver_class = DockerSandbox
    tmp_option = "tmp_size_mb"
    base_processes = 2  # docker-init and the runner

    def make_runtime(self) -> Runtime:
        return PythonRuntime()

    def sandbox_leftovers(self, driver: SandboxDriver, sandbox_id: str) -> list[str]:
        containers = [c for c in containers_of(driver.state_dir) if c["Labels"].get(LABEL_SANDBOX) == sandbox_id]
        mounts = [m for m in _mounts.mounts_under(str(driver.state_dir)) if sandbox_id in m]
        return [
            *super().sandbox_leftovers(driver, sandbox_id),
            *(f"container {c['Names'][0]}" for c in containers),
            *(f"mount {m}" for m in mounts),
        ]

    def leftovers(self, driver: SandboxDriver) -> list[str]:
        return [
            *(f"container {c['Names'][0]}" for c in containers_of(driver.state_dir)),
            *(f"mount {m}" for m in _mounts.mounts_under(str(driver.state_dir))),
        ]

    def host_processes(self) -> dict[str, int]:
        return {p.info["name"]: p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == "dockerd"}

    async def kept_output(self, driver: SandboxDriver, info: SandboxInfo) -> int:
        # What goes to fd 1/2 directly is in Docker's log, which must be capped on the host's disk.
        api = docker.APIClient(version="auto")
        try:
            attrs = await asyncio.to_thread(api.inspect_container, f"easyfaas-{info.id}")
        finally:
            api.close()
        return os.path.getsize(attrs["LogPath"])


@pytest.fixture
def docker_containers(docker_engine: None) -> Callable[[Path], list[dict[str, Any]]]:
    """``containers_of``: the containers dockerd holds for the driver on a state_dir."""
    return containers_of


@pytest.fixture
def sandbox_adapter(docker_engine: None) -> DockerAdapter:
    return DockerAdapter()


@pytest.fixture
async def harness(sandbox_adapter: DockerAdapter, tmp_path: Path) -> AsyncIterator[SandboxHarness]:
    """Drivers (stopped after the test), functions on disk, bound sandboxes: for the docker-only tests."""
    async with SandboxHarness.open(sandbox_adapter, tmp_path) as harness:
        yield harness
