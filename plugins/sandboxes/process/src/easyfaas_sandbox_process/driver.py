"""The process sandbox: each sandbox is a plain child process. No isolation at all.

For development and for hosts without Linux namespaces; the funclet warns when it is used.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import signal
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import psutil

from easyfaas.errors import SandboxError
from easyfaas.interfaces import Runtime, SandboxDriver
from easyfaas.models import SandboxEvent, SandboxInfo, SandboxStats, WarmupSpec
from easyfaas.sockets import connect_unix

__all__ = ["ProcessSandbox"]

#: How long a new runner may take to start listening.
START_TIMEOUT = 15.0
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child: get SIGKILL when the funclet dies, so no runner outlives it."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class ProcessSandbox(SandboxDriver):
    """Runs each runner as a child process in its own session, with a clean environment.

    Options: ``env`` — extra environment variables for every runner (e.g. a locale).
    """

    PLUGIN_NAME = "process"
    ISOLATION = "none: functions run as plain processes with the engine's privileges"

    def __init__(self, *, state_dir: Path, env: dict[str, str] | None = None) -> None:
        super().__init__(state_dir=state_dir)
        self.extra_env = dict(env or {})
        self._procs: dict[str, asyncio.subprocess.Process] = {}
        self._infos: dict[str, SandboxInfo] = {}
        self._destroyed: set[str] = set()
        self._events: asyncio.Queue[SandboxEvent] = asyncio.Queue()
        self._watchers: set[asyncio.Task[None]] = set()
        self._runner_dirs: dict[str, Path] = {}
        # setpriv sets the parent-death signal without a preexec_fn: a preexec_fn forces
        # fork() in the funclet's event loop (~9 ms blocked per sandbox) instead of vfork.
        setpriv = shutil.which("setpriv")
        self._prefix = [setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []

    async def start(self, runtimes: Mapping[str, Runtime]) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._clean_leftovers()
        for name, runtime in runtimes.items():
            runner_dir = self.state_dir / f"runner-{name}"
            runner_dir.mkdir()
            for file_name, source in runtime.runner_files().items():
                (runner_dir / file_name).symlink_to(source.resolve())
            self._runner_dirs[name] = runner_dir

    def _clean_leftovers(self) -> None:
        """Kill runners of a previous funclet that died without stopping, and remove their files."""
        for entry in self.state_dir.iterdir():
            pid_file = entry / "pid"
            if pid_file.is_file():
                with contextlib.suppress(ValueError, OSError, psutil.Error):
                    pid = int(pid_file.read_text())
                    # Only if that pid is still one of our runners (pids get reused).
                    if str(self.state_dir) in " ".join(psutil.Process(pid).cmdline()):
                        os.killpg(pid, signal.SIGKILL)
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)

    async def create(self, runtime: Runtime) -> SandboxInfo:
        sandbox_id = "p" + uuid.uuid4().hex[:12]
        directory = self.state_dir / sandbox_id
        directory.mkdir()
        socket_path = str(directory / "runner.sock")
        runner_dir = self._runner_dirs[runtime.PLUGIN_NAME]
        # The runner binds relative to its working directory: deep state dirs exceed sun_path's 107 bytes.
        argv = [*self._prefix, *runtime.runner_command(str(runner_dir), "runner.sock")]
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(directory), **self.extra_env}
        with open(directory / "stderr.log", "wb") as stderr:
            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv, cwd=directory, env=env, stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.DEVNULL, stderr=stderr, start_new_session=True,
                    preexec_fn=None if self._prefix else _die_with_parent,
                )  # fmt: skip
            except OSError as exc:
                shutil.rmtree(directory, ignore_errors=True)
                raise SandboxError(f"cannot start the {runtime.PLUGIN_NAME} runner {argv[len(self._prefix)]!r}: {exc}") from exc
        (directory / "pid").write_text(str(proc.pid))
        try:
            await self._wait_listening(socket_path, proc, directory)
        except SandboxError:
            await self._kill(proc)
            shutil.rmtree(directory, ignore_errors=True)
            raise
        info = SandboxInfo(id=sandbox_id, runtime=runtime.PLUGIN_NAME, socket_path=socket_path, pid=proc.pid)
        self._procs[sandbox_id] = proc
        self._infos[sandbox_id] = info
        task = asyncio.create_task(self._watch(sandbox_id, proc))
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)
        return info

    async def _wait_listening(self, socket_path: str, proc: asyncio.subprocess.Process, directory: Path) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        delay = 0.001
        while True:
            if proc.returncode is not None:
                err = (directory / "stderr.log").read_text(errors="replace")[-2000:]
                raise SandboxError(f"runner exited with code {proc.returncode} before listening: {err.strip()}")
            if os.path.exists(socket_path):
                try:
                    sock = await connect_unix(socket_path)
                except OSError:
                    pass
                else:
                    sock.close()
                    return
            if time.monotonic() > deadline:
                raise SandboxError(f"runner did not listen on {socket_path} within {START_TIMEOUT:.0f}s")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)

    async def _watch(self, sandbox_id: str, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        if sandbox_id in self._destroyed:
            return
        self._procs.pop(sandbox_id, None)
        self._infos.pop(sandbox_id, None)
        sig = -code if code < 0 else None
        message = f"runner killed by signal {sig}" if sig else f"runner exited with code {code}"
        self._events.put_nowait(
            SandboxEvent(sandbox_id, "exited", exit_code=None if sig else code, signal=sig, message=message)
        )
        shutil.rmtree(self.state_dir / sandbox_id, ignore_errors=True)

    async def warmup(self, sandbox_id: str, spec: WarmupSpec) -> str:
        if sandbox_id not in self._procs:
            raise SandboxError(f"no sandbox {sandbox_id!r}")
        # No isolation and no limits here: the code runs from where the store keeps it.
        return spec.code_dir

    async def destroy(self, sandbox_id: str) -> None:
        self._destroyed.add(sandbox_id)
        proc = self._procs.pop(sandbox_id, None)
        self._infos.pop(sandbox_id, None)
        if proc is not None:
            await self._kill(proc)
        shutil.rmtree(self.state_dir / sandbox_id, ignore_errors=True)

    async def _kill(self, proc: asyncio.subprocess.Process) -> None:
        # The runner's session holds every process a function started: kill them all.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            await proc.wait()

    async def stats(self, sandbox_id: str) -> SandboxStats:
        proc = self._procs.get(sandbox_id)
        if proc is None:
            raise SandboxError(f"no sandbox {sandbox_id!r}")
        try:
            p = psutil.Process(proc.pid)
            children = p.children(recursive=True)
            mem = p.memory_full_info()
            cpu = p.cpu_times()
        except psutil.Error as exc:
            raise SandboxError(f"sandbox {sandbox_id!r} is gone: {exc}") from exc
        return SandboxStats(
            id=sandbox_id, memory_rss=mem.rss, memory_uss=mem.uss, memory_peak=mem.rss,
            cpu_seconds=cpu.user + cpu.system, pids=1 + len(children),
        )  # fmt: skip

    async def events(self) -> AsyncIterator[SandboxEvent]:
        while True:
            yield await self._events.get()

    async def stop(self) -> None:
        for sandbox_id in list(self._procs):
            await self.destroy(sandbox_id)
        for task in list(self._watchers):
            task.cancel()
        for runner_dir in self._runner_dirs.values():
            shutil.rmtree(runner_dir, ignore_errors=True)
        self._runner_dirs.clear()

    def describe(self) -> dict[str, Any]:
        return {"sandboxes": len(self._procs)}
