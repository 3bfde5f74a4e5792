"""pytest plugin (entry point ``pytest11: easyfaas``): fixtures that run a real engine.

``easyfaas_engine`` is a factory: ``engine = easyfaas_engine(sandbox="namespace")`` starts
an engine on a fresh data directory and free ports; every engine it made is stopped at the
end of the test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from easyfaas.testing import RunningEngine

EngineFactory = Callable[..., RunningEngine]


@pytest.fixture
def easyfaas_engine(tmp_path: Path) -> Iterator[EngineFactory]:
    engines: list[RunningEngine] = []

    def make(**kwargs: Any) -> RunningEngine:
        engine = RunningEngine(tmp_path / f"engine{len(engines)}", **kwargs)
        engines.append(engine)
        return engine.start()

    yield make
    for engine in engines:
        engine.stop()
