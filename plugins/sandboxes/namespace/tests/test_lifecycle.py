"""The namespace driver's contract: create, warmup, destroy, events, stats, stop and crash recovery.

Real sandboxes throughout; the few white-box checks look at cgroups and mounts from the host.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from easyfaas.errors import ConfigurationError, SandboxError
from easyfaas.models import WarmupSpec
from easyfaas.plugin import Registry
from easyfaas_runtime_python import PythonRuntime
from easyfaas_sandbox_namespace import NamespaceSandbox, _cgroups, _linux, plugin
from easyfaas_sandbox_namespace._hostfs import mounts_under

FunctionFactory = Callable[[str], str]
Healthy = Callable[[NamespaceSandbox], Awaitable[None]]

HELLO = """
def handler(event, context):
    return {"hello": event}
"""


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


def _processes_mentioning(text: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if any(text in part for part in proc.info["cmdline"] or []):
            found.append(proc)
    return found


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
async def test_create_warmup_invoke_destroy(
    driver: NamespaceSandbox, make_function: FunctionFactory, bind: Any
) -> None:
    runtime = PythonRuntime()
    info = await driver.create(runtime)
    assert info.runtime == "python" and info.state == "generic"
    assert info.socket_path.startswith(str(driver.state_dir)) and os.path.exists(info.socket_path)
    runner = psutil.Process(info.pid)
    init = runner.parent()
    assert init is not None
    cgroups = _cgroup_dirs(info.pid)
    assert cgroups and all(os.path.isdir(d) for d in cgroups)
    stats = await driver.stats(info.id)
    assert stats.pids == 2 and stats.memory_uss > 0 and stats.memory_peak > 0

    code = await driver.warmup(
        info.id, WarmupSpec("hello:7", make_function(HELLO), 96, 5.0, pids_max=20, cpu_share=0.5)
    )
    assert code == "/code"
    assert _limit(cgroups, "memory.limit_in_bytes", "memory.max") == str(96 << 20)
    assert _limit(cgroups, "pids.max", "pids.max") == "20"
    assert _limit(cgroups, "cpu.cfs_quota_us", "cpu.max").split()[0] == "50000"
    with pytest.raises(SandboxError, match="already bound to hello:7"):
        await driver.warmup(info.id, WarmupSpec("other:1", make_function(HELLO), 96, 5.0))

    instance = await bind(driver, make_function(HELLO))
    assert await instance.result([1, 2]) == {"hello": [1, 2]}
    await instance.close()
    await driver.destroy(instance.id)
    await driver.destroy(instance.id)  # twice is fine

    await driver.destroy(info.id)
    assert not os.path.exists(info.socket_path)
    _, alive = psutil.wait_procs([runner, init], timeout=5)
    assert alive == []
    assert not any(os.path.exists(d) for d in cgroups)
    assert [p for p in mounts_under(str(driver.state_dir)) if info.id in p] == []
    with pytest.raises(SandboxError, match="unknown sandbox"):
        await driver.stats(info.id)
    await driver.destroy("no-such-sandbox")


@pytest.mark.namespace
async def test_warmup_refuses_bad_requests(
    driver: NamespaceSandbox, make_function: FunctionFactory, tmp_path: Path
) -> None:
    info = await driver.create(PythonRuntime())
    with pytest.raises(SandboxError, match="unknown sandbox"):
        await driver.warmup("nope", WarmupSpec("f:1", make_function(HELLO), 128, 5.0))
    with pytest.raises(SandboxError, match="No such file"):
        await driver.warmup(info.id, WarmupSpec("f:1", str(tmp_path / "missing"), 128, 5.0))
    private = make_function(HELLO)
    os.chmod(private, 0o700)
    with pytest.raises(SandboxError, match="not readable by the sandbox uid 65534"):
        await driver.warmup(info.id, WarmupSpec("f:1", private, 128, 5.0))
    # A refused warmup leaves the sandbox generic and usable.
    assert await driver.warmup(info.id, WarmupSpec("f:1", make_function(HELLO), 128, 5.0)) == "/code"


@pytest.mark.namespace
async def test_exits_are_reported_as_events(
    driver: NamespaceSandbox, make_function: FunctionFactory, bind: Any, next_event: Any
) -> None:
    quitter = await bind(
        driver, make_function("import os\ndef handler(event, context):\n    os._exit(7)\n"), key="quit:2"
    )
    with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):
        await quitter.invoke()
    event = await next_event(driver, quitter.id)
    assert (event.kind, event.exit_code, event.signal) == ("exited", 7, None)
    assert "quit:2" in event.message and "exited with code 7" in event.message

    victim = await bind(driver, make_function(HELLO), key="victim:1")
    os.kill(victim.info.pid, signal.SIGKILL)
    event = await next_event(driver, victim.id)
    assert (event.kind, event.signal) == ("exited", signal.SIGKILL)
    assert "killed by SIGKILL" in event.message

    # A destroyed sandbox is not an event.
    destroyed = await driver.create(PythonRuntime())
    await driver.destroy(destroyed.id)
    with pytest.raises(TimeoutError):
        await next_event(driver, destroyed.id, timeout=0.5)


@pytest.mark.namespace
async def test_runtime_without_python_entry_is_execed(
    driver_factory: Any, make_function: FunctionFactory, bind: Any, assert_healthy: Healthy
) -> None:
    runtime = ExecPythonRuntime()
    driver = await driver_factory({"python": PythonRuntime(), "python-exec": runtime})
    identity = """
    import os, sys
    def handler(event, context):
        with open("/proc/self/status") as f:
            status = dict(line.rstrip("\\n").split(":\\t", 1) for line in f if ":\\t" in line)
        return {"uid": os.getuid(), "pid": os.getpid(), "argv": sys.argv, "caps": status["CapEff"], "nnp": status["NoNewPrivs"]}
    """
    instance = await bind(driver, make_function(identity), runtime=runtime)
    got = await instance.result()
    assert got == {
        "uid": 65534,
        "pid": 3,
        "argv": ["/runner/easyfaas_runner.py", "/run/easyfaas/runner.sock"],
        "caps": "0000000000000000",
        "nnp": "1",
    }
    await assert_healthy(driver)


@pytest.mark.namespace
async def test_deep_state_dir(
    driver_factory: Any, make_function: FunctionFactory, bind: Any, tmp_path: Path, assert_healthy: Healthy
) -> None:
    # As the funclet nests it (<data dir>/sandboxes/namespace): socket paths beyond sun_path's 107 bytes.
    deep = tmp_path / ("d" * 60) / "data" / "sandboxes" / "namespace"
    driver = await driver_factory(state_dir=deep)
    instance = await bind(driver, make_function(HELLO))
    assert len(instance.info.socket_path) > 107
    assert await instance.result("deep") == {"hello": "deep"}
    await assert_healthy(driver)


@pytest.mark.namespace
async def test_concurrent_creates(driver: NamespaceSandbox, make_function: FunctionFactory, bind: Any) -> None:
    code = make_function(HELLO)
    instances = await asyncio.gather(*(bind(driver, code, key=f"f:{i}") for i in range(8)))
    assert len({i.id for i in instances}) == 8
    results = await asyncio.gather(*(i.result(n) for n, i in enumerate(instances)))
    assert results == [{"hello": n} for n in range(8)]
    for instance in instances:
        await instance.close()
    await asyncio.gather(*(driver.destroy(i.id) for i in instances))


@pytest.mark.namespace
async def test_zygote_crash_is_survived(
    driver: NamespaceSandbox, make_function: FunctionFactory, bind: Any, assert_healthy: Healthy
) -> None:
    before = await bind(driver, make_function(HELLO))
    # Sandboxes are forked from the zygote and share its command line; the zygote is our child.
    (zygote,) = [p for p in _processes_mentioning("_zygote.py") if p.ppid() == os.getpid()]
    zygote.kill()
    zygote.wait(5)
    assert await before.result("still here") == {"hello": "still here"}
    await assert_healthy(driver)  # a new zygote was started on demand


@pytest.mark.namespace
async def test_legacy_mount_path_binds_code_read_only(
    driver_factory: Any, make_function: FunctionFactory, bind: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_linux, "new_mount_api", lambda: False)  # as on Linux < 5.12
    driver = await driver_factory()
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
    instance = await bind(driver, make_function(source))
    got = await instance.result()
    assert got["write"] == "EROFS"
    assert all("ro" in f.split(",") for f in got["flags"])
    assert got["files"] == ["handler.py"]
    assert os.listdir(driver.state_dir / "stage") == []


@pytest.mark.namespace
async def test_stop_leaves_nothing_behind(state_dir: Path, make_function: FunctionFactory, bind: Any) -> None:
    driver = NamespaceSandbox(state_dir=state_dir)
    await driver.start({"python": PythonRuntime()})
    recorded = json.loads((state_dir / "driver.json").read_text())["cgroups"]
    instances = [await bind(driver, make_function(HELLO), key=f"f:{i}") for i in range(2)]
    generic = await driver.create(PythonRuntime())
    pids = [i.info.pid for i in instances] + [generic.pid]
    procs = [psutil.Process(p) for p in pids]
    procs += [p.parent() for p in procs if p.parent() is not None]  # type: ignore[misc]
    procs += [p for p in _processes_mentioning("_zygote.py") if p.ppid() == os.getpid()]
    for instance in instances:
        await instance.close()
    await driver.stop()
    _, alive = psutil.wait_procs(procs, timeout=5)
    assert alive == []
    assert [p for p in _processes_mentioning("_zygote.py") if p.ppid() == os.getpid()] == []
    assert mounts_under(str(state_dir)) == []
    assert recorded and not any(os.path.exists(d) for d in recorded)
    assert os.listdir(state_dir) == []


@pytest.mark.namespace
@pytest.mark.slow
async def test_leftovers_of_a_crashed_run_are_cleaned(
    state_dir: Path, make_function: FunctionFactory, driver_factory: Any, assert_healthy: Healthy, tmp_path: Path
) -> None:
    script = tmp_path / "crashing_funclet.py"
    script.write_text(
        textwrap.dedent(
            """
            import asyncio, json, sys
            from pathlib import Path
            from easyfaas.models import WarmupSpec
            from easyfaas_runtime_python import PythonRuntime
            from easyfaas_sandbox_namespace import NamespaceSandbox

            async def main():
                driver = NamespaceSandbox(state_dir=Path(sys.argv[1]))
                runtime = PythonRuntime()
                await driver.start({"python": runtime})
                bound, generic = await driver.create(runtime), await driver.create(runtime)
                await driver.warmup(bound.id, WarmupSpec("f:1", sys.argv[2], 128, 10))
                print(json.dumps({"ids": [bound.id, generic.id], "pids": [bound.pid, generic.pid]}), flush=True)
                await asyncio.sleep(3600)

            asyncio.run(main())
            """
        )
    )
    proc = subprocess.Popen(
        [sys.executable, str(script), str(state_dir), make_function(HELLO)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 60)
        crashed = json.loads(line)
        runners = [psutil.Process(p) for p in crashed["pids"]]
        leftovers = runners + [r.parent() for r in runners]  # type: ignore[list-item]
        cgroups = [d for p in crashed["pids"] for d in _cgroup_dirs(p)]
        # A crash as bad as it gets: the zygote dies first, so nothing reaps the sandboxes.
        for zygote in _processes_mentioning("_zygote.py"):
            if zygote.ppid() == proc.pid:
                zygote.kill()
        proc.kill()
    finally:
        proc.wait(10)
    assert all(p.is_running() for p in leftovers)
    assert any(crashed["ids"][0] in m for m in mounts_under(str(state_dir)))  # the bound code is still mounted

    driver = await driver_factory(state_dir=state_dir)
    _, alive = psutil.wait_procs(leftovers, timeout=5)
    assert alive == []
    assert not any(os.path.exists(d) for d in cgroups)
    assert mounts_under(str(state_dir)) == [str(state_dir / "mnt")]  # only the new run's anchor
    assert os.listdir(state_dir / "sock") == [] and os.listdir(state_dir / "mnt") == []
    await assert_healthy(driver)
