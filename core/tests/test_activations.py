"""The activation store alone (no archive): a record written and read back is the same record."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import pytest

from easyfaas.controller.activations import ActivationStore


def record(rid: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": rid, "function": "f", "version": "3", "status": "application_error", "trigger": "http",
        "start": 1700000000.5, "end": 1700000000.75, "duration_ms": 250.0, "wait_ms": 0.25, "init_ms": 12.5,
        "instance": "sb-1", "error": {"errorType": "ValueError", "stackTrace": ["a", "b"]},
        "result": None, "logs": "printed\n", **extra,
    }  # fmt: skip


@pytest.mark.parametrize(
    "extra",
    [{}, {"handler_ms": 0.0123}, {"handler_ms": 1.5, "attempts": [{"n": 1}]}, {"handler_ms": math.inf}],
    ids=["no extra", "handler_ms", "several", "not finite"],
)
def test_a_record_reads_back_as_written(tmp_path: Path, extra: dict[str, Any]) -> None:
    async def roundtrip() -> dict[str, Any] | None:
        store = ActivationStore(tmp_path / "a.db")
        store.add(record("r1", **extra))
        await store.flush()
        got = await store.get("r1")
        await store.close()
        return got

    got = asyncio.run(roundtrip())
    assert got is not None
    got.pop("seq")
    want = record("r1", **extra)
    if extra.get("handler_ms") == math.inf:  # JSON has no infinity: Python's encoder writes Infinity
        assert got.pop("handler_ms") == math.inf
        want.pop("handler_ms")
    assert got == want
