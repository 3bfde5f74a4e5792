"""Fixtures of the docker driver's tests: a running dockerd, started drivers, functions on disk, a wire client.

Everything is real: dockerd (started here when root and none runs), containers, the Python runtime's
runner, unix sockets. Tests that need an engine skip, with the reason, only when none can be started.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
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
from easyfaas_sandbox_docker import DockerSandbox

HELLO = """
def handler(event, context):
    return {"hello": event}
"""

DOCKERD_WAIT = 60.0


def _start_dockerd(log_path: Path) -> tuple[subprocess.Popen[bytes] | None, str | None]:
    """Make sure an engine answers: (the dockerd we started or None, None) or (None, why there is none)."""
    reason = DockerSandbox.availability()
    if reason is None:
        return None, None
    if os.environ.get("DOCKER_HOST"):
        return None, f"{reason} (DOCKER_HOST is set, so no local dockerd is started)"
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        return None, f"{reason}; no dockerd binary to start (.ci/install-docker installs docker.io)"
    if os.geteuid() != 0:
        return None, f"{reason}; not root, so dockerd cannot be started here"
    with open(log_path, "wb") as log:
        # No iptables or bridge: every test container runs with network 'none'.
        proc = subprocess.Popen(
            [dockerd, "--iptables=false", "--bridge=none"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + DOCKERD_WAIT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-1500:]
            return None, f"dockerd exited with code {proc.returncode}: {tail}"
        if DockerSandbox.availability() is None:
            return proc, None
        time.sleep(0.2)
    _stop_dockerd(proc)
    return None, f"dockerd did not answer within {DOCKERD_WAIT:.0f}s (log: {log_path})"


def _stop_dockerd(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def docker_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A Docker engine that answers on the default URL; started (and stopped at the end) if needed."""
    proc, reason = _start_dockerd(tmp_path_factory.mktemp("dockerd") / "dockerd.log")
    if reason is not None:
        pytest.skip(f"no Docker engine: {reason}")
    yield
    if proc is not None:
        _stop_dockerd(proc)


class Instance:
    """One sandbox as the funclet and controller use it: LOAD on one connection, INVOKEs on another."""

    def __init__(self, driver: DockerSandbox, info: SandboxInfo) -> None:
        self.driver = driver
        self.info = info
        self._conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._rid = 0

    @property
    def id(self) -> str:
        return self.info.id

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        # Host socket paths under pytest's tmp dirs can exceed sun_path; connect_unix copes.
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
        self,
        code_dir: str,
        handler: str = "handler.handler",
        *,
        memory_mb: int = 128,
        env: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, Any]]:
        conn = await self._open()
        try:
            meta = {
                "code_dir": code_dir,
                "handler": handler,
                "function": "f",
                "version": "1",
                "memory_mb": memory_mb,
                "env": env or {},
                "instance": self.id,
            }
            kind, got, _ = await asyncio.wait_for(self._ask(conn, Kind.LOAD, 0, meta, b""), 30)
            return kind, got
        finally:
            conn[1].close()

    async def invoke(self, event: Any = None, *, timeout: float = 60) -> tuple[int, dict[str, Any], Any]:
        """One call: (kind, meta, decoded body). A dead instance raises IncompleteReadError/ConnectionError."""
        if self._conn is None:
            self._conn = await self._open()
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
DriverFactory = Callable[..., Awaitable[DockerSandbox]]
Binder = Callable[..., Awaitable[Instance]]


async def _bind(
    driver: DockerSandbox,
    code_dir: str,
    *,
    memory_mb: int = 128,
    pids_max: int = 64,
    cpu_share: float = 1.0,
    runtime: Runtime | None = None,
    key: str = "f:1",
    env: dict[str, str] | None = None,
) -> Instance:
    info = await driver.create(runtime or PythonRuntime())
    code = await driver.warmup(
        info.id, WarmupSpec(key, code_dir, memory_mb, 30.0, pids_max=pids_max, cpu_share=cpu_share)
    )
    instance = Instance(driver, info)
    kind, meta = await instance.load(code, memory_mb=memory_mb, env=env)
    assert kind == Kind.LOADED, meta
    return instance


@pytest.fixture
def bind() -> Binder:
    """``await bind(driver, code_dir, memory_mb=, pids_max=, cpu_share=, runtime=, key=, env=)``: created, warmed, LOADed."""
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
def assert_healthy(make_function: FunctionFactory) -> Callable[[DockerSandbox], Awaitable[None]]:
    """The engine's other functions are unaffected: a brand-new sandbox still serves calls."""

    async def check(driver: DockerSandbox) -> None:
        instance = await _bind(driver, make_function(HELLO), key="healthy:1")
        assert await instance.result("again") == {"hello": "again"}
        await instance.close()
        await driver.destroy(instance.id)

    return check


async def _next_event(driver: DockerSandbox, sandbox_id: str, timeout: float = 30) -> SandboxEvent:
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
    path = Path(tempfile.mkdtemp(prefix="efdk-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def driver_factory(docker_engine: None, state_dir: Path) -> AsyncIterator[DriverFactory]:
    """``await driver_factory(runtimes=None, **options)``: a started driver, stopped after the test."""
    drivers: list[DockerSandbox] = []
    extra_dirs: list[str] = []

    async def make(runtimes: dict[str, Runtime] | None = None, **options: Any) -> DockerSandbox:
        if "state_dir" not in options:
            if drivers:
                extra_dirs.append(tempfile.mkdtemp(prefix="efdk-", dir="/tmp"))
            options["state_dir"] = Path(extra_dirs[-1]) if drivers else state_dir
        driver = DockerSandbox(**options)
        drivers.append(driver)
        await driver.start(runtimes if runtimes is not None else {"python": PythonRuntime()})
        return driver

    yield make
    for driver in drivers:
        await driver.stop()
    for path in extra_dirs:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def driver(driver_factory: DriverFactory) -> DockerSandbox:
    """A started driver with the Python runtime and an 8 MiB /tmp."""
    return await driver_factory(tmp_size_mb=8)
