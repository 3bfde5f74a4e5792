"""Fixtures of the namespace driver's tests: started drivers, functions on disk, a wire client.

All real (root, namespaces, cgroups, the Python runner); ``namespace`` tests skip, with the reason, elsewhere.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from easyfaas import wire
from easyfaas.interfaces import Runtime
from easyfaas.models import SandboxEvent, SandboxInfo, WarmupSpec
from easyfaas.sockets import connect_unix
from easyfaas.wire import Kind
from easyfaas_runtime_python import PythonRuntime
from easyfaas_sandbox_namespace import NamespaceSandbox

UNAVAILABLE = NamespaceSandbox.availability()

HELLO = """
def handler(event, context):
    return {"hello": event}
"""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if UNAVAILABLE is None:
        return
    skip = pytest.mark.skip(reason=f"namespace sandbox unavailable: {UNAVAILABLE}")
    here = Path(__file__).parent
    for item in items:
        if item.get_closest_marker("namespace") and here in Path(item.path).parents:
            item.add_marker(skip)


class Instance:
    """One sandbox as the funclet and controller use it: LOAD on one connection, INVOKEs on another."""

    def __init__(self, driver: NamespaceSandbox, info: SandboxInfo) -> None:
        self.driver = driver
        self.info = info
        self._conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._rid = 0

    @property
    def id(self) -> str:
        return self.info.id

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        # As the funclet and controller connect: socket paths under a deep state_dir exceed 107 bytes.
        return await asyncio.open_unix_connection(sock=await connect_unix(self.info.socket_path))

    @staticmethod
    async def _ask(
        conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], kind: int, rid: int, meta: dict[str, Any], body: bytes
    ) -> tuple[int, dict[str, Any], bytes]:
        reader, writer = conn
        writer.write(wire.encode(kind, rid, meta, body))
        await writer.drain()
        got_rid, meta_len, body_len, got_kind = wire.decode_header(await reader.readexactly(wire.HEADER.size))
        assert got_rid == rid
        got_meta = wire.decode_meta(await reader.readexactly(meta_len))
        return got_kind, got_meta, await reader.readexactly(body_len)

    async def load(
        self, code_dir: str, handler: str = "handler.handler", *, memory_mb: int = 128
    ) -> tuple[int, dict[str, Any]]:
        conn = await self._connect()
        try:
            meta = {
                "code_dir": code_dir,
                "handler": handler,
                "function": "f",
                "version": "1",
                "memory_mb": memory_mb,
                "env": {},
            }
            kind, got, _ = await asyncio.wait_for(self._ask(conn, Kind.LOAD, 0, meta, b""), 30)
            return kind, got
        finally:
            conn[1].close()

    async def invoke(self, event: Any = None, *, timeout: float = 60) -> tuple[int, dict[str, Any], Any]:
        """One call: (kind, meta, decoded body). A dead instance raises IncompleteReadError/ConnectionError."""
        if self._conn is None:
            self._conn = await self._connect()
        self._rid += 1
        meta = {"rid": f"req-{self._rid}", "deadline": (time.time() + timeout) * 1000}
        kind, got, body = await asyncio.wait_for(
            self._ask(self._conn, Kind.INVOKE, self._rid, meta, json.dumps(event).encode()), timeout
        )
        return kind, got, json.loads(body) if kind == Kind.RESULT and body and not got.get("raw") else body

    async def result(self, event: Any = None, *, timeout: float = 60) -> Any:
        kind, meta, body = await self.invoke(event, timeout=timeout)
        assert kind == Kind.RESULT, meta
        return body

    async def close(self) -> None:
        if self._conn is not None:
            self._conn[1].close()
            self._conn = None


FunctionFactory = Callable[[str], str]
DriverFactory = Callable[..., Awaitable[NamespaceSandbox]]
Binder = Callable[..., Awaitable[Instance]]


async def _bind(
    driver: NamespaceSandbox,
    code_dir: str,
    *,
    memory_mb: int = 128,
    pids_max: int = 64,
    runtime: Runtime | None = None,
    key: str = "f:1",
) -> Instance:
    info = await driver.create(runtime or PythonRuntime())
    code = await driver.warmup(info.id, WarmupSpec(key, code_dir, memory_mb, 30.0, pids_max=pids_max))
    instance = Instance(driver, info)
    kind, meta = await instance.load(code, memory_mb=memory_mb)
    assert kind == Kind.LOADED, meta
    return instance


@pytest.fixture
def bind() -> Binder:
    """``await bind(driver, code_dir, memory_mb=, pids_max=, runtime=, key=)``: created, warmed, LOADed."""
    return _bind


@pytest.fixture
def make_function(tmp_path: Path) -> FunctionFactory:
    """Write ``source`` as handler.py into a fresh, world-readable code directory; return its path."""
    counter = iter(range(1_000_000))

    def make(source: str) -> str:
        code = tmp_path / f"fn{next(counter)}"
        code.mkdir()
        (code / "handler.py").write_text(textwrap.dedent(source))
        os.chmod(code, 0o755)
        os.chmod(code / "handler.py", 0o644)
        return str(code)

    return make


@pytest.fixture
def assert_healthy(make_function: FunctionFactory) -> Callable[[NamespaceSandbox], Awaitable[None]]:
    """The engine's other functions are unaffected: a brand-new sandbox still serves calls."""

    async def check(driver: NamespaceSandbox) -> None:
        instance = await _bind(driver, make_function(HELLO), key="healthy:1")
        assert await instance.result("again") == {"hello": "again"}
        await instance.close()
        await driver.destroy(instance.id)

    return check


async def _next_event(driver: NamespaceSandbox, sandbox_id: str, timeout: float = 30) -> SandboxEvent:
    events = driver.events()

    async def first() -> SandboxEvent:
        async for event in events:
            if event.sandbox_id == sandbox_id:
                return event
        raise AssertionError("the event stream ended")

    try:
        return await asyncio.wait_for(first(), timeout)
    finally:
        await events.aclose()  # type: ignore[attr-defined]


@pytest.fixture
def next_event() -> Callable[..., Awaitable[SandboxEvent]]:
    """``await next_event(driver, sandbox_id)``: the next event about that sandbox."""
    return _next_event


@pytest.fixture
def state_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="efns-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def driver_factory(state_dir: Path) -> AsyncIterator[DriverFactory]:
    """``await driver_factory(runtimes=None, **options)``: a started driver, stopped after the test."""
    drivers: list[NamespaceSandbox] = []
    extra_dirs: list[str] = []

    async def make(runtimes: dict[str, Runtime] | None = None, **options: Any) -> NamespaceSandbox:
        if "state_dir" not in options:
            if drivers:
                extra_dirs.append(tempfile.mkdtemp(prefix="efns-", dir="/tmp"))
            options["state_dir"] = Path(extra_dirs[-1]) if drivers else state_dir
        driver = NamespaceSandbox(**options)
        drivers.append(driver)
        await driver.start(runtimes if runtimes is not None else {"python": PythonRuntime()})
        return driver

    yield make
    for driver in drivers:
        await driver.stop()
    for path in extra_dirs:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def driver(driver_factory: DriverFactory) -> NamespaceSandbox:
    """A started driver with the Python runtime and an 8 MiB /tmp."""
    return await driver_factory(tmp_size_mb=8)
