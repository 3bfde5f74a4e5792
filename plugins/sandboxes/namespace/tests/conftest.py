"""Fixtures of the namespace driver's tests: the driver's sandbox conformance adapter and its harness.

All real (root, namespaces, cgroups, the Python runner); ``namespace`` tests skip, with the reason, elsewhere.
The harness (started drivers, functions on disk, a wire client) is ``easyfaas.testing.sandbox_conformance``'s.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import cast

import psutil
import pytest

from easyfaas.interfaces import Runtime, SandboxDriver
from easyfaas.testing.sandbox_conformance import SandboxAdapter, SandboxHarness
from easyfaas_runtime_python import PythonRuntime
from easyfaas_sandbox_namespace import NamespaceSandbox, _cgroups
from easyfaas_sandbox_namespace._hostfs import mounts_under

UNAVAILABLE = NamespaceSandbox.availability()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if UNAVAILABLE is None:
        return
    skip = pytest.mark.skip(reason=f"namespace sandbox unavailable: {UNAVAILABLE}")
    here = Path(__file__).parent
    for item in items:
        if item.get_closest_marker("namespace") and here in Path(item.path).parents:
            item.add_marker(skip)


def _zygotes(parent: int) -> list[psutil.Process]:
    """The zygotes (``_zygote.py``) that ``parent`` started."""
    found = []
    for proc in psutil.process_iter(["cmdline", "ppid"]):
        if proc.info["ppid"] == parent and any("_zygote.py" in part for part in proc.info["cmdline"] or []):
            found.append(proc)
    return found


def _tree(driver: SandboxDriver) -> _cgroups.CgroupTree:
    """The driver's cgroups: its own if started, else where a start on its state_dir would put them."""
    ns = cast(NamespaceSandbox, driver)
    return ns._tree or _cgroups.open_tree(ns._cgroup_name, ns.cgroup_parent)


class NamespaceAdapter(SandboxAdapter):
    """The namespace driver for ``easyfaas.testing.sandbox_conformance``."""

    driver_class = NamespaceSandbox
    tmp_option = "tmp_size_mb"
    base_processes = 2  # the sandbox's init (pid 1) and the runner (pid 3)

    def make_runtime(self) -> Runtime:
        return PythonRuntime()

    def sandbox_leftovers(self, driver: SandboxDriver, sandbox_id: str) -> list[str]:
        return [
            *super().sandbox_leftovers(driver, sandbox_id),
            *(f"cgroup {d}" for d in _tree(driver).leaf_dirs(sandbox_id) if os.path.exists(d)),
            *(f"mount {m}" for m in mounts_under(str(driver.state_dir)) if sandbox_id in m),
        ]

    def leftovers(self, driver: SandboxDriver) -> list[str]:
        cgroups = [d for d in _tree(driver).dirs if os.path.exists(d)]
        return [
            *(f"cgroup {d}" for d in cgroups),
            *(f"cgroup {leaf.path}" for d in cgroups for leaf in sorted(os.scandir(d), key=str) if leaf.is_dir()),
            *(f"mount {m}" for m in mounts_under(str(driver.state_dir))),
            *("zygote process" for _ in _zygotes(os.getpid())),
        ]

    def crash(self, funclet: subprocess.Popen[str]) -> None:
        # A crash as bad as it gets: the zygote dies first, so nothing reaps the sandboxes.
        for zygote in _zygotes(funclet.pid):
            zygote.kill()
        funclet.kill()


@pytest.fixture
def zygotes() -> Callable[[int], list[psutil.Process]]:
    """``zygotes(parent)``: the zygotes that ``parent`` started."""
    return _zygotes


@pytest.fixture
def sandbox_adapter() -> NamespaceAdapter:
    return NamespaceAdapter()


@pytest.fixture
async def harness(sandbox_adapter: NamespaceAdapter, tmp_path: Path) -> AsyncIterator[SandboxHarness]:
    """Drivers (stopped after the test), functions on disk, bound sandboxes: for the namespace-only tests."""
    async with SandboxHarness.open(sandbox_adapter, tmp_path) as harness:
        yield harness
