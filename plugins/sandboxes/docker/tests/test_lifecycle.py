"""The docker driver's contract: create, warmup, destroy, events, stats, stop, crash recovery and clear errors.

Real containers throughout; the white-box checks read the containers' configuration back from dockerd.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import docker
import psutil
import pytest

from easyfaas.errors import ConfigurationError, SandboxError
from easyfaas.models import WarmupSpec
from easyfaas.plugin import Registry
from easyfaas_runtime_python import PythonRuntime
from easyfaas_sandbox_docker import DockerSandbox, _image, _mounts, plugin
from easyfaas_sandbox_docker.driver import LABEL_STATE

FunctionFactory = Callable[[str], str]
Healthy = Callable[[DockerSandbox], Awaitable[None]]

HELLO = """
def handler(event, context):
    return {"hello": event}
"""


def _api() -> Any:
    return docker.APIClient(version="auto")


def _containers_of(state_dir: Path) -> list[dict[str, Any]]:
    api = _api()
    try:
        return list(api.containers(all=True, filters={"label": f"{LABEL_STATE}={state_dir}"}))
    finally:
        api.close()


# -- without an engine ------------------------------------------------------------------------


def test_plugin_registers_the_driver() -> None:
    registry = Registry()
    plugin.easyfaas_register_sandboxes(registry)
    assert registry.classes["sandboxes"]["docker"] is DockerSandbox
    assert DockerSandbox.ISOLATION


def test_importing_the_plugin_does_not_import_the_docker_sdk() -> None:
    code = "import sys, easyfaas_sandbox_docker.plugin; print('docker' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_options_are_validated(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="no egress option yet"):
        DockerSandbox(state_dir=tmp_path, network="bridge")
    with pytest.raises(ConfigurationError, match="never run as root"):
        DockerSandbox(state_dir=tmp_path, uid=0)
    with pytest.raises(ConfigurationError, match="tmp_size_mb"):
        DockerSandbox(state_dir=tmp_path, tmp_size_mb=0)
    with pytest.raises(ConfigurationError, match="not absolute"):
        DockerSandbox(state_dir=tmp_path, extra_ro_paths=["relative/path"])
    with pytest.raises(TypeError):
        DockerSandbox(state_dir=tmp_path, no_such_option=1)  # type: ignore[call-arg]


async def test_an_unreachable_engine_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)  # the engine is checked right after root
    url = f"unix://{tmp_path}/no-docker.sock"
    driver = DockerSandbox(state_dir=tmp_path / "state", url=url)
    with pytest.raises(ConfigurationError) as info:
        await driver.start({"python": PythonRuntime()})
    assert f"cannot reach the Docker engine at {url}: start dockerd or set funclet.sandbox.docker.url" in str(
        info.value
    )
    await driver.stop()


def test_availability_names_the_engine_it_cannot_reach(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/nothing.sock")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    reason = DockerSandbox.availability()
    assert reason is not None
    assert reason.startswith(f"cannot reach the Docker engine at unix://{tmp_path}/nothing.sock")


def test_availability_and_start_need_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    reason = DockerSandbox.availability()
    assert reason is not None and reason.startswith("needs root")
    with pytest.raises(ConfigurationError, match="needs root"):
        asyncio.run(DockerSandbox(state_dir=tmp_path).start({"python": PythonRuntime()}))


def test_skeleton_mirrors_the_host_layout(tmp_path: Path) -> None:
    root = tmp_path / "host"
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "lib64").mkdir()  # a real directory: bound from the host
    (root / "bin").symlink_to("usr/bin")  # merged /usr: the same symlink in the image
    (root / "sbin").symlink_to("usr/sbin")  # but /sbin stays a directory, for docker-init
    skeleton = _image.host_skeleton(65534, 65534, root=str(root))
    assert skeleton.system_dirs == ("/usr", "/lib64")
    with tarfile.open(fileobj=io.BytesIO(skeleton.tar)) as tar:
        members = {m.name: m for m in tar.getmembers()}
        passwd = tar.extractfile("etc/passwd")
        assert passwd is not None and b"sandbox:x:65534:65534" in passwd.read()
    assert members["bin"].issym() and members["bin"].linkname == "usr/bin"
    assert members["sbin"].isdir() and members["lib64"].isdir() and members["code"].isdir()
    assert members["tmp"].mode == 0o1777
    assert all(m.uid == 0 and m.mtime == 0 for m in members.values())
    assert _image.host_skeleton(65534, 65534, root=str(root)).digest == skeleton.digest  # reproducible


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")
def test_mountinfo_escapes_are_read(tmp_path: Path) -> None:
    odd = tmp_path / "with space"
    odd.mkdir()
    _mounts.make_private_anchor(str(odd))
    try:
        assert _mounts.mounts_under(str(odd)) == [str(odd)]
        with pytest.raises(OSError, match="still mounted"):
            _mounts.remove_tree(str(odd))
    finally:
        assert _mounts.unmount_under(str(odd)) == []
    _mounts.remove_tree(str(odd))
    assert not odd.exists()


# -- with an engine -----------------------------------------------------------------------------


async def test_available_here(docker_engine: None) -> None:
    assert DockerSandbox.availability() is None


async def test_create_warmup_invoke_destroy(driver: DockerSandbox, make_function: FunctionFactory, bind: Any) -> None:
    runtime = PythonRuntime()
    info = await driver.create(runtime)
    assert info.runtime == "python" and info.state == "generic"
    assert info.socket_path.startswith(str(driver.state_dir)) and os.path.exists(info.socket_path)
    runner = psutil.Process(info.pid)
    assert runner.uids().effective == 65534
    init = runner.parent()
    assert init is not None
    api = _api()
    attrs = api.inspect_container(f"easyfaas-{info.id}")
    host = attrs["HostConfig"]
    assert attrs["Config"]["User"] == "65534:65534"
    assert attrs["Config"]["Labels"][LABEL_STATE] == str(driver.state_dir)
    assert host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"] and host["SecurityOpt"] == ["no-new-privileges"]
    assert host["NetworkMode"] == "none" and host["IpcMode"] == "none"
    assert "size=8m" in host["Tmpfs"]["/tmp"]
    assert (host["Memory"], host["MemorySwap"], host["PidsLimit"]) == (128 << 20, 128 << 20, 64)
    assert host["Init"] is True
    assert not any(env.startswith("PYTEST") for env in attrs["Config"]["Env"])
    stats = await driver.stats(info.id)
    assert stats.pids == 2 and stats.memory_uss > 0 and stats.memory_peak > 0 and stats.cpu_seconds > 0

    code = await driver.warmup(
        info.id, WarmupSpec("hello:7", make_function(HELLO), 96, 5.0, pids_max=20, cpu_share=0.5)
    )
    assert code == "/code"
    host = api.inspect_container(f"easyfaas-{info.id}")["HostConfig"]
    assert (host["Memory"], host["MemorySwap"], host["PidsLimit"]) == (96 << 20, 96 << 20, 20)
    assert (host["CpuPeriod"], host["CpuQuota"]) == (100_000, 50_000)
    assert _mounts.mounts_under(str(driver.state_dir / "mnt" / info.id)) == [str(driver.state_dir / "mnt" / info.id)]
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
    with pytest.raises(docker.errors.NotFound):
        api.inspect_container(f"easyfaas-{info.id}")
    api.close()
    assert _mounts.mounts_under(str(driver.state_dir / "mnt")) == [str(driver.state_dir / "mnt")]  # the anchor only
    with pytest.raises(SandboxError, match="unknown sandbox"):
        await driver.stats(info.id)
    await driver.destroy("no-such-sandbox")


async def test_warmup_refuses_bad_requests(
    driver: DockerSandbox, make_function: FunctionFactory, tmp_path: Path, bind: Any
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
    # A limit the kernel refuses (below what the runner already uses) is named, with Docker's reason.
    with pytest.raises(SandboxError, match=r"cannot apply limits of f:1 \(memory 6 MB"):
        await driver.warmup(info.id, WarmupSpec("f:1", make_function(HELLO), 6, 5.0))
    # A refused warmup leaves the sandbox generic and usable.
    assert await driver.warmup(info.id, WarmupSpec("f:1", make_function(HELLO), 128, 5.0)) == "/code"


async def test_a_missing_custom_image_is_a_clear_error(driver_factory: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"image 'easyfaas/no-such-image:0' for runtime 'python' is missing"):
        await driver_factory(images={"python": "easyfaas/no-such-image:0"})


async def test_a_custom_image_is_used(
    driver_factory: Any, make_function: FunctionFactory, bind: Any, assert_healthy: Healthy
) -> None:
    # What the README tells users to do: a layer on top of the base image, built with no registry.
    api = _api()
    skeleton = _image.host_skeleton(65534, 65534)
    _image.import_base_image(api, skeleton, "easyfaas/test-base:1")
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tar:
        data = b"from the custom image\n"
        member = tarfile.TarInfo("etc/custom.txt")
        member.size, member.mode = len(data), 0o644
        tar.addfile(member, io.BytesIO(data))
    container = api.create_container("easyfaas/test-base:1", command=["/none"])
    try:
        api.put_archive(container["Id"], "/", layer.getvalue())
        api.commit(container["Id"], repository="easyfaas/test-custom", tag="1")
    finally:
        api.remove_container(container["Id"])
    try:
        driver = await driver_factory(images={"python": "easyfaas/test-custom:1"})
        source = "def handler(event, context):\n    return open('/etc/custom.txt').read()\n"
        instance = await bind(driver, make_function(source))
        assert await instance.result() == "from the custom image\n"
        await instance.close()
        await driver.stop()
    finally:
        api.remove_image("easyfaas/test-custom:1", force=True)
        api.remove_image("easyfaas/test-base:1", force=True)
        api.close()


async def test_base_image_import_reports_progress_and_labels_the_image(
    docker_engine: None, caplog: pytest.LogCaptureFixture
) -> None:
    api = _api()
    skeleton = _image.host_skeleton(65534, 65534)
    caplog.set_level("INFO", logger="easyfaas.sandbox.docker")
    try:
        image_id = _image.import_base_image(api, skeleton, "easyfaas/test-progress:1")
        labels = api.inspect_image("easyfaas/test-progress:1")["Config"]["Labels"]
        assert labels[_image.SKELETON_LABEL] == skeleton.digest
        assert image_id.startswith("sha256:")
    finally:
        api.remove_image("easyfaas/test-progress:1", force=True)
        api.close()
    steps = [r.getMessage() for r in caplog.records if "easyfaas/test-progress:1" in r.getMessage()]
    assert any("[1/2]" in s for s in steps) and any("[2/2]" in s for s in steps)


async def test_exits_are_reported_as_events(
    driver: DockerSandbox, make_function: FunctionFactory, bind: Any, next_event: Any
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
    # The driver cleaned up after the dead: no container, no code mount.
    for _ in range(100):
        labels = [c["Labels"].get("easyfaas.sandbox") for c in _containers_of(driver.state_dir)]
        mounted = _mounts.mounts_under(str(driver.state_dir / "mnt" / victim.id))
        if quitter.id not in labels and victim.id not in labels and not mounted:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the dead containers and their code mounts were not removed")

    # A destroyed sandbox is not an event.
    destroyed = await driver.create(PythonRuntime())
    await driver.destroy(destroyed.id)
    with pytest.raises(TimeoutError):
        await next_event(driver, destroyed.id, timeout=1.0)


async def test_concurrent_creates(driver: DockerSandbox, make_function: FunctionFactory, bind: Any) -> None:
    code = make_function(HELLO)
    instances = await asyncio.gather(*(bind(driver, code, key=f"f:{i}") for i in range(8)))
    assert len({i.id for i in instances}) == 8
    results = await asyncio.gather(*(i.result(n) for n, i in enumerate(instances)))
    assert results == [{"hello": n} for n in range(8)]
    for instance in instances:
        await instance.close()
    await asyncio.gather(*(driver.destroy(i.id) for i in instances))
    assert _containers_of(driver.state_dir) == []


async def test_stop_leaves_nothing_behind(
    docker_engine: None, state_dir: Path, make_function: FunctionFactory, bind: Any
) -> None:
    driver = DockerSandbox(state_dir=state_dir)
    await driver.start({"python": PythonRuntime()})
    instances = [await bind(driver, make_function(HELLO), key=f"f:{i}") for i in range(2)]
    generic = await driver.create(PythonRuntime())
    procs = [psutil.Process(p) for p in [i.info.pid for i in instances] + [generic.pid]]
    procs += [p.parent() for p in procs if p.parent() is not None]  # type: ignore[misc]
    assert len(_containers_of(state_dir)) == 3
    for instance in instances:
        await instance.close()
    await driver.stop()
    _, alive = psutil.wait_procs(procs, timeout=5)
    assert alive == []
    assert _containers_of(state_dir) == []
    assert _mounts.mounts_under(str(state_dir)) == []
    assert os.listdir(state_dir) == []
    await driver.stop()  # twice is fine


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
            from easyfaas_sandbox_docker import DockerSandbox

            async def main():
                driver = DockerSandbox(state_dir=Path(sys.argv[1]))
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
        proc.kill()
    finally:
        proc.wait(10)
    assert all(p.is_running() for p in runners)  # containers outlive the funclet: only the next run can clean
    assert len(_containers_of(state_dir)) == 2
    assert any(crashed["ids"][0] in m for m in _mounts.mounts_under(str(state_dir)))  # the bound code is still mounted

    driver = await driver_factory(state_dir=state_dir)
    _, alive = psutil.wait_procs(runners, timeout=5)
    assert alive == []
    assert _containers_of(state_dir) == []
    assert sorted(_mounts.mounts_under(str(state_dir))) == [str(state_dir / "mnt"), str(state_dir / "stage")]
    assert os.listdir(state_dir / "sock") == [] and os.listdir(state_dir / "mnt") == []
    await assert_healthy(driver)
