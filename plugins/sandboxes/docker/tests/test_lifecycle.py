"""The docker driver's own contract: options, clear errors, images, and containers as dockerd records them.

What every driver does (create, warmup, destroy, events, stop, crash recovery) is checked by the
conformance suite in ``test_conformance.py``. Real containers throughout; the white-box checks read
the containers' configuration back from dockerd.
"""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import docker
import psutil
import pytest

from easyfaas.errors import ConfigurationError, SandboxError
from easyfaas.models import WarmupSpec
from easyfaas.plugin import Registry
from easyfaas.testing.sandbox_conformance import HELLO, SandboxHarness
from easyfaas_runtime_python import PythonRuntime
from easyfaas_sandbox_docker import DockerSandbox, _image, _mounts, plugin
from easyfaas_sandbox_docker.driver import LABEL_STATE


def _api() -> Any:
    return docker.APIClient(version="auto")


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


async def test_containers_are_configured_and_limited(harness: SandboxHarness) -> None:
    driver = await harness.standard_driver()
    info = await driver.create(harness.runtime)
    runner = psutil.Process(info.pid)
    assert runner.uids().effective == 65534
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
    assert stats.cpu_seconds > 0

    code = await driver.warmup(
        info.id, WarmupSpec("hello:7", harness.function(HELLO), 96, 5.0, pids_max=20, cpu_share=0.5)
    )
    assert code == "/code"
    host = api.inspect_container(f"easyfaas-{info.id}")["HostConfig"]
    assert (host["Memory"], host["MemorySwap"], host["PidsLimit"]) == (96 << 20, 96 << 20, 20)
    assert (host["CpuPeriod"], host["CpuQuota"]) == (100_000, 50_000)
    assert _mounts.mounts_under(str(driver.state_dir / "mnt" / info.id)) == [str(driver.state_dir / "mnt" / info.id)]

    await driver.destroy(info.id)
    with pytest.raises(docker.errors.NotFound):
        api.inspect_container(f"easyfaas-{info.id}")
    api.close()
    assert _mounts.mounts_under(str(driver.state_dir / "mnt")) == [str(driver.state_dir / "mnt")]  # the anchor only
    with pytest.raises(SandboxError, match="unknown sandbox"):
        await driver.stats(info.id)


async def test_warmup_names_limits_the_kernel_refuses(harness: SandboxHarness) -> None:
    driver = await harness.standard_driver()
    info = await driver.create(harness.runtime)
    # A limit the kernel refuses (below what the runner already uses) is named, with Docker's reason.
    with pytest.raises(SandboxError, match=r"cannot apply limits of f:1 \(memory 6 MB"):
        await driver.warmup(info.id, WarmupSpec("f:1", harness.function(HELLO), 6, 5.0))
    # A refused warmup leaves the sandbox generic and usable.
    assert await driver.warmup(info.id, WarmupSpec("f:1", harness.function(HELLO), 128, 5.0)) == "/code"


async def test_a_missing_custom_image_is_a_clear_error(harness: SandboxHarness) -> None:
    with pytest.raises(ConfigurationError, match=r"image 'easyfaas/no-such-image:0' for runtime 'python' is missing"):
        await harness.driver(images={"python": "easyfaas/no-such-image:0"})


async def test_a_custom_image_is_used(harness: SandboxHarness) -> None:
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
        driver = await harness.driver(images={"python": "easyfaas/test-custom:1"})
        source = "def handler(event, context):\n    return open('/etc/custom.txt').read()\n"
        instance = await harness.bind(driver, harness.function(source))
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
