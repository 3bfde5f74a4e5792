"""The sandbox conformance suite (``easyfaas.testing.sandbox_conformance``), run by the process driver.

Only the lifecycle part (``SandboxConformance``): the process driver isolates nothing, so DESIGN §7's
adversarial tests do not apply. A sandbox here is the runner alone, in a session of its own.
"""

from __future__ import annotations

import psutil
import pytest

from easyfaas.interfaces import Runtime
from easyfaas.testing.sandbox_conformance import SandboxAdapter, SandboxConformance
from easyfaas_runtime_python import PythonRuntime
from easyfaas_sandbox_process import ProcessSandbox


class ProcessAdapter(SandboxAdapter):
    driver_class = ProcessSandbox
    base_processes = 1  # no init: the runner is the sandbox
    kills_daemons = False  # destroy kills the runner's session; a setsid daemon has left it
    reaps = False  # orphans go to the host's init, which reaps them when it will
    describes_events = False

    def make_runtime(self) -> Runtime:
        return PythonRuntime()

    def sandbox_processes(self, runner_pid: int) -> list[psutil.Process]:
        runner = psutil.Process(runner_pid)
        return [runner, *runner.children(recursive=True)]


@pytest.fixture
def sandbox_adapter() -> ProcessAdapter:
    return ProcessAdapter()


class TestProcessConformance(SandboxConformance):
    pass
