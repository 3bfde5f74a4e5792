"""The NATS code store against a real JetStream server: two stores on two data directories
play two engine nodes sharing one registry."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from easyfaas.errors import FunctionNotFoundError
from easyfaas.interfaces import CodeStore
from easyfaas.models import Alias, FunctionSpec
from easyfaas.plugin.manager import Plugins
from easyfaas.testing.nats import NatsServer, nats_unavailable
from easyfaas_storage_nats import NatsStore

pytestmark = pytest.mark.skipif(nats_unavailable() is not None, reason=str(nats_unavailable()))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    with NatsServer(tmp_path_factory.mktemp("nats") / "store") as running:
        yield running


@pytest.fixture
async def nodes(server: NatsServer, tmp_path: Path) -> AsyncIterator[tuple[NatsStore, NatsStore]]:
    bucket = f"t{os.urandom(4).hex()}"  # a fresh registry per test on the shared server
    a = NatsStore(data_dir=tmp_path / "a", servers=[server.url], bucket=bucket)
    b = NatsStore(data_dir=tmp_path / "b", servers=[server.url], bucket=bucket)
    yield a, b
    await a.close()
    await b.close()


def code(tmp_path: Path, text: str) -> Path:
    directory = tmp_path / f"src-{os.urandom(4).hex()}"
    (directory / "data" / "empty").mkdir(parents=True)
    (directory / "handler.py").write_text(text)
    (directory / "run.sh").write_text("#!/bin/sh\n")
    (directory / "run.sh").chmod(0o755)
    (directory / "data" / "x.txt").write_text("payload")
    os.symlink("data/x.txt", directory / "link.txt")
    return directory


def test_the_plugin_host_finds_and_builds_it(tmp_path: Path) -> None:
    host = Plugins()
    host.load({"storage": ["nats"]})
    store = host.create_storage("nats", data_dir=tmp_path, servers=["nats://127.0.0.1:1"], bucket="x", replicas=3)
    assert isinstance(store, CodeStore) and store.servers == ["nats://127.0.0.1:1"] and store.replicas == 3


@pytest.mark.parametrize("options", [{"bucket": "a.b"}, {"replicas": 0}, {"servers": []}])
def test_bad_options_are_refused(tmp_path: Path, options: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        NatsStore(data_dir=tmp_path, **options)  # type: ignore[arg-type]


async def test_a_version_put_on_one_node_is_read_with_its_code_on_another(nodes: tuple[NatsStore, NatsStore], tmp_path: Path) -> None:
    a, b = nodes
    v1 = await a.put(FunctionSpec(name="f", env={"K": "v"}), code(tmp_path, "A = 1\n"))
    v2 = await a.put(FunctionSpec(name="f", memory=256), code(tmp_path, "A = 2\n"))
    assert (v1.version, v2.version) == ("1", "2") and v1.code_sha256 != v2.code_sha256
    seen = await b.get("f")
    assert seen.version == "2" and seen.spec.memory == 256 and seen.code_sha256 == v2.code_sha256
    # Node b's copy is its own, unpacked from the object store, with the same tree.
    root = Path(seen.code_dir)
    assert root.is_relative_to(tmp_path / "b") and (root / "handler.py").read_text() == "A = 2\n"
    assert (root / "data" / "empty").is_dir() and os.readlink(root / "link.txt") == "data/x.txt"
    assert os.stat(root / "run.sh").st_mode & 0o111 and not os.stat(root / "handler.py").st_mode & 0o222
    assert (await b.get("f", "1")).spec.env == {"K": "v"}
    assert [v.version for v in await b.versions("f")] == ["1", "2"]


async def test_concurrent_deploys_on_two_nodes_get_distinct_versions(nodes: tuple[NatsStore, NatsStore], tmp_path: Path) -> None:
    a, b = nodes
    directories = [code(tmp_path, f"N = {i}\n") for i in range(10)]
    made = await asyncio.gather(*((a if i % 2 else b).put(FunctionSpec(name="race"), d) for i, d in enumerate(directories)))
    assert sorted(int(fv.version) for fv in made) == list(range(1, 11))
    assert (await a.get("race")).version == (await b.get("race")).version == "10"


async def test_list_delete_and_unknown_names(nodes: tuple[NatsStore, NatsStore], tmp_path: Path) -> None:
    a, b = nodes
    for name in ("b", "a", "b"):
        await a.put(FunctionSpec(name=name), code(tmp_path, f"# {name}\n"))
    assert [(f.name, f.version) for f in await b.list()] == [("a", "1"), ("b", "2")]
    await b.delete("b")
    with pytest.raises(FunctionNotFoundError):
        await a.get("b")
    with pytest.raises(FunctionNotFoundError):
        await a.versions("b")
    assert [f.name for f in await a.list()] == ["a"]
    with pytest.raises(FunctionNotFoundError, match="'nope' not found"):
        await a.get("nope")
    with pytest.raises(FunctionNotFoundError):
        await a.get("../etc")
    with pytest.raises(FunctionNotFoundError, match="no version '9'"):
        await a.get("a", "9")
    with pytest.raises(FunctionNotFoundError):
        await a.delete("nope")
    # Deleted, then deployed again: numbering starts over, as with the local store.
    assert (await a.put(FunctionSpec(name="b"), code(tmp_path, "again\n"))).version == "1"


async def test_unchanged_code_is_uploaded_and_cached_once(nodes: tuple[NatsStore, NatsStore], tmp_path: Path) -> None:
    a, b = nodes
    source = code(tmp_path, "same\n")
    one = await a.put(FunctionSpec(name="f"), source)
    two = await a.put(FunctionSpec(name="f", memory=512), source)
    assert one.code_sha256 == two.code_sha256 and one.code_dir == two.code_dir
    assert (await b.get("f", "1")).code_dir == (await b.get("f", "2")).code_dir


async def test_aliases_are_shared_and_check_their_versions(nodes: tuple[NatsStore, NatsStore], tmp_path: Path) -> None:
    a, b = nodes
    await a.put(FunctionSpec(name="f"), code(tmp_path, "1\n"))
    await a.put(FunctionSpec(name="f"), code(tmp_path, "2\n"))
    stored = await a.put_alias(Alias(name="live", function="f", version="1", additional_version="2", weight=0.1))
    assert stored.revision
    assert (await b.aliases("f"))["live"] == stored
    with pytest.raises(FunctionNotFoundError):
        await b.put_alias(Alias(name="bad", function="f", version="7"))
    with pytest.raises(FunctionNotFoundError):
        await b.put_alias(Alias(name="bad", function="nope", version="1"))
    await asyncio.gather(*(b.put_alias(Alias(name=f"x{i}", function="f", version="2")) for i in range(5)))
    assert set(await a.aliases("f")) == {"live", "x0", "x1", "x2", "x3", "x4"}  # no lost update
    await a.delete_alias("f", "live")
    assert "live" not in await b.aliases("f")
    with pytest.raises(FunctionNotFoundError):
        await b.delete_alias("f", "live")


async def test_watch_names_what_another_node_changes(nodes: tuple[NatsStore, NatsStore], tmp_path: Path) -> None:
    a, b = nodes
    await a.put(FunctionSpec(name="old"), code(tmp_path, "old\n"))
    seen: asyncio.Queue[str] = asyncio.Queue()

    async def follow() -> None:
        async for name in b.watch():
            seen.put_nowait(name)

    async def next_change(expected: str) -> None:
        # A deploy writes two keys (its version, then ``latest``): the name may come twice.
        while (name := await asyncio.wait_for(seen.get(), 10)) != expected:
            assert name in ("old", "new")

    task = asyncio.create_task(follow())
    try:
        await next_change("old")  # the state it starts from
        await a.put(FunctionSpec(name="new"), code(tmp_path, "new\n"))
        await next_change("new")
        await a.put_alias(Alias(name="live", function="old", version="1"))
        await next_change("old")
        await a.delete("new")
        await next_change("new")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_the_store_survives_a_restart_of_nats(tmp_path: Path) -> None:
    with NatsServer(tmp_path / "own-nats") as own:
        store = NatsStore(data_dir=tmp_path / "n", servers=[own.url])
        try:
            await store.put(FunctionSpec(name="kept"), code(tmp_path, "k\n"))
            await asyncio.to_thread(own.restart)
            for _ in range(100):  # the client reconnects by itself
                try:
                    assert (await store.get("kept")).version == "1"
                    break
                except Exception:
                    await asyncio.sleep(0.1)
            else:
                pytest.fail("the store did not reconnect")
            assert (await store.put(FunctionSpec(name="kept"), code(tmp_path, "k2\n"))).version == "2"
        finally:
            await store.close()
