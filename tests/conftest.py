"""Shared fixtures for the end-to-end tests: real engines, per sandbox driver."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from easyfaas.testing import RunningEngine, sandbox_params, sandbox_unavailable


@pytest.fixture(scope="module", params=sandbox_params("process", "namespace"))
def engine(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningEngine]:
    """One running engine per module and sandbox driver, shared by the module's tests."""
    eng = RunningEngine(
        tmp_path_factory.mktemp(f"engine-{request.param}"),
        sandbox=request.param,
        pool={"python": 2},
        controller={"max_queue_wait": "2s", "keep_alive": "60s"},
    )
    eng.start()
    yield eng
    code = eng.stop()
    assert code == 0, eng.log()


def pytest_report_header() -> str:
    reason = sandbox_unavailable("namespace")
    ns = "namespace sandbox: available" if reason is None else f"namespace sandbox: SKIPPED ({reason})"
    return f"easyfaas e2e: process sandbox; {ns}; uid={os.getuid()}"
