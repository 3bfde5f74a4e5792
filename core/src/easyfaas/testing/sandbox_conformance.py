"""A conformance suite every sandbox driver runs against itself: real sandboxes, a real runner.

Two test classes, each a plugin's tests subclass (empty bodies are enough):

``SandboxConformance``
    what every ``SandboxDriver`` must do, isolating or not: create, bind, LOAD and INVOKE over
    ``easyfaas.wire``, destroy, events when a runner ends on its own, children killed with their
    sandbox, ``stop()`` leaving nothing behind, the engine's environment kept from functions.
``SandboxIsolationConformance``
    all of the above, plus DESIGN §7: adversarial functions that try to read host secrets and other
    functions' code, write outside ``/tmp``, fill ``/tmp``, fork-bomb, exhaust memory, reach the
    network, signal or ptrace host processes, mount, gain privileges through setuid, flood stdout —
    and must fail, each test then checking that a brand-new sandbox still serves calls. Also:
    leftovers of a crashed funclet are cleaned by the next start.

Writing an adapter
------------------
The suite takes everything driver-specific from a ``SandboxAdapter`` that the plugin's tests
return from a fixture named ``sandbox_adapter`` (a fixture, so that it can depend on whatever
brings the driver's host up first, e.g. a Docker engine)::

    class DockerAdapter(SandboxAdapter):
        driver_class = DockerSandbox
        tmp_option = "tmp_size_mb"

        def make_runtime(self) -> Runtime:
            return PythonRuntime()

    @pytest.fixture
    def sandbox_adapter(docker_engine: None) -> DockerAdapter:
        return DockerAdapter()

    class TestDockerConformance(SandboxIsolationConformance):
        pass

The suite's functions are Python source (``handler.py``, ``handler.handler``): ``make_runtime``
must return the Python runtime (core never imports a plugin, so the plugin's tests supply it).
A driver that cannot work on the host skips the suite with ``availability()``'s reason.

The same ``SandboxHarness`` (a started driver, functions on disk, sandboxes bound and LOADed,
a wire client) serves the plugin's own driver-specific tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import psutil
import pytest

from easyfaas import wire
from easyfaas.errors import SandboxError
from easyfaas.interfaces import Runtime, SandboxDriver
from easyfaas.models import SandboxEvent, SandboxInfo, WarmupSpec
from easyfaas.sockets import connect_unix
from easyfaas.wire import Kind

__all__ = [
    "HELLO",
    "IDENTITY",
    "READER",
    "SIGNALLER",
    "TMP_CAP_MB",
    "Instance",
    "SandboxAdapter",
    "SandboxConformance",
    "SandboxHarness",
    "SandboxIsolationConformance",
    "next_event",
    "paths_named",
]

#: The /tmp cap of the harness's standard driver (``SandboxHarness.standard_driver``).
TMP_CAP_MB = 8
#: At most this much of a sandbox's direct fd 1/2 output may stay on the host's disk.
KEPT_OUTPUT_CAP = 4 << 20
ZERO_CAPS = "0000000000000000"

HELLO = """
def handler(event, context):
    return {"hello": event}
"""

#: Everything a function can see of itself and its world; drivers' own tests check the details.
IDENTITY = """
import os, socket, sys

