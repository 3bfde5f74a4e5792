"""The NATS activation archive against a real JetStream server: records written by one store
are read through another (two nodes), big logs are cut to fit, records expire after the TTL."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from easyfaas.interfaces import ActivationArchive
from easyfaas.testing.nats import NatsServer, nats_unavailable
from easyfaas_storage_nats import NatsStore
from easyfaas_storage_nats.archive import encode_record, key_token

pytestmark = pytest.mark.skipif(nats_unavailable() is not None, reason=str(nats_unavailable()))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    with NatsServer(tmp_path_factory.mktemp("nats") / "store") as running:
        yield running


@pytest.fixture
async def stores(server: NatsServer, tmp_path: Path) -> AsyncIterator[tuple[NatsStore, NatsStore]]:
    bucket = f"t{os.urandom(4).hex()}"
    a = NatsStore(data_dir=tmp_path / "a", servers=[server.url], bucket=bucket)
    b = NatsStore(data_dir=tmp_path / "b", servers=[server.url], bucket=bucket)
    yield a, b
    await a.close()
    await b.close()


def record(rid: str, function: str = "f", *, start: float | None = None, **extra: Any) -> dict[str, Any]:
    return {"id": rid, "function": function, "version": "1", "status": "success", "trigger": "api",
            "start": start if start is not None else time.time(), "end": None, "duration_ms": 1.0, "wait_ms": 0.0,
            "init_ms": None, "instance": "i", "error": None, "result": "{}", "logs": "", **extra}  # fmt: skip


@pytest.mark.parametrize("ttl", [0, -5, "7d", True, None])
def test_a_bad_activation_ttl_is_refused_by_name(tmp_path: Path, ttl: object) -> None:
    with pytest.raises(ValueError, match="activation_ttl"):
        NatsStore(data_dir=tmp_path, activation_ttl=ttl)  # type: ignore[arg-type]


def test_keys_are_safe_for_key_value_buckets() -> None:
    assert key_token("a1b2-c_3") == "a1b2-c_3"
    for odd in ("req.1", "has space", "*", ">", "é", ""):
        token = key_token(odd)
        assert token.startswith("=") and all(c.isalnum() or c == "=" for c in token)
    assert key_token("req.1") != key_token("req-1")


def test_a_record_over_the_limit_loses_the_front_of_its_logs_first() -> None:
    big = record("x", logs="early\n" * 50_000 + "the end\n", result="r" * 1000)
    body = encode_record(big, 64 * 1024)
    assert len(body) <= 64 * 1024 and b'"logs_truncated":true' in body and b"the end" in body
    assert b'"result":"rrr' in body  # the result stays when cutting the logs is enough
    small = encode_record(big, 600)  # no room for the result either
    assert len(small) <= 600 and b'"result_truncated":true' in small and b'"status":"success"' in small
    tiny = encode_record(big, 240)  # only the summary fits
    assert len(tiny) <= 240 and b'"truncated":true' in tiny and b'"id":"x"' in tiny


async def test_records_put_by_one_node_are_read_by_another(stores: tuple[NatsStore, NatsStore]) -> None:
    a, b = stores
    archive_a, archive_b = a.activation_archive(), b.activation_archive()
    assert isinstance(archive_a, ActivationArchive)
    now = time.time()
    await archive_a.put([record(f"id{i}", start=now + i) for i in range(5)])
    await archive_a.put([record("other", "g", start=now), record("weird id.with*dots", "g", start=now - 1)])
    # A record of an id is replaced by a later one (an async call: queued, then final).
    await archive_a.put([record("id0", start=now, status="queued")])
    await archive_a.put([record("id0", start=now, status="success", result='{"n":0}')])

    got = await archive_b.get("id0")
    assert got is not None and got["status"] == "success" and got["result"] == '{"n":0}'
    assert (await archive_b.get("id1", function="f") or {}).get("id") == "id1"
    assert (await archive_b.get("weird id.with*dots") or {}).get("function") == "g"
    assert await archive_b.get("missing") is None and await archive_b.get("missing", function="f") is None

    # The ``limit`` records written last (id0 was rewritten last), newest start first.
    newest = await archive_b.list(function="f", limit=3)
    assert [r["id"] for r in newest] == ["id4", "id3", "id0"]
    assert {r["id"] for r in await archive_b.list(function="g")} == {"other", "weird id.with*dots"}
    assert len(await archive_b.list(limit=100)) == 7


async def test_a_record_with_a_mebibyte_of_logs_fits_the_server(stores: tuple[NatsStore, NatsStore]) -> None:
    a, b = stores
    logs = "x" * (1 << 20) + "\nlast line\n"  # the engine's default log_cap, over NATS' default max_payload
    await a.activation_archive().put([record("big", logs=logs)])
    got = await b.activation_archive().get("big")
    assert got is not None and got["logs_truncated"] is True and got["logs"].endswith("last line\n")
    assert got["result"] == "{}"


async def test_records_expire_after_the_ttl(server: NatsServer, tmp_path: Path) -> None:
    bucket = f"t{os.urandom(4).hex()}"
    store = NatsStore(data_dir=tmp_path, servers=[server.url], bucket=bucket, activation_ttl=1)
    try:
        archive = store.activation_archive()
        await archive.put([record("short-lived")])
        assert await archive.get("short-lived") is not None
        for _ in range(300):  # JetStream expires messages within about a second of max_age
            if await archive.get("short-lived", function="f") is None:
                break
            await asyncio.sleep(0.1)
        assert await archive.get("short-lived", function="f") is None
        assert await archive.list(function="f") == []
    finally:
        await store.close()


async def test_a_changed_ttl_is_applied_to_the_existing_bucket(server: NatsServer, tmp_path: Path) -> None:
    bucket = f"t{os.urandom(4).hex()}"
    first = NatsStore(data_dir=tmp_path / "1", servers=[server.url], bucket=bucket, activation_ttl=3600)
    second = NatsStore(data_dir=tmp_path / "2", servers=[server.url], bucket=bucket, activation_ttl=7200)
    try:
        kv, _ = await first._open_activations()
        assert (await kv.status()).ttl == 3600
        kv, limit = await second._open_activations()
        assert (await kv.status()).ttl == 7200
        assert 0 < limit < 1 << 20  # the server's max_payload (1 MiB by default), less room for headers
    finally:
        await first.close()
        await second.close()


async def test_a_late_unfinished_record_never_hides_a_later_state(stores: tuple[NatsStore, NatsStore]) -> None:
    """Node a accepted an async call; node b ran it and archived the outcome before a's batch
    with ``queued`` arrived: the archive keeps the outcome, whatever the order."""
    a, b = stores
    accepting, running = a.activation_archive(), b.activation_archive()
    queued = record("call", status="queued", attempts=[])
    await running.put([record("call", status="running", attempts=[{"n": 1, "status": "running"}])])
    await accepting.put([queued])
    assert (await accepting.get("call") or {}).get("status") == "running"
    await running.put([record("call", status="success", result='{"done":1}', attempts=[{"n": 1, "status": "success"}])])
    await accepting.put([queued])
    got = await accepting.get("call", function="f")
    assert got is not None and got["status"] == "success" and got["result"] == '{"done":1}'
    # A retry after a failure is further than the failed attempt running.
    await accepting.put([record("retry", status="running", attempts=[{"n": 1, "status": "running"}])])
    await running.put([record("retry", status="queued", attempts=[{"n": 1, "status": "function_error"}])])
    assert (await accepting.get("retry") or {}).get("status") == "queued"
    # Many writers at once: the final record wins.
    writes = [accepting.put([queued]) for _ in range(5)] + [running.put([record("call", result="{}")])]
    await asyncio.gather(*writes)
    assert (await running.get("call") or {}).get("status") == "success"
