"""The namespace driver's own contract: options, cgroups, zygotes, exec'd runners, deep paths, old kernels.

What every driver does (create, warmup, destroy, events, stop, crash recovery) is checked by the
conformance suite in ``test_conformance.py``. Real sandboxes throughout; the white-box checks look
at cgroups and mounts from the host.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from easyfaas.errors import ConfigurationError, SandboxError
from easyfaas.models import WarmupSpec
from easyfaas.plugin import Registry
from easyfaas.testing.sandbox_conformance import HELLO, SandboxHarness
from easyfaas_runtime_python import PythonRuntime
from easyfaas_sandbox_namespace import NamespaceSandbox, _cgroups, _linux, plugin
from easyfaas_sandbox_namespace._hostfs import mounts_under


class ExecPythonRuntime(PythonRuntime):
    """The Python runtime without its zygote entry: the driver must exec ``runner_command``."""

    PLUGIN_NAME = "python-exec"

    def python_entry(self) -> None:  # type: ignore[override]
        return None


def _cgroup_dirs(pid: int) -> list[str]:
    """The memory/pids/cpu cgroup directories of ``pid``, as host paths."""
    with open("/proc/self/mountinfo") as f:
        hierarchies = _cgroups.find_hierarchies(f.read(), "")
    with open(f"/proc/{pid}/cgroup") as f:
        lines = [line.strip().split(":", 2) for line in f]
    dirs = []
    for _, controllers, path in lines:
        if not controllers and hierarchies.v2_mount and not hierarchies.v1_mounts:
            dirs.append(hierarchies.v2_mount + path)
        for controller in controllers.split(","):
            if controller in _cgroups.REQUIRED and controller in hierarchies.v1_mounts:
                dirs.append(hierarchies.v1_mounts[controller] + path)
    return dirs


def _limit(dirs: list[str], v1_name: str, v2_name: str) -> str:
    for d in dirs:
        for name in (v1_name, v2_name):
            if os.path.exists(os.path.join(d, name)):
                return Path(d, name).read_text().strip()
    raise AssertionError(f"no {v1_name} or {v2_name} in {dirs}")


# -- without namespaces ----------------------------------------------------------------------


def test_plugin_registers_the_driver() -> None:
    registry = Registry()
    plugin.easyfaas_register_sandboxes(registry)
    assert registry.classes["sandboxes"]["namespace"] is NamespaceSandbox
    assert NamespaceSandbox.ISOLATION


def test_options_are_validated(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="never run as root"):
        NamespaceSandbox(state_dir=tmp_path, uid=0)
    with pytest.raises(ConfigurationError, match="tmp_size_mb"):
        NamespaceSandbox(state_dir=tmp_path, tmp_size_mb=0)
    with pytest.raises(TypeError):
        NamespaceSandbox(state_dir=tmp_path, no_such_option=1)  # type: ignore[call-arg]


def test_availability_names_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    reason = NamespaceSandbox.availability()
    assert reason is not None and "root" in reason


def test_seccomp_program_is_whole_instructions() -> None:
    program = _linux.seccomp_program()
    if program is None:
        pytest.skip("architecture without known syscall numbers")
    assert len(program) % 8 == 0 and 10 < len(program) // 8 < 100


# -- with namespaces ---------------------------------------------------------------------------


@pytest.mark.namespace
async def test_available_here() -> None:
    assert NamespaceSandbox.availability() is None


@pytest.mark.namespace
async def test_cgroups_carry_the_limits(harness: SandboxHarness) -> None:
    driver = await harness.standard_driver()
    info = await driver.create(harness.runtime)
    cgroups = _cgroup_dirs(info.pid)
    assert cgroups and all(os.path.isdir(d) for d in cgroups)

    code = await driver.warmup(
        info.id, WarmupSpec("hello:7", harness.function(HELLO), 96, 5.0, pids_max=20, cpu_share=0.5)
    )
    assert code == "/code"
    assert _limit(cgroups, "memory.limit_in_bytes", "memory.max") == str(96 << 20)
    assert _limit(cgroups, "pids.max", "pids.max") == "20"
    assert _limit(cgroups, "cpu.cfs_quota_us", "cpu.max").split()[0] == "50000"

    await driver.destroy(info.id)
    assert not any(os.path.exists(d) for d in cgroups)
    assert [p for p in mounts_under(str(driver.state_dir)) if info.id in p] == []
    with pytest.raises(SandboxError, match="unknown sandbox"):
        await driver.stats(info.id)


@pytest.mark.namespace
async def test_runtime_without_python_entry_is_execed(harness: SandboxHarness) -> None:
    runtime = ExecPythonRuntime()
    driver = await harness.driver({"python": PythonRuntime(), "python-exec": runtime})
    identity = """
    import os, sys
    def handler(event, context):
        with open("/proc/self/status") as f:
            status = dict(line.rstrip("\\n").split(":\\t", 1) for line in f if ":\\t" in line)
        return {"uid": os.getuid(), "pid": os.getpid(), "argv": sys.argv, "caps": status["CapEff"], "nnp": status["NoNewPrivs"]}
    """
    instance = await harness.bind(driver, harness.function(identity), runtime=runtime)
    got = await instance.result()
    assert got == {
        "uid": 65534,
        "pid": 3,
        "argv": ["/runner/easyfaas_runner.py", "/run/easyfaas/runner.sock"],
        "caps": "0000000000000000",
        "nnp": "1",
    }
    await harness.assert_healthy(driver)


@pytest.mark.namespace
async def test_deep_state_dir(harness: SandboxHarness, tmp_path: Path) -> None:
    # As the funclet nests it (<data dir>/sandboxes/namespace): socket paths beyond sun_path's 107 bytes.
    deep = tmp_path / ("d" * 60) / "data" / "sandboxes" / "namespace"
    driver = await harness.driver(state_dir=deep)
    instance = await harness.bind(driver, harness.function(HELLO))
    assert len(instance.info.socket_path) > 107
    assert await instance.result("deep") == {"hello": "deep"}
    await harness.assert_healthy(driver)


@pytest.mark.namespace
async def test_zygote_crash_is_survived(
    harness: SandboxHarness, zygotes: Callable[[int], list[psutil.Process]]
) -> None:
    driver = await harness.standard_driver()
    before = await harness.bind(driver, harness.function(HELLO))
    # Sandboxes are forked from the zygote and share its command line; the zygote is our child.
    (zygote,) = zygotes(os.getpid())
    zygote.kill()
    zygote.wait(5)
    assert await before.result("still here") == {"hello": "still here"}
    await harness.assert_healthy(driver)  # a new zygote was started on demand


@pytest.mark.namespace
async def test_legacy_mount_path_binds_code_read_only(harness: SandboxHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_linux, "new_mount_api", lambda: False)  # as on Linux < 5.12
    driver = await harness.driver()
    source = """
    import errno, os
    def handler(event, context):
        try:
            open("/code/evil", "w")
            outcome = "written"
        except OSError as e:
            outcome = errno.errorcode[e.errno]
        with open("/proc/self/mountinfo") as f:
            flags = [line.split()[5] for line in f if line.split()[4] == "/code"]
        return {"write": outcome, "flags": flags, "files": os.listdir("/code")}
    """
    instance = await harness.bind(driver, harness.function(source))
    got = await instance.result()
    assert got["write"] == "EROFS"
    assert all("ro" in f.split(",") for f in got["flags"])
    assert got["files"] == ["handler.py"]
    assert os.listdir(driver.state_dir / "stage") == []