def handler(event, context):
    status = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            status[key] = value.strip()
    mounts = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            mounts[fields[4]] = fields[5].split(",")
    return {
        "ids": [os.getuid(), os.geteuid(), os.getgid(), os.getegid(), os.getgroups()],
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "hostname": socket.gethostname(),
        "status": {k: status.get(k) for k in ("CapEff", "CapPrm", "CapInh", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp")},
        "mounts": mounts,
        "root": sorted(os.listdir("/")),
        "env": dict(os.environ),
        "procs": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
        "ifaces": [name for _, name in socket.if_nameindex()],
        "own_fds_listable": len(os.listdir("/proc/self/fd")) > 0,
        "dev": sorted(os.listdir("/dev")),
        "sys_path": sys.path,
        "argv": sys.argv,
        "warm_modules": [m for m in sys.modules if "warm" in m],
        "tmp": os.listdir("/tmp"),
    }
"""

#: ``{"read": [paths], "list": [dirs]}`` → contents, listings, or the error's type name.
READER = """
import os

def handler(event, context):
    out = {}
    for path in event.get("read", []):
        try:
            with open(path, "rb") as f:
                out[path] = f.read().decode("utf-8", "replace")
        except OSError as e:
            out[path] = type(e).__name__
    for path in event.get("list", []):
        try:
            out["ls " + path] = sorted(os.listdir(path))
        except OSError as e:
            out["ls " + path] = type(e).__name__
    return out
"""


#: ``[[label, verb, pid], ...]`` with verb ``kill`` (SIGKILL), ``term`` (SIGTERM) or ``ptrace``
#: (PTRACE_ATTACH) → ``{label: "ok" or the errno's name}``.
SIGNALLER = """
import ctypes, errno, os, signal

def handler(event, context):
    libc = ctypes.CDLL(None, use_errno=True)
    out = {}
    for label, verb, pid in event:
        try:
            if verb == "ptrace":
                if libc.ptrace(16, pid, None, None) != 0:  # PTRACE_ATTACH
                    raise OSError(ctypes.get_errno(), "ptrace")
            else:
                os.kill(pid, signal.SIGKILL if verb == "kill" else signal.SIGTERM)
            out[label] = "ok"
        except OSError as e:
            out[label] = errno.errorcode.get(e.errno)
    return out
"""


def paths_named(directory: Path, name: str) -> list[str]:
    """Every path under ``directory`` with ``name`` in one of its components."""
    found = []
    for root, dirs, files in os.walk(directory):
        found += [os.path.join(root, entry) for entry in dirs + files if name in entry]
    return sorted(found)


class SandboxAdapter(ABC):
    """One driver, as the suite needs to know it. Override what differs from the defaults."""

    #: The driver under test; constructed as ``driver_class(state_dir=..., **options)``.
    driver_class: ClassVar[type[SandboxDriver]]
    #: The option that caps a sandbox's /tmp in MB, or None when the driver has no such cap.
    tmp_option: ClassVar[str | None] = None
    #: Processes an idle sandbox has (its init and the runner): all count against ``pids_max``.
    base_processes: ClassVar[int] = 2
    #: The uid functions run as (the drivers' default).
    uid: ClassVar[int] = 65534
    #: ``destroy`` also kills children that left the runner's session (``setsid`` daemons).
    kills_daemons: ClassVar[bool] = True
    #: Ended processes are also reaped (no zombie is left, the sandbox has a reaper of its own).
    reaps: ClassVar[bool] = True
    #: Event messages name the function version and the signal (``killed by SIGKILL``).
    describes_events: ClassVar[bool] = True

    @abstractmethod
    def make_runtime(self) -> Runtime:
        """The Python runtime the suite's functions run on (a new object each call)."""

    def unavailable(self) -> str | None:
        """Why the driver cannot run here (the suite then skips), or None."""
        return self.driver_class.availability()

    def make_driver(self, state_dir: Path, **options: Any) -> SandboxDriver:
        """A driver, not yet started."""
        return self.driver_class(state_dir=state_dir, **options)

    def sandbox_processes(self, runner_pid: int) -> list[psutil.Process]:
        """Every host process of a sandbox: by default its init (the runner's parent) and all under it."""
        init = psutil.Process(runner_pid).parent()
        assert init is not None
        return [init, *init.children(recursive=True)]

    def sandbox_leftovers(self, driver: SandboxDriver, sandbox_id: str) -> list[str]:
        """What of one sandbox is on the host besides its processes, a line each (``"<kind> <what>"``):
        by default the paths under the state_dir named after it; drivers add containers, cgroups.
        Not empty while the sandbox lives, empty once it is destroyed or has died. ``driver`` may be
        a driver that was never started, on the state_dir of a crashed one."""
        return [f"path {p}" for p in paths_named(driver.state_dir, sandbox_id)]

    def leftovers(self, driver: SandboxDriver) -> list[str]:
        """What the driver holds on the host beyond the files under its state_dir, a line each,
        without pids or other per-run values: mounts, helper processes (zygotes), and the host's
        records of its sandboxes (containers, cgroups), which name each live sandbox by its id.
        Empty once it has stopped."""
        return []

    def host_processes(self) -> dict[str, int]:
        """Host processes the driver depends on (e.g. a daemon), by name: no function may signal them."""
        return {}

    async def kept_output(self, driver: SandboxDriver, info: SandboxInfo) -> int:
        """Bytes of the sandbox's direct fd 1/2 output the driver keeps on the host (a container log)."""
        return 0

    def crash(self, funclet: subprocess.Popen[str]) -> None:
        """Kill a funclet process running the driver, as badly as the driver allows."""
        funclet.kill()


class Instance:
    """One sandbox as the funclet and controller use it: LOAD on one connection, INVOKEs on another."""

    def __init__(self, driver: SandboxDriver, info: SandboxInfo) -> None:
        self.driver = driver
        self.info = info
        self._conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._rid = 0

    @property
    def id(self) -> str:
        return self.info.id

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        # Socket paths under a deep state_dir exceed sun_path's 107 bytes: connect_unix copes, as the funclet does.
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
        """LOAD on a connection of its own: (kind, meta) of the reply."""
        conn = await self._open()
        try:
            meta = {
                "code_dir": code_dir, "handler": handler, "function": "f", "version": "1",
                "memory_mb": memory_mb, "env": env or {}, "instance": self.id,
            }  # fmt: skip
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


async def next_event(driver: SandboxDriver, sandbox_id: str, timeout: float = 30) -> SandboxEvent:
    """The next event about ``sandbox_id`` (``TimeoutError`` if none comes in ``timeout`` seconds)."""
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


class SandboxHarness:
    """Started drivers (stopped at ``close``), functions on disk, bound and LOADed sandboxes."""

    def __init__(self, adapter: SandboxAdapter, directory: Path) -> None:
        self.adapter = adapter
        self.runtime = adapter.make_runtime()
        self.directory = directory
        prefix = f"ef{adapter.driver_class.PLUGIN_NAME[:2]}-"
        self._prefix = prefix
        #: The first driver's state_dir: short, under /tmp, removed at ``close``.
        self.state_dir = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
        self._dirs = [self.state_dir]
        self._drivers: list[SandboxDriver] = []
        self._functions = 0

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, adapter: SandboxAdapter, directory: Path) -> AsyncIterator[SandboxHarness]:
        """A harness, or a skip with the reason when the driver cannot run here."""
        reason = adapter.unavailable()
        if reason is not None:
            pytest.skip(f"{adapter.driver_class.PLUGIN_NAME} sandbox unavailable: {reason}")
        harness = cls(adapter, directory)
        try:
            yield harness
        finally:
            await harness.close()

    def new_state_dir(self) -> Path:
        path = Path(tempfile.mkdtemp(prefix=self._prefix, dir="/tmp"))
        self._dirs.append(path)
        return path

    async def driver(self, runtimes: Mapping[str, Runtime] | None = None, **options: Any) -> SandboxDriver:
        """A started driver: on ``state_dir`` for the first, a fresh directory after, unless given."""
        if "state_dir" not in options:
            options["state_dir"] = self.new_state_dir() if self._drivers else self.state_dir
        driver = self.adapter.make_driver(**options)
        self._drivers.append(driver)
        await driver.start(runtimes if runtimes is not None else {self.runtime.PLUGIN_NAME: self.runtime})
        return driver

    async def standard_driver(self) -> SandboxDriver:
        """A started driver with its /tmp capped at ``TMP_CAP_MB`` where it has such an option."""
        tmp = self.adapter.tmp_option
        options: dict[str, Any] = {tmp: TMP_CAP_MB} if tmp else {}
        return await self.driver(**options)

    def function(self, source: str) -> str:
        """Write ``source`` as handler.py into a fresh, world-readable code directory; return its path."""
        code = self.directory / f"fn{self._functions}"
        self._functions += 1
        code.mkdir(parents=True)
        (code / "handler.py").write_text(textwrap.dedent(source))
        os.chmod(code, 0o755)
        os.chmod(code / "handler.py", 0o644)
        return str(code)

    async def bind(
        self, driver: SandboxDriver, code_dir: str, *, memory_mb: int = 128, pids_max: int = 64,
        cpu_share: float = 1.0, runtime: Runtime | None = None, key: str = "f:1", env: dict[str, str] | None = None,
    ) -> Instance:  # fmt: skip
        """A sandbox created, warmed up with ``code_dir`` and LOADed, as the funclet makes instances."""
        info = await driver.create(runtime or self.runtime)
        code = await driver.warmup(
            info.id, WarmupSpec(key, code_dir, memory_mb, 30.0, pids_max=pids_max, cpu_share=cpu_share)
        )
        instance = Instance(driver, info)
        kind, meta = await instance.load(code, memory_mb=memory_mb, env=env)
        assert kind == Kind.LOADED, meta
        return instance

    async def assert_healthy(self, driver: SandboxDriver) -> None:
        """The engine's other functions are unaffected: a brand-new sandbox still serves calls."""
        instance = await self.bind(driver, self.function(HELLO), key="healthy:1")
        assert await instance.result("again") == {"hello": "again"}
        await instance.close()
        await driver.destroy(instance.id)

    def still_running(self, procs: list[psutil.Process], timeout: float = 10.0) -> list[psutil.Process]:
        """Wait for ``procs`` to end; those that did not. Zombies count as running where the driver reaps."""
        if self.adapter.reaps:
            _, alive = psutil.wait_procs(procs, timeout=timeout)
            return list(alive)
        deadline = time.monotonic() + timeout
        while True:
            alive = []
            for proc in procs:
                with contextlib.suppress(psutil.NoSuchProcess):
                    if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                        alive.append(proc)
            if not alive or time.monotonic() > deadline:
                return alive
            time.sleep(0.05)

    async def close(self) -> None:
        for driver in self._drivers:
            await driver.stop()
        for path in self._dirs:
            shutil.rmtree(path, ignore_errors=True)


CRASHING_FUNCLET = """
import asyncio, importlib, json, sys
from pathlib import Path
from easyfaas.models import WarmupSpec

def load(path):
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)

async def main():
    driver = load(sys.argv[1])(state_dir=Path(sys.argv[3]))
    runtime = load(sys.argv[2])()
    await driver.start({runtime.PLUGIN_NAME: runtime})
    bound, generic = await driver.create(runtime), await driver.create(runtime)
    await driver.warmup(bound.id, WarmupSpec("f:1", sys.argv[4], 128, 10))
    print(json.dumps({"ids": [bound.id, generic.id], "pids": [bound.pid, generic.pid]}), flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


def _class_path(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


class SandboxConformance:
    """What every driver does. Subclass it as ``TestXxxConformance``; a ``sandbox_adapter`` fixture must exist."""

    @pytest.fixture
    async def harness(self, sandbox_adapter: SandboxAdapter, tmp_path: Path) -> AsyncIterator[SandboxHarness]:
        async with SandboxHarness.open(sandbox_adapter, tmp_path) as harness:
            yield harness

    @pytest.fixture
    async def driver(self, harness: SandboxHarness) -> SandboxDriver:
        """A started driver with the Python runtime and a ``TMP_CAP_MB`` /tmp."""
        return await harness.standard_driver()

    async def test_create_warmup_invoke_destroy(self, harness: SandboxHarness, driver: SandboxDriver) -> None:
        adapter = harness.adapter
        info = await driver.create(harness.runtime)
        assert info.runtime == harness.runtime.PLUGIN_NAME and info.state == "generic"
        assert info.socket_path.startswith(str(driver.state_dir)) and os.path.exists(info.socket_path)
        procs = adapter.sandbox_processes(info.pid)
        assert len(procs) == adapter.base_processes
        stats = await driver.stats(info.id)
        assert stats.id == info.id and stats.pids == adapter.base_processes
        assert stats.memory_rss > 0 and stats.memory_uss > 0 and stats.memory_peak > 0
        assert adapter.sandbox_leftovers(driver, info.id)

        code = await driver.warmup(info.id, WarmupSpec("hello:7", harness.function(HELLO), 96, 5.0))
        instance = Instance(driver, info)
        kind, meta = await instance.load(code, memory_mb=96)
        assert kind == Kind.LOADED, meta
        assert await instance.result([1, 2]) == {"hello": [1, 2]}
        await instance.close()

        await driver.destroy(info.id)
        await driver.destroy(info.id)  # twice is fine
        assert not os.path.exists(info.socket_path)
        assert harness.still_running(procs, timeout=5) == []
        assert adapter.sandbox_leftovers(driver, info.id) == []
        with pytest.raises(SandboxError):
            await driver.stats(info.id)
        await driver.destroy("no-such-sandbox")

    async def test_exits_are_reported_as_events(self, harness: SandboxHarness, driver: SandboxDriver) -> None:
        adapter = harness.adapter
        quitter = await harness.bind(
            driver, harness.function("import os\ndef handler(event, context):\n    os._exit(7)\n"), key="quit:2"
        )
        with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):
            await quitter.invoke()
        event = await next_event(driver, quitter.id)
        assert (event.kind, event.exit_code, event.signal) == ("exited", 7, None)
        assert "exited with code 7" in event.message
        if adapter.describes_events:
            assert "quit:2" in event.message

        victim = await harness.bind(driver, harness.function(HELLO), key="victim:1")
        os.kill(victim.info.pid, signal.SIGKILL)
        event = await next_event(driver, victim.id)
        assert (event.kind, event.signal) == ("exited", signal.SIGKILL)
        if adapter.describes_events:
            assert "killed by SIGKILL" in event.message
        # The driver cleaned up after the dead.
        for _ in range(100):
            if not adapter.sandbox_leftovers(driver, quitter.id) + adapter.sandbox_leftovers(driver, victim.id):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(
                f"the dead sandboxes were not removed: {adapter.sandbox_leftovers(driver, quitter.id)} "
                f"{adapter.sandbox_leftovers(driver, victim.id)}"
            )

        # A destroyed sandbox is not an event.
        destroyed = await driver.create(harness.runtime)
        await driver.destroy(destroyed.id)
        with pytest.raises(TimeoutError):
            await next_event(driver, destroyed.id, timeout=1.0)

    async def test_leftover_children_are_killed_on_destroy(
        self, harness: SandboxHarness, driver: SandboxDriver
    ) -> None:
        source = """
        import os, subprocess, sys, time

        def handler(event, context):
            if os.fork() == 0:  # a plain child
                time.sleep(3600)
                os._exit(0)
            if event["daemon"] and os.fork() == 0:  # a daemon: new session, orphaned grandchild
                os.setsid()
                if os.fork() == 0:
                    time.sleep(3600)
                    os._exit(0)
                os._exit(0)
            subprocess.Popen([sys.executable, "-I", "-S", "-c", "import time; time.sleep(3600)"])
            time.sleep(0.5)
            return "left them running"
        """
        daemon = harness.adapter.kills_daemons
        instance = await harness.bind(driver, harness.function(source))
        assert await instance.result({"daemon": daemon}) == "left them running"
        procs = harness.adapter.sandbox_processes(instance.info.pid)
        # (init and) the runner, the child, the subprocess and the daemon (plus a zombie intermediate)
        assert len(procs) >= harness.adapter.base_processes + 2 + daemon
        await instance.close()
        await driver.destroy(instance.id)
        assert harness.still_running(procs) == []
        await harness.assert_healthy(driver)

    async def test_concurrent_creates(self, harness: SandboxHarness, driver: SandboxDriver) -> None:
        code = harness.function(HELLO)
        instances = await asyncio.gather(*(harness.bind(driver, code, key=f"f:{i}") for i in range(8)))
        assert len({i.id for i in instances}) == 8
        results = await asyncio.gather(*(i.result(n) for n, i in enumerate(instances)))
        assert results == [{"hello": n} for n in range(8)]
        for instance in instances:
            await instance.close()
        await asyncio.gather(*(driver.destroy(i.id) for i in instances))
        assert [line for i in instances for line in harness.adapter.sandbox_leftovers(driver, i.id)] == []

    async def test_stop_leaves_nothing_behind(self, harness: SandboxHarness) -> None:
        adapter = harness.adapter
        driver = await harness.driver()  # default options, on harness.state_dir
        instances = [await harness.bind(driver, harness.function(HELLO), key=f"f:{i}") for i in range(2)]
        generic = await driver.create(harness.runtime)
        infos = [i.info for i in instances] + [generic]
        procs = [p for info in infos for p in adapter.sandbox_processes(info.pid)]
        running = adapter.leftovers(driver)
        for info in infos:
            assert adapter.sandbox_leftovers(driver, info.id), info.id
            if running:  # the host's records of the driver's sandboxes (containers, cgroups) show each one
                assert any(info.id in line for line in running), (info.id, running)
        for instance in instances:
            await instance.close()
        await driver.stop()
        assert harness.still_running(procs, timeout=5) == []
        assert [line for info in infos for line in adapter.sandbox_leftovers(driver, info.id)] == []
        assert adapter.leftovers(driver) == []
        assert os.listdir(harness.state_dir) == []
        await driver.stop()  # twice is fine

    async def test_engine_environment_is_not_inherited(
        self, harness: SandboxHarness, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("EASYFAAS_CONFORMANCE_SECRET", "hunter2-engine-secret")
        driver = await harness.driver()
        source = """
        import os

        def handler(event, context):
            out = {"env": dict(os.environ)}
            for path in ("/proc/self/environ", "/proc/1/environ"):
                try:
                    with open(path, "rb") as f:
                        out[path] = f.read().decode("utf-8", "replace")
                except OSError as e:
                    out[path] = type(e).__name__
            return out
        """
        instance = await harness.bind(driver, harness.function(source), env={"OWN": "mine"})
        got = await instance.result()
        assert "hunter2-engine-secret" not in str(got)
        assert "EASYFAAS_CONFORMANCE_SECRET" not in got["env"]
        assert got["env"]["OWN"] == "mine"  # the function's own environment arrives through LOAD
        await harness.assert_healthy(driver)


class SandboxIsolationConformance(SandboxConformance):
    """DESIGN §7 on top of ``SandboxConformance``: for every driver that isolates functions."""

    async def test_identity_privileges_and_view(self, harness: SandboxHarness, driver: SandboxDriver) -> None:
        uid = harness.adapter.uid
        instance = await harness.bind(driver, harness.function(IDENTITY))
        got = await instance.result()
        assert got["ids"][:4] == [uid] * 4
        assert set(got["ids"][4]) <= {uid}  # no supplementary group beyond its own
        # its init and the runner, nothing of the host
        assert len(got["procs"]) == harness.adapter.base_processes and got["procs"][0] == 1
        assert got["hostname"] == "sandbox"
        assert got["status"] == {
            "CapEff": ZERO_CAPS, "CapPrm": ZERO_CAPS, "CapInh": ZERO_CAPS, "CapBnd": ZERO_CAPS, "CapAmb": ZERO_CAPS,
            "NoNewPrivs": "1", "Seccomp": "2",
        }  # fmt: skip
        mounts = got["mounts"]
        for path in ("/", "/code", "/runner"):
            assert "ro" in mounts[path], (path, mounts[path])
        assert "rw" in mounts["/tmp"]
        for absent in ("var", "boot", "work", "mnt", "srv"):
            assert absent not in got["root"]
        assert set(got["env"]) <= {"PATH", "HOME", "TMPDIR", "LANG", "USER", "HOSTNAME"}
        assert got["ifaces"] == ["lo"]
        await harness.assert_healthy(driver)

    async def test_host_secrets_and_engine_state_are_invisible(
        self, harness: SandboxHarness, driver: SandboxDriver
    ) -> None:
        state_dir = driver.state_dir
        root_entries = [f"/root/{e}" for e in os.listdir("/root") if e != ".pyenv"] if os.path.isdir("/root") else []
        hidden = [str(state_dir), "/work", "/home", "/var", "/var/run", "/var/lib/docker"]
        instance = await harness.bind(driver, harness.function(READER))
        got = await instance.result(
            {
                "read": ["/etc/shadow", "/etc/gshadow", str(state_dir / "driver.json"), "/etc/passwd", *root_entries],
                "list": ["/root", *hidden],
            }
        )
        assert got["/etc/shadow"] == "FileNotFoundError"
        assert got["/etc/gshadow"] == "FileNotFoundError"
        assert got[str(state_dir / "driver.json")] == "FileNotFoundError"
        for path in hidden:
            assert got[f"ls {path}"] == "FileNotFoundError", path
        # /root exists only as the way to the Python install when it lives there (pyenv).
        assert got["ls /root"] in ("FileNotFoundError", [".pyenv"])
        for entry in root_entries:
            assert got[entry] == "FileNotFoundError", entry
        users = {line.split(":")[0] for line in got["/etc/passwd"].splitlines()}
        assert users == {"root", "sandbox"}
        await harness.assert_healthy(driver)

    async def test_python_install_shows_only_what_the_runtime_asked_for(
        self, harness: SandboxHarness, driver: SandboxDriver
    ) -> None:
        prefix = os.path.realpath(harness.runtime.host_paths()[0])
        if prefix == "/usr" or prefix.startswith("/usr/"):
            pytest.skip("this host's Python lives under /usr, which may be bound whole")
        parent = os.path.dirname(prefix)
        instance = await harness.bind(driver, harness.function(READER))
        got = await instance.result({"list": [parent]})
        assert got[f"ls {parent}"] == [os.path.basename(prefix)]
        await harness.assert_healthy(driver)

    async def test_other_functions_code_is_invisible(self, harness: SandboxHarness, driver: SandboxDriver) -> None:
        victim_code = harness.function("def handler(event, context):\n    return 'victim'\n")
        Path(victim_code, "secret.txt").write_text("TOP-SECRET-OF-A")
        os.chmod(Path(victim_code, "secret.txt"), 0o644)
        victim = await harness.bind(driver, victim_code, key="victim:1")
        attacker = await harness.bind(driver, harness.function(READER), key="attacker:1")
        got = await attacker.result(
            {
                "read": [f"{victim_code}/secret.txt", "/code/secret.txt"],
                "list": ["/code", victim_code, str(driver.state_dir / "mnt"), "/run/easyfaas"],
            }
        )
        assert got[f"{victim_code}/secret.txt"] == "FileNotFoundError"
        assert got["/code/secret.txt"] == "FileNotFoundError"
        assert got["ls /code"] == ["handler.py"]
        assert got[f"ls {victim_code}"] == "FileNotFoundError"
        assert got[f"ls {driver.state_dir / 'mnt'}"] == "FileNotFoundError"
        assert got["ls /run/easyfaas"] == ["runner.sock"]  # its own socket only
        assert "TOP-SECRET-OF-A" not in str(got)
        assert await victim.result() == "victim"  # the victim's own view is intact
        await harness.assert_healthy(driver)

    async def test_writes_outside_tmp_fail(self, harness: SandboxHarness, driver: SandboxDriver) -> None:
        source = """
        import errno, os

        def handler(event, context):
            out = {}
            for path in event:
                try:
                    with open(path, "w") as f:
                        f.write("x")
                    out[path] = "written to " + os.path.realpath(path)
                except OSError as e:
                    out[path] = errno.errorcode.get(e.errno, str(e))
            for path in ("/evil-dir", "/code/evil-dir", "/run/easyfaas/evil-dir", "/root/evil-dir"):
                try:
                    os.mkdir(path)
                    out["mkdir " + path] = "written to " + os.path.realpath(path)
                except OSError as e:
                    out["mkdir " + path] = errno.errorcode.get(e.errno, str(e))
            return out
        """
        targets = [
            "/evil", "/code/evil", "/code/handler.py", "/runner/evil", "/runner/easyfaas_runner.py", "/etc/passwd",
            "/etc/evil", "/etc/hosts", "/usr/lib/evil", "/dev/evil", "/dev/shm/evil", "/run/easyfaas/evil",
            "/proc/sys/kernel/hostname", "/sys/kernel/evil", "/tmp/fine",
        ]  # fmt: skip
        instance = await harness.bind(driver, harness.function(source))
        got = await instance.result(targets)
        assert got.pop("/tmp/fine") == "written to /tmp/fine"
        for path, outcome in got.items():
            # Refused, or (through a link such as /dev/shm -> /tmp) written into its own /tmp after all.
            assert outcome in ("EROFS", "EACCES", "EPERM", "ENOENT") or outcome.startswith("written to /tmp/"), (
                path,
                outcome,
            )
        # Nothing reached the host through the socket directory either.
        assert os.listdir(os.path.dirname(instance.info.socket_path)) == ["runner.sock"]
        await harness.assert_healthy(driver)

    async def test_tmp_is_private_and_capped(self, harness: SandboxHarness, driver: SandboxDriver) -> None:
        if harness.adapter.tmp_option is None:
            pytest.skip(f"the {harness.adapter.driver_class.PLUGIN_NAME} driver has no /tmp cap option")
        source = """
        import errno, os

        def handler(event, context):
            if event == "ls":
                return sorted(os.listdir("/tmp"))
            written = 0
            chunk = b"x" * (1 << 20)
            try:
                with open("/tmp/fill", "wb") as f:
                    while written < (1 << 30):
                        f.write(chunk)
                        f.flush()
                        written += len(chunk)
            except OSError as e:
                return {"errno": errno.errorcode.get(e.errno), "written": written}
            return {"errno": None, "written": written}
        """
        instance = await harness.bind(driver, harness.function(source))
        got = await instance.result()
        assert got["errno"] == "ENOSPC"
        assert got["written"] <= TMP_CAP_MB << 20
        assert (await instance.result())["errno"] == "ENOSPC"  # and the instance lives on
        other = await harness.bind(driver, harness.function(source), key="other:1")
        assert await other.result("ls") == []  # another sandbox's /tmp is its own
        await harness.assert_healthy(driver)

    async def test_fork_bomb_hits_the_pids_limit(self, harness: SandboxHarness, driver: SandboxDriver) -> None:
        source = """
        import errno, os, time

        def handler(event, context):
            forked, failures, err = 0, 0, None
            while failures < 30:
                try:
                    pid = os.fork()
                except OSError as e:
                    failures += 1
                    err = errno.errorcode.get(e.errno)
                    time.sleep(0.002)
                    continue
                if pid == 0:
                    while True:  # every child multiplies too
                        try:
                            os.fork()
                        except OSError:
                            time.sleep(0.05)
                forked += 1
            return {"errno": err, "forked": forked}
        """
        instance = await harness.bind(driver, harness.function(source), pids_max=16)
        got = await instance.result()
        assert got["errno"] == "EAGAIN"
        assert got["forked"] <= 16 - harness.adapter.base_processes  # init and the runner count against the 16
        procs = harness.adapter.sandbox_processes(instance.info.pid)
        assert len(procs) == 16  # the limit, exactly, is what stopped the bomb
        await instance.close()
        await driver.destroy(instance.id)
        assert harness.still_running(procs) == []
        await harness.assert_healthy(driver)

    async def test_memory_limit_ends_the_instance_as_oom_killed(
        self, harness: SandboxHarness, driver: SandboxDriver
    ) -> None:
        source = """
        def handler(event, context):
            hog = []
            while True:
                hog.append(b"x" * (8 << 20))
        """
        instance = await harness.bind(driver, harness.function(source), memory_mb=64, key="hog:3")
        with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):
            await instance.invoke()
        event = await next_event(driver, instance.id)
        assert event.kind == "oom_killed"
        assert event.signal == 9
        assert "hog:3" in event.message and "exceeded its 64 MB memory limit" in event.message
        await instance.close()
        await driver.destroy(instance.id)  # already gone: ignored
        await harness.assert_healthy(driver)

    async def test_network_is_loopback_only(self, harness: SandboxHarness, driver: SandboxDriver) -> None:
        accepted: list[object] = []
        server = await asyncio.start_server(lambda r, w: accepted.append(w), "0.0.0.0", 0)
        host_port = server.sockets[0].getsockname()[1]
        abstract_name = "\0easyfaas-conformance-" + str(os.getpid())
        abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        abstract.bind(abstract_name.encode())
        abstract.listen(1)
        host_ips = [a.address for addrs in psutil.net_if_addrs().values() for a in addrs if a.family == socket.AF_INET]
        source = """
        import errno, socket

        def handler(event, context):
            out = {}
            for host, port in event["tcp"]:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.settimeout(3)
                try:
                    s.connect((host, port))
                    out[f"{host}:{port}"] = "connected"
                except OSError as e:
                    out[f"{host}:{port}"] = errno.errorcode.get(e.errno, type(e).__name__) if e.errno else type(e).__name__
                finally:
                    s.close()
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(event["abstract"].encode("latin-1"))
                out["abstract"] = "connected"
            except OSError as e:
                out["abstract"] = errno.errorcode.get(e.errno)
            try:
                socket.getaddrinfo("example.com", 80)
                out["dns"] = "resolved"
            except OSError as e:
                out["dns"] = type(e).__name__
            srv = socket.socket()
            srv.bind(("127.0.0.1", 0))
            srv.listen(1)
            socket.create_connection(srv.getsockname(), timeout=3).close()
            out["own loopback"] = "ok"
            return out
        """
        try:
            instance = await harness.bind(driver, harness.function(source))
            targets = [["127.0.0.1", host_port], ["1.1.1.1", 53], ["10.255.255.1", 80]]
            targets += [[ip, host_port] for ip in host_ips if not ip.startswith("127.")]
            got = await instance.result({"tcp": targets, "abstract": abstract_name})
        finally:
            server.close()
            abstract.close()
        assert got.pop("own loopback") == "ok"
        assert got.pop(f"127.0.0.1:{host_port}") == "ECONNREFUSED"  # the sandbox's own, empty loopback
        assert got.pop("abstract") == "ECONNREFUSED"  # abstract unix sockets belong to the net namespace
        assert got.pop("dns") == "gaierror"
        for target, outcome in got.items():
            assert outcome == "ENETUNREACH", (target, outcome)
        assert accepted == []
        await harness.assert_healthy(driver)

    async def test_cannot_signal_or_ptrace_anything_outside(
        self, harness: SandboxHarness, driver: SandboxDriver
    ) -> None:
        targets = {"funclet": os.getpid(), **harness.adapter.host_processes()}
        attempts = [[f"{verb} {name}", verb, pid] for name, pid in targets.items() for verb in ("kill", "ptrace")]
        # The sandbox's init refuses, or ignores, a SIGKILL sent from inside its pid namespace.
        attempts += [["kill everyone", "kill", -1], ["kill init", "kill", 1]]
        instance = await harness.bind(driver, harness.function(SIGNALLER))
        got = await instance.result(attempts)
        assert got.pop("kill init") in ("ok", "EPERM")
        expected = {f"{verb} {name}": "ESRCH" for name in targets for verb in ("kill", "ptrace")}
        assert got == {**expected, "kill everyone": "ESRCH"}
        assert all(psutil.pid_exists(pid) for pid in targets.values())
        assert (await instance.result(attempts))["kill funclet"] == "ESRCH"  # still serving
        await harness.assert_healthy(driver)

    async def test_mounts_and_new_namespaces_are_refused(self, harness: SandboxHarness, driver: SandboxDriver) -> None:
        source = """
        import ctypes, errno, os

        def handler(event, context):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.syscall.restype = ctypes.c_long
            out = {}

            def call(name, rc):
                out[name] = "ok" if rc == 0 else errno.errorcode.get(ctypes.get_errno())
                if rc == 0 and name.startswith("clone"):
                    os._exit(0)  # only reached if the refusal failed, in the would-be child

            call("mount tmpfs", libc.mount(b"tmpfs", b"/tmp", b"tmpfs", 0, None))
            call("remount /code rw", libc.mount(None, b"/code", None, 0x20 | 0x1000, None))
            call("umount /code", libc.umount2(b"/code", 2))
            call("unshare user", libc.unshare(0x10000000))
            call("unshare user+mount", libc.unshare(0x10000000 | 0x00020000))
            call("unshare mount", libc.unshare(0x00020000))
            call("unshare net", libc.unshare(0x40000000))
            call("clone user", libc.syscall(56, 0x10000000 | 17, 0, 0, 0, 0) if os.uname().machine == "x86_64" else -1)
            call("chroot", libc.chroot(b"/tmp"))
            call("sethostname", libc.sethostname(b"evil", 4))
            call("setuid 0", libc.setuid(0))
            return out
        """
        instance = await harness.bind(driver, harness.function(source))
        got = await instance.result()
        assert set(got.values()) == {"EPERM"}, got
        await harness.assert_healthy(driver)

    async def test_setuid_binary_grants_nothing(self, harness: SandboxHarness, driver: SandboxDriver) -> None:
        real_id = shutil.which("id")
        if real_id is None:
            pytest.skip("no id(1) binary on this host to make setuid")
        source = """
        import subprocess

        def handler(event, context):
            out = {}
            for binary in ("/code/id", event):
                try:
                    run = subprocess.run([binary, "-u"], capture_output=True, text=True)
                except OSError as e:  # the host's binary may not be in the sandbox's view at all
                    out[binary] = {"euid": None, "rc": None, "stderr": type(e).__name__}
                    continue
                out[binary] = {"euid": run.stdout.strip(), "rc": run.returncode, "stderr": run.stderr}
            with open("/proc/self/status") as f:
                out["nnp"] = [line.split()[1] for line in f if line.startswith("NoNewPrivs")][0]
            return out
        """
        code = harness.function(source)
        shutil.copy(real_id, f"{code}/id")
        os.chown(f"{code}/id", 0, 0)
        os.chmod(f"{code}/id", 0o4755)  # setuid root
        host_setuid = next((p for p in ("/usr/bin/su", "/usr/bin/passwd", "/usr/bin/mount") if os.path.exists(p)), None)
        instance = await harness.bind(driver, code)
        got = await instance.result(host_setuid or "/code/id")
        assert got["/code/id"]["rc"] == 0, got
        assert got["/code/id"]["euid"] == str(harness.adapter.uid)
        assert got["nnp"] == "1"
        with open(f"/proc/{instance.info.pid}/status") as f:
            assert f"Uid:\t{harness.adapter.uid}" in f.read()
        if host_setuid:  # the host's own setuid binaries do not elevate either
            assert got[host_setuid]["euid"] != "0"
        await harness.assert_healthy(driver)

    async def test_orphans_are_reaped(self, harness: SandboxHarness, driver: SandboxDriver) -> None:
        source = """
        import os, time

        def states():
            found = {}
            for p in os.listdir("/proc"):
                if p.isdigit():
                    with open(f"/proc/{p}/stat") as f:
                        found[p] = f.read().rsplit(")", 1)[1].split()[0]
            return found

        def handler(event, context):
            before = states()
            pid = os.fork()
            if pid == 0:
                if os.fork() == 0:
                    time.sleep(0.2)  # dies as an orphan: pid 1 must reap it
                    os._exit(0)
                os._exit(0)
            os.waitpid(pid, 0)
            time.sleep(1.0)
            return {"before": before, "after": states()}
        """
        instance = await harness.bind(driver, harness.function(source))
        got = await instance.result()
        assert "Z" not in got["after"].values(), got
        assert sorted(got["after"]) == sorted(got["before"])
        assert len(got["after"]) == harness.adapter.base_processes
        await harness.assert_healthy(driver)

    async def test_flooding_stdout_is_capped_and_survived(self, harness: SandboxHarness, driver: SandboxDriver) -> None:
        source = """
        import os, sys

        def handler(event, context):
            chunk = "y" * (1 << 20)
            for _ in range(300):
                print(chunk)
            for _ in range(50):
                os.write(1, chunk.encode())
                os.write(2, chunk.encode())
            sys.stderr.write(chunk * 10)
            return "survived"
        """
        instance = await harness.bind(driver, harness.function(source))
        kind, meta, body = await instance.invoke()
        assert kind == Kind.RESULT and body == "survived"
        assert meta["truncated"] > 0
        assert len(meta.get("logs", "")) <= 1 << 20
        assert await instance.result() == "survived"
        # What went to fd 1/2 directly does not fill the host's disk either.
        assert await harness.adapter.kept_output(driver, instance.info) <= KEPT_OUTPUT_CAP
        await harness.assert_healthy(driver)

    async def test_warmup_refuses_bad_requests(
        self, harness: SandboxHarness, driver: SandboxDriver, tmp_path: Path
    ) -> None:
        info = await driver.create(harness.runtime)
        with pytest.raises(SandboxError, match="unknown sandbox"):
            await driver.warmup("nope", WarmupSpec("f:1", harness.function(HELLO), 128, 5.0))
        with pytest.raises(SandboxError, match="No such file"):
            await driver.warmup(info.id, WarmupSpec("f:1", str(tmp_path / "missing"), 128, 5.0))
        private = harness.function(HELLO)
        os.chmod(private, 0o700)
        with pytest.raises(SandboxError, match=f"not readable by the sandbox uid {harness.adapter.uid}"):
            await driver.warmup(info.id, WarmupSpec("f:1", private, 128, 5.0))
        # A refused warmup leaves the sandbox generic and usable, once.
        assert await driver.warmup(info.id, WarmupSpec("hello:7", harness.function(HELLO), 128, 5.0)) == "/code"
        with pytest.raises(SandboxError, match="already bound to hello:7"):
            await driver.warmup(info.id, WarmupSpec("other:1", harness.function(HELLO), 96, 5.0))

    @pytest.mark.slow
    async def test_leftovers_of_a_crashed_run_are_cleaned(self, harness: SandboxHarness) -> None:
        adapter, state_dir = harness.adapter, harness.state_dir
        # What a clean start holds on this state_dir: the restart after the crash must hold exactly that.
        clean = await harness.driver(state_dir=state_dir)
        baseline = (adapter.leftovers(clean), paths_named(state_dir, ""))
        await clean.stop()

        script = harness.directory / "crashing_funclet.py"
        script.write_text(CRASHING_FUNCLET)
        argv = [_class_path(adapter.driver_class), _class_path(type(harness.runtime)), str(state_dir)]
        funclet = subprocess.Popen(
            [sys.executable, str(script), *argv, harness.function(HELLO)], stdout=subprocess.PIPE, text=True
        )
        try:
            assert funclet.stdout is not None
            line = await asyncio.wait_for(asyncio.to_thread(funclet.stdout.readline), 60)
            crashed = json.loads(line)
            procs = [p for pid in crashed["pids"] for p in adapter.sandbox_processes(pid)]
            adapter.crash(funclet)
        finally:
            funclet.wait(10)
        probe = adapter.make_driver(state_dir=state_dir)  # never started: a view of the state_dir
        held = {sid: adapter.sandbox_leftovers(probe, sid) for sid in crashed["ids"]}
        assert all(p.is_running() for p in procs)  # sandboxes outlive the funclet: only the next run can clean
        assert all(held.values()), held
        records = adapter.leftovers(probe)
        if records:  # the host's records of the crashed run's sandboxes (containers, cgroups) show each one
            assert all(any(sid in line for line in records) for sid in crashed["ids"]), records
        assert any(line.startswith("mount ") for line in held[crashed["ids"][0]])  # the bound code is still mounted

        driver = await harness.driver(state_dir=state_dir)
        assert harness.still_running(procs, timeout=5) == []
        assert [line for sid in crashed["ids"] for line in adapter.sandbox_leftovers(driver, sid)] == []
        assert (adapter.leftovers(driver), paths_named(state_dir, "")) == baseline
        await harness.assert_healthy(driver)
