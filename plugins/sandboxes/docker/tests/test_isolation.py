"""What a function sees inside a docker sandbox, beyond the conformance suite's checks.

The adversarial functions themselves run in ``test_conformance.py`` (``easyfaas.testing.sandbox_conformance``).
"""

from __future__ import annotations

from easyfaas.testing.sandbox_conformance import IDENTITY, SandboxHarness


async def test_identity_privileges_and_view(harness: SandboxHarness) -> None:
    driver = await harness.standard_driver()
    instance = await harness.bind(driver, harness.function(IDENTITY))
    got = await instance.result()
    assert got["procs"] == [1, got["procs"][1]]  # docker-init and the runner, nothing of the host
    mounts = got["mounts"]
    assert "ro" in mounts["/usr"], mounts["/usr"]
    assert {"ro", "nosuid", "nodev"} <= set(mounts["/code"])
    assert "/dev/shm" not in mounts  # /tmp is the only writable place
    assert set(got["root"]) <= {
        ".dockerenv", "bin", "code", "dev", "etc", "lib", "lib32", "lib64", "libx32", "proc", "root", "run",
        "runner", "sbin", "sys", "tmp", "usr",
    }  # fmt: skip
    for absent in ("home", "opt"):
        assert absent not in got["root"]
    assert "shm" not in got["dev"]
    await harness.assert_healthy(driver)
