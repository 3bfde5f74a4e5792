"""What a function sees and may do inside a namespace sandbox, beyond the conformance suite's checks.

The adversarial functions themselves run in ``test_conformance.py`` (``easyfaas.testing.sandbox_conformance``).
"""

from __future__ import annotations

import pytest

from easyfaas.testing.sandbox_conformance import IDENTITY, SIGNALLER, SandboxHarness

pytestmark = pytest.mark.namespace


async def test_identity_privileges_and_view(harness: SandboxHarness) -> None:
    driver = await harness.standard_driver()
    instance = await harness.bind(driver, harness.function(IDENTITY))
    got = await instance.result()
    assert got["ids"] == [65534, 65534, 65534, 65534, []]
    assert got["pid"] == 3 and got["ppid"] == 1  # pid 1 is the sandbox's reaper (2 built the root and left)
    assert got["procs"] == [1, 3]
    assert "ro" in got["mounts"]["/usr/lib"], got["mounts"]["/usr/lib"]
    assert set(got["root"]) <= {
        "code", "dev", "etc", "proc", "run", "runner", "tmp", "usr", "lib", "lib64", "lib32", "root", "opt", "home",
    }  # fmt: skip
    assert "sys" not in got["root"]
    assert set(got["env"]) == {"PATH", "HOME", "TMPDIR", "LANG", "USER"}
    assert got["own_fds_listable"]
    assert set(got["dev"]) == {"null", "zero", "full", "random", "urandom", "fd", "stdin", "stdout", "stderr", "shm"}
    # The pool-time warm-up import leaves no trace, and no host path of the engine shows.
    assert got["warm_modules"] == [] and got["tmp"] == []
    assert got["sys_path"][:2] == ["/code", "/runner"]
    assert not any(str(driver.state_dir) in p for p in got["sys_path"] + got["argv"])
    await harness.assert_healthy(driver)


async def test_init_takes_no_signal_and_no_tracer(harness: SandboxHarness) -> None:
    driver = await harness.standard_driver()
    instance = await harness.bind(driver, harness.function(SIGNALLER))
    attempts = [["kill init", "kill", 1], ["term init", "term", 1], ["ptrace init", "ptrace", 1]]
    assert await instance.result(attempts) == {"kill init": "EPERM", "term init": "EPERM", "ptrace init": "EPERM"}
    assert (await instance.result(attempts))["kill init"] == "EPERM"  # init survived: the instance works
    await harness.assert_healthy(driver)
