"""The funclet's sandbox manager with a real driver and runtime: pool refill after warm-ups, LOAD outcomes.

The process sandbox runs everywhere; the namespace sandbox's own suite covers its driver.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from easyfaas.errors import LoadError
from easyfaas.funclet.manager import SandboxManager
from easyfaas.models import WarmupSpec
from easyfaas.testing import write_function
from easyfaas_runtime_python import PythonRuntime
from easyfaas_sandbox_process import ProcessSandbox

HELLO = "def handler(event, context):\n    return {'hello': event}\n"


async def _pool_full(manager: SandboxManager, size: int) -> None:
    async def wait() -> None:
        while manager.pool_ready()["python"] < size:
            await asyncio.sleep(0.01)

    await asyncio.wait_for(wait(), 60)


@pytest.fixture
async def manager(tmp_path: Path) -> AsyncIterator[SandboxManager]:
    driver = ProcessSandbox(state_dir=tmp_path / "state")
    mgr = SandboxManager(driver, {"python": PythonRuntime()}, {"python": 2})
    await mgr.start()
    await _pool_full(mgr, 2)
    yield mgr
    await mgr.stop()


def _spec(code: Path, key: str) -> WarmupSpec:
    return WarmupSpec(function_key=key, code_dir=str(code), memory_mb=128, timeout_s=10)


async def test_warm_up_takes_from_the_pool_and_the_pool_refills(manager: SandboxManager, tmp_path: Path) -> None:
    code = write_function(tmp_path / "hello", HELLO)
    result = await manager.warm_up(
        "python", _spec(code, "hello:1"), handler="handler.handler", function="hello", version="1"
    )
    assert result.from_pool
    assert result.sandbox.state == "bound" and result.sandbox.function_key == "hello:1"
    assert manager.sandboxes[result.sandbox.id].state == "bound"
    await _pool_full(manager, 2)
    generic = [s for s in manager.sandboxes.values() if s.state == "generic"]
    assert len(generic) == 2 and result.sandbox.id not in {s.id for s in generic}


async def test_warm_ups_beyond_the_pool_create_sandboxes_and_the_pool_refills(
    manager: SandboxManager, tmp_path: Path
) -> None:
    code = write_function(tmp_path / "hello", HELLO)
    results = [
        await manager.warm_up(
            "python", _spec(code, f"f{i}:1"), handler="handler.handler", function=f"f{i}", version="1"
        )
        for i in range(3)
    ]
    assert [r.from_pool for r in results[:2]] == [True, True]
    assert len({r.sandbox.id for r in results}) == 3
    await _pool_full(manager, 2)
    assert sum(s.state == "bound" for s in manager.sandboxes.values()) == 3


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("raise KeyError('broken at import')\n", "KeyError"),
        ("import os\nos._exit(3)\n", "ended while loading"),
    ],
)
async def test_failed_load_is_a_load_error_and_the_sandbox_goes(
    manager: SandboxManager, tmp_path: Path, source: str, expected: str
) -> None:
    code = write_function(tmp_path / "bad", source)
    before = set(manager.sandboxes)
    with pytest.raises(LoadError, match=expected):
        await manager.warm_up("python", _spec(code, "bad:1"), handler="handler.handler", function="bad", version="1")
    taken = before - set(manager.sandboxes)
    assert len(taken) == 1  # the pooled sandbox it took is destroyed, not returned
    await _pool_full(manager, 2)
