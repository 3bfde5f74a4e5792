"""The ``namespace`` sandbox driver: Linux namespaces, cgroups and pivot_root, forked from per-runtime zygotes.

Runs inside the funclet (asyncio, root); README.md explains the isolation model and the options.
"""

from __future__ import annotations

import array
import asyncio
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import psutil

from easyfaas.errors import ConfigurationError, SandboxError
from easyfaas.interfaces import Runtime, SandboxDriver
from easyfaas.models import SandboxEvent, SandboxInfo, SandboxStats, WarmupSpec
from easyfaas_sandbox_namespace import _cgroups, _hostfs
from easyfaas_sandbox_namespace import _linux as L
from easyfaas_sandbox_namespace._zygote import CODE_DIR, RUNNER_DIR, SOCKET_DIR, SOCKET_NAME

__all__ = ["NamespaceSandbox"]

log = logging.getLogger("easyfaas.sandbox.namespace")

_MiB = 1 << 20
#: Where the dynamic loader and the C library live; bound read-only when present.
_SYSTEM_PATHS = ("/lib", "/lib64", "/lib32", "/usr/lib", "/usr/lib64", "/usr/lib32")
_ZYGOTE = str(Path(__file__).with_name("_zygote.py"))
_ZYGOTE_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
_CGROUP_PREFIX = "easyfaas-ns-"
_ID_BYTES = 5


@dataclass(eq=False)
class _Sandbox:
    id: str
    runtime: str
    sock_dir: str
    code_mount: str
    ready: asyncio.Future[None]
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    state: str = "creating"  # creating | generic | bound | dead
    pidfd: int = -1
    status_fd: int = -1
    runner_pid: int = 0
    buf: bytes = b""
    error: str = ""
    exit_status: int | None = None
    destroying: bool = False
    preparing: asyncio.Future[None] | None = None
    code_bound: bool = False
    function_key: str = ""
    memory_mb: int = 0
    pids_max: int = 0
    cpu_share: float = 0.0

    @property
    def socket_path(self) -> str:
        return f"{self.sock_dir}/{SOCKET_NAME}"


class _Zygote:
    """The driver's end of one zygote: a SOCK_SEQPACKET control socket carrying JSON and fds."""

    def __init__(self, runtime: str, proc: subprocess.Popen[bytes], sock: socket.socket) -> None:
        self.runtime = runtime
        self.proc = proc
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        self.pending: dict[int, asyncio.Future[tuple[dict[str, Any], list[int]]]] = {}
        self.seq = 0
        self.dead: str | None = None
        sock.setblocking(False)
        self.loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        while True:
            try:
                msg, ancdata, _flags, _addr = self.sock.recvmsg(
                    65536, socket.CMSG_SPACE(4 * array.array("i").itemsize), socket.MSG_CMSG_CLOEXEC
                )
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._fail(f"its control socket failed: {exc}")
                return
            fds = array.array("i")
            for level, kind, data in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
            if not msg:
                self._fail(self._exit_reason())
                return
            reply = json.loads(msg)
            future = self.pending.pop(int(reply.get("seq", -1)), None)
            if future is None or future.done():
                for fd in fds:
                    os.close(fd)
                continue
            future.set_result((reply, list(fds)))

    def _exit_reason(self) -> str:
        code = self.proc.poll()  # called from a reader callback: never block the loop
        if code is None:
            return "it closed its control socket"
        return f"it exited with code {code}" if code >= 0 else f"it was killed by {signal.Signals(-code).name}"

    def _fail(self, why: str) -> None:
        self.dead = why
        self.loop.remove_reader(self.sock.fileno())
        for future in self.pending.values():
            if not future.done():
                future.set_exception(SandboxError(f"zygote of runtime {self.runtime!r} is gone: {why}"))
        self.pending.clear()

    async def request(self, payload: dict[str, Any], fd: int | None = None) -> tuple[dict[str, Any], list[int]]:
        if self.dead is not None:
            raise SandboxError(f"zygote of runtime {self.runtime!r} is gone: {self.dead}")
        seq = int(payload.get("seq", 0)) if "seq" in payload else self._next_seq()
        payload["seq"] = seq
        future: asyncio.Future[tuple[dict[str, Any], list[int]]] = self.loop.create_future()
        self.pending[seq] = future
        ancdata = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]).tobytes())] if fd is not None else []
        data = json.dumps(payload).encode()
        while True:
            try:
                self.sock.sendmsg([data], ancdata)
                break
            except BlockingIOError:
                await self._writable()
            except OSError as exc:
                self.pending.pop(seq, None)
                raise SandboxError(f"zygote of runtime {self.runtime!r} is unreachable: {exc}") from exc
        return await future

    def _next_seq(self) -> int:
        self.seq += 1
        return self.seq

    async def _writable(self) -> None:
        future: asyncio.Future[None] = self.loop.create_future()
        self.loop.add_writer(self.sock.fileno(), _wake, future)
        try:
            await future
        finally:
            self.loop.remove_writer(self.sock.fileno())

    async def close(self) -> None:
        if self.dead is None:
            self._fail("the driver stopped")
        self.sock.close()  # EOF: the zygote kills what it still has and exits
        try:
            await asyncio.to_thread(self.proc.wait, 5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            await asyncio.to_thread(self.proc.wait)


class NamespaceSandbox(SandboxDriver):
    """Sandboxes built from Linux namespaces, cgroups and a minimal pivot_root'ed root.

    Options (the profile's ``sandboxes: {namespace: {...}}`` section):

    ``tmp_size_mb`` (64)
        size of each sandbox's private, writable ``/tmp`` (a tmpfs; counts against memory).
    ``uid`` / ``gid`` (65534 / same as uid)
        identity the function runs as; never 0.
    ``pids_max`` (64), ``generic_memory_mb`` (128), ``cpu_share`` (1.0)
        limits of a generic sandbox, before ``warmup`` applies the function's own.
    ``cgroup_parent`` (the funclet's own cgroup)
        path, inside each cgroup hierarchy, under which the driver makes its cgroups.
    ``extra_ro_paths`` ([])
        more host paths to show read-only in every sandbox (e.g. ``/usr/share/zoneinfo``).
    ``hostname`` ("sandbox"), ``seccomp`` (true), ``create_timeout`` (10 s).
    """

    PLUGIN_NAME: ClassVar[str] = "namespace"
    ISOLATION: ClassVar[str] = (
        "pid/mount/net/uts/ipc namespaces, pivot_root onto a minimal read-only root, "
        "cgroup memory/pids/cpu limits, unprivileged uid without capabilities, no_new_privs, seccomp"
    )

    def __init__(
        self,
        *,
        state_dir: Path,
        tmp_size_mb: int = 64,
        uid: int = 65534,
        gid: int | None = None,
        pids_max: int = 64,
        generic_memory_mb: int = 128,
        cpu_share: float = 1.0,
        cgroup_parent: str | None = None,
        extra_ro_paths: Sequence[str] = (),
        hostname: str = "sandbox",
        seccomp: bool = True,
        create_timeout: float = 10.0,
    ) -> None:
        super().__init__(state_dir=Path(state_dir).absolute())
        problems = []
        if not 1 <= tmp_size_mb <= 1 << 20:
            problems.append(f"tmp_size_mb must be between 1 and {1 << 20}, got {tmp_size_mb}")
        if uid <= 0 or (gid is not None and gid <= 0):
            problems.append("uid and gid must be positive: functions never run as root")
        if pids_max < 4:
            problems.append(f"pids_max must be at least 4 (the sandbox's own processes count), got {pids_max}")
        if cpu_share < 0:
            problems.append(f"cpu_share must be 0 (no cap) or more, got {cpu_share}")
        if create_timeout <= 0:
            problems.append(f"create_timeout must be positive, got {create_timeout}")
        if generic_memory_mb < 16:
            problems.append(f"generic_memory_mb must be at least 16, got {generic_memory_mb}")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.-]{0,62}", hostname):
            problems.append(f"hostname {hostname!r} is not a valid host name")
        for path in extra_ro_paths:
            if not os.path.isabs(path):
                problems.append(f"extra_ro_paths entry {path!r} is not absolute")
        if problems:
            raise ConfigurationError("namespace sandbox: " + "; ".join(problems))
        self.tmp_size = tmp_size_mb * _MiB
        self.uid = uid
        self.gid = gid if gid is not None else uid
        self.pids_max = pids_max
        self.generic_memory_mb = generic_memory_mb
        self.cpu_share = cpu_share
        self.cgroup_parent = cgroup_parent
        self.extra_ro_paths = list(extra_ro_paths)
        self.hostname = hostname
        self.seccomp = seccomp
        self.create_timeout = create_timeout
        digest = hashlib.sha256(str(self.state_dir).encode()).hexdigest()[:10]
        self._cgroup_name = _CGROUP_PREFIX + digest
        self._tree: _cgroups.CgroupTree | None = None
        self._zygotes: dict[str, _Zygote] = {}
        self._zygote_locks: dict[str, asyncio.Lock] = {}
        self._sandboxes: dict[str, _Sandbox] = {}
        self._events: asyncio.Queue[SandboxEvent | None] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()
        self._staging: str | None = None
        self._started = False
        self._stopping = False

    # -- paths ------------------------------------------------------------------------------

    def _path(self, *parts: str) -> str:
        return os.path.join(str(self.state_dir), *parts)

    @property
    def _record(self) -> str:
        return self._path("driver.json")

    # -- availability -----------------------------------------------------------------------

    @classmethod
    def availability(cls) -> str | None:
        if not sys.platform.startswith("linux"):
            return "needs Linux (namespaces, cgroups, pivot_root)"
        if os.geteuid() != 0:
            return "needs root: it creates namespaces, mounts and cgroups (run the funclet as root)"
        for ns in ("pid", "mnt", "net", "uts", "ipc"):
            if not os.path.exists(f"/proc/self/ns/{ns}"):
                return f"the kernel has no {ns} namespaces (/proc/self/ns/{ns} is missing)"
        try:
            os.close(os.pidfd_open(os.getpid()))
        except (AttributeError, OSError) as exc:
            return f"needs pidfds (Linux 5.3+): {exc}"
        try:
            _cgroups.open_tree("probe")
        except (_cgroups.CgroupUnavailableError, OSError) as exc:
            return f"no usable cgroups: {exc}"
        return None

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self, runtimes: Mapping[str, Runtime]) -> None:
        if self._started:
            raise SandboxError("namespace sandbox: start() was already called")
        reason = self.availability()
        if reason is not None:
            raise SandboxError(f"namespace sandbox unavailable: {reason}")
        try:
            self._tree = _cgroups.open_tree(self._cgroup_name, self.cgroup_parent)
        except _cgroups.CgroupUnavailableError as exc:
            raise SandboxError(f"namespace sandbox: {exc}") from None
        self.state_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.state_dir, 0o700)
        await asyncio.to_thread(self._clean_leftovers)
        try:
            self._tree.setup()
        except OSError as exc:
            raise SandboxError(f"namespace sandbox: cannot set up cgroups: {exc}") from exc
        with open(self._record, "w") as f:
            json.dump({"cgroups": self._tree.dirs}, f)
        for name in ("sock", "mnt", "root", "runners"):
            os.mkdir(self._path(name), 0o700)
        os.chmod(self._path("mnt"), 0o755)
        _hostfs.make_anchor(self._path("mnt"))
        if not L.new_mount_api():
            self._staging = self._path("stage")
            os.mkdir(self._staging, 0o700)
            _hostfs.make_private_anchor(self._staging)
        self._started = True
        for runtime in runtimes.values():
            await self._zygote_for(runtime)

    def _clean_leftovers(self) -> None:
        """Kill, unmount and remove what a previous run on this state_dir left behind."""
        assert self._tree is not None
        dirs = set(self._tree.dirs)
        try:
            with open(self._record) as f:
                recorded = json.load(f).get("cgroups", [])
            # Only our own naming: a damaged record must never aim the sweep at a foreign cgroup.
            dirs.update(d for d in recorded if isinstance(d, str) and os.path.basename(d).startswith(_CGROUP_PREFIX))
        except (OSError, ValueError, AttributeError):
            pass
        left = _cgroups.sweep(sorted(dirs))
        if left:
            raise SandboxError(f"namespace sandbox: cannot remove leftover cgroups {left}")
        stuck = _hostfs.unmount_under(str(self.state_dir))
        if stuck:
            raise SandboxError(f"namespace sandbox: cannot unmount leftovers {stuck}")
        for name in ("sock", "mnt", "root", "runners", "stage", "driver.json"):
            _hostfs.remove_tree(self._path(name))

    async def stop(self) -> None:
        self._stopping = True
        results = await asyncio.gather(*(self.destroy(sid) for sid in list(self._sandboxes)), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                log.warning("namespace sandbox: %s", result)
        for zygote in list(self._zygotes.values()):
            await zygote.close()
        self._zygotes.clear()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._started and self._tree is not None:
            left = await asyncio.to_thread(self._tree.teardown)
            if left:
                log.warning("namespace sandbox: cgroups left behind: %s", left)
            await asyncio.to_thread(self._clean_leftovers)
        self._started = False
        self._events.put_nowait(None)

    # -- zygotes ----------------------------------------------------------------------------

    async def _zygote_for(self, runtime: Runtime) -> _Zygote:
        name = runtime.PLUGIN_NAME
        lock = self._zygote_locks.setdefault(name, asyncio.Lock())
        async with lock:
            zygote = self._zygotes.get(name)
            if zygote is not None and zygote.dead is None:
                return zygote
            if zygote is not None:
                log.warning("namespace sandbox: restarting the zygote of %r (%s)", name, zygote.dead)
                await zygote.close()
            zygote = await self._start_zygote(runtime)
            self._zygotes[name] = zygote
            return zygote

    def _zygote_leaf(self, name: str) -> str:
        return "zygote-" + re.sub(r"[^A-Za-z0-9_.-]", "_", name)

    async def _start_zygote(self, runtime: Runtime) -> _Zygote:
        assert self._tree is not None
        name = runtime.PLUGIN_NAME
        runner_dir = self._path("runners", re.sub(r"[^A-Za-z0-9_.-]", "_", name))
        _hostfs.remove_tree(runner_dir)
        os.mkdir(runner_dir, 0o755)
        for file_name, source in runtime.runner_files().items():
            if "/" in file_name or file_name in ("", ".", ".."):
                raise SandboxError(f"runtime {name!r}: runner file name {file_name!r} is not a plain file name")
            shutil.copyfile(source, os.path.join(runner_dir, file_name))
            os.chmod(os.path.join(runner_dir, file_name), 0o644)
        entry = runtime.python_entry()
        command = runtime.runner_command(RUNNER_DIR, f"{SOCKET_DIR}/{SOCKET_NAME}")
        interpreter = command[0] if entry else os.path.realpath(sys.executable)
        leaf = self._zygote_leaf(name)
        _cgroups.sweep(self._tree.leaf_dirs(leaf))
        self._tree.create(leaf)
        path_dirs = [os.path.dirname(command[0])] if os.path.isabs(command[0]) else []
        config = {
            "runtime": name,
            "runner_dir": runner_dir,
            "entry": list(entry) if entry else None,
            "command": command,
            "cgroups": self._tree.procs_files(leaf),
            "root": self._path("root"),
            "layout": self._layout(runtime),
            "tmp_size": self.tmp_size,
            "uid": self.uid,
            "gid": self.gid,
            "hostname": self.hostname,
            "seccomp": self.seccomp,
            "env": {
                "PATH": ":".join([*path_dirs, "/usr/local/bin", "/usr/bin", "/bin"]),
                "HOME": "/tmp",
                "TMPDIR": "/tmp",
                "LANG": "C.UTF-8",
                "USER": "sandbox",
            },
            "passwd": f"root:x:0:0:root:/root:/usr/sbin/nologin\nsandbox:x:{self.uid}:{self.gid}:sandbox:/tmp:/usr/sbin/nologin\n",
            "group": f"root:x:0:\nsandbox:x:{self.gid}:\n",
            "hosts": "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
        }
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            proc = subprocess.Popen(
                [interpreter, "-I", "-S", "-B", _ZYGOTE, str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
                env=_ZYGOTE_ENV,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                cwd="/",
            )
        except OSError as exc:
            ours.close()
            raise SandboxError(f"cannot start the zygote of runtime {name!r} with {interpreter}: {exc}") from exc
        finally:
            theirs.close()
        zygote = _Zygote(name, proc, ours)
        try:
            reply, _ = await asyncio.wait_for(zygote.request({"seq": 0, **config}), 60)
        except (SandboxError, TimeoutError) as exc:
            await zygote.close()
            raise SandboxError(f"the zygote of runtime {name!r} did not start: {exc}") from None
        if "error" in reply:
            await zygote.close()
            raise SandboxError(f"the zygote of runtime {name!r} failed to start: {reply['error']}")
        return zygote

    def _layout(self, runtime: Runtime) -> list[list[str]]:
        """Read-only binds and symlinks that make up the root, as (kind, source, dest) rows.

        Binds land at the real path of what they show; each symlink on the way (``/lib`` ->
        ``usr/lib``) is recreated, so the runtime's paths resolve inside as they do outside.
        """
        binds: dict[str, str] = {}
        links: dict[str, str] = {}
        for path in [*runtime.host_paths(), *_SYSTEM_PATHS, *self.extra_ro_paths]:
            if not os.path.isabs(path) or not os.path.lexists(path):
                continue
            chain, real = _symlink_chain(os.path.normpath(path))
            links.update(chain)
            if os.path.isdir(real):
                binds[real] = "dir"
            elif os.path.isfile(real):
                binds[real] = "file"
        kept: list[str] = []
        for dest in sorted(binds):
            if not any(dest.startswith(k.rstrip("/") + "/") for k in kept):
                kept.append(dest)
        rows = [[binds[dest], dest, dest] for dest in kept]
        for link, text in sorted(links.items()):
            if not any(link.startswith(k.rstrip("/") + "/") for k in kept):
                rows.append(["symlink", text, link])
        return rows

    # -- sandboxes --------------------------------------------------------------------------

    def _check_running(self) -> _cgroups.CgroupTree:
        if not self._started or self._stopping or self._tree is None:
            raise SandboxError("namespace sandbox: the driver is not running (start() first, or stopped)")
        return self._tree

    async def create(self, runtime: Runtime) -> SandboxInfo:
        tree = self._check_running()
        zygote = await self._zygote_for(runtime)
        loop = asyncio.get_running_loop()
        sid = secrets.token_hex(_ID_BYTES)
        sb = _Sandbox(
            id=sid,
            runtime=runtime.PLUGIN_NAME,
            sock_dir=self._path("sock", sid),
            code_mount=self._path("mnt", sid),
            ready=loop.create_future(),
            memory_mb=self.generic_memory_mb,
            pids_max=self.pids_max,
            cpu_share=self.cpu_share,
        )
        self._sandboxes[sid] = sb
        try:
            try:
                # Off the event loop: a millisecond or more of filesystem and cgroup writes, which
                # would delay a warm-up served meanwhile (the pool refills while cold starts run).
                # Shielded: a teardown waits for it, so it never races the thread's mkdirs.
                sb.preparing = asyncio.ensure_future(asyncio.to_thread(self._prepare, tree, sb))
                await asyncio.shield(sb.preparing)
            except OSError as exc:
                raise SandboxError(f"sandbox {sid}: cannot prepare its directories and cgroups: {exc}") from exc
            if sb.destroying:
                raise SandboxError(f"sandbox {sid} was destroyed while it was being created")
            status_r, status_w = os.pipe2(os.O_CLOEXEC)
            sb.status_fd = status_r
            os.set_blocking(status_r, False)
            try:
                request = {
                    "op": "fork",
                    "id": sid,
                    "cgroups": tree.procs_files(sid),
                    "sock_dir": sb.sock_dir,
                    "code_dir": sb.code_mount,
                }
                reply, fds = await asyncio.wait_for(zygote.request(request, status_w), self.create_timeout)
            except TimeoutError:
                raise SandboxError(f"sandbox {sid}: the zygote of {sb.runtime!r} did not answer") from None
            finally:
                os.close(status_w)
            if fds:
                sb.pidfd = fds[0]
                for extra in fds[1:]:
                    os.close(extra)
            if sb.destroying:
                raise SandboxError(f"sandbox {sid} was destroyed while it was being created")
            if "error" in reply or sb.pidfd < 0:
                raise SandboxError(f"sandbox {sid}: the zygote could not fork it: {reply.get('error', 'no pidfd')}")
            loop.add_reader(status_r, self._on_status, sb)
            try:
                await asyncio.wait_for(asyncio.shield(sb.ready), self.create_timeout)
            except TimeoutError:
                raise SandboxError(
                    f"sandbox {sid}: the runner of {sb.runtime!r} did not listen within {self.create_timeout:g} s"
                ) from None
            if sb.destroying:
                raise SandboxError(f"sandbox {sid} was destroyed while it was being created")
            if sb.status_fd < 0:
                raise SandboxError(
                    f"sandbox {sid} ({sb.runtime}) exited right after it started{_describe_status(sb.exit_status)}"
                )
            # The runner has bound its socket: from now on the directory is root's, so the
            # function can create nothing there (the host disk is not its /tmp).
            os.chown(sb.sock_dir, 0, 0)
            os.chmod(sb.sock_dir, 0o755)
            init_pid = int(reply["pid"])
            sb.runner_pid = _first_child(init_pid) or init_pid
            sb.state = "generic"
        except BaseException:
            sb.destroying = True
            try:
                await self._teardown(sb)
            except SandboxError as exc:
                log.warning("namespace sandbox: %s", exc)
            raise
        return SandboxInfo(id=sid, runtime=sb.runtime, socket_path=sb.socket_path, pid=sb.runner_pid)

    def _prepare(self, tree: _cgroups.CgroupTree, sb: _Sandbox) -> None:
        """A new sandbox's directories and cgroups, with the generic limits."""
        os.mkdir(sb.sock_dir, 0o700)
        os.chown(sb.sock_dir, self.uid, self.gid)
        os.mkdir(sb.code_mount, 0o755)
        tree.create(sb.id)
        tree.set_memory(sb.id, sb.memory_mb * _MiB)
        tree.set_pids(sb.id, sb.pids_max)
        tree.set_cpu(sb.id, sb.cpu_share)

    async def warmup(self, sandbox_id: str, spec: WarmupSpec) -> str:
        tree = self._check_running()
        sb = self._sandboxes.get(sandbox_id)
        if sb is None or sb.destroying:
            raise SandboxError(f"unknown sandbox {sandbox_id!r}")
        if sb.state == "bound":
            raise SandboxError(f"sandbox {sandbox_id} is already bound to {sb.function_key}")
        if sb.state != "generic":
            raise SandboxError(f"sandbox {sandbox_id} is {sb.state}, it cannot be bound")
        try:
            st = os.stat(spec.code_dir)
        except OSError as exc:
            raise SandboxError(f"sandbox {sandbox_id}: code directory {spec.code_dir}: {exc.strerror}") from None
        if not os.path.isdir(spec.code_dir):
            raise SandboxError(f"sandbox {sandbox_id}: code directory {spec.code_dir} is not a directory")
        if st.st_uid != self.uid and st.st_mode & 0o005 != 0o005:
            raise SandboxError(
                f"sandbox {sandbox_id}: code directory {spec.code_dir} (mode {st.st_mode & 0o7777:o}) "
                f"is not readable by the sandbox uid {self.uid}"
            )
        try:
            memory_mb = int(spec.memory_mb)
            if memory_mb != sb.memory_mb:
                tree.set_memory(sandbox_id, memory_mb * _MiB)
                sb.memory_mb = memory_mb
            if spec.pids_max != sb.pids_max:
                tree.set_pids(sandbox_id, spec.pids_max)
                sb.pids_max = spec.pids_max
            if spec.cpu_share != sb.cpu_share:
                tree.set_cpu(sandbox_id, spec.cpu_share)
                sb.cpu_share = spec.cpu_share
            _hostfs.bind_code(spec.code_dir, sb.code_mount, self._staging and os.path.join(self._staging, sandbox_id))
        except OSError as exc:
            raise SandboxError(f"sandbox {sandbox_id}: cannot bind {spec.function_key}: {exc}") from exc
        sb.code_bound = True
        sb.function_key = spec.function_key
        sb.state = "bound"
        return CODE_DIR

    async def destroy(self, sandbox_id: str) -> None:
        sb = self._sandboxes.get(sandbox_id)
        if sb is None:
            return
        sb.destroying = True
        await self._teardown(sb)

    async def stats(self, sandbox_id: str) -> SandboxStats:
        sb = self._sandboxes.get(sandbox_id)
        if sb is None or self._tree is None:
            raise SandboxError(f"unknown sandbox {sandbox_id!r}")
        tree = self._tree

        def collect() -> SandboxStats:
            peak, cpu, pids = tree.usage(sandbox_id)
            rss = uss = 0
            for pid in tree.pids(sandbox_id):
                try:
                    info = psutil.Process(pid).memory_full_info()
                except psutil.Error:
                    continue
                rss += info.rss
                uss += info.uss
            return SandboxStats(sandbox_id, rss, uss, peak, cpu, pids)

        return await asyncio.to_thread(collect)

    async def events(self) -> AsyncIterator[SandboxEvent]:
        while True:
            event = await self._events.get()
            if event is None:
                return
            yield event

    # -- status pipe, death, teardown ------------------------------------------------------

    def _on_status(self, sb: _Sandbox) -> None:
        try:
            data = os.read(sb.status_fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            sb.buf += data
            while b"\n" in sb.buf:
                line, _, sb.buf = sb.buf.partition(b"\n")
                self._on_line(sb, line.decode("utf-8", "replace"))
            return
        # EOF: every holder of the write end, init included, is gone.
        asyncio.get_running_loop().remove_reader(sb.status_fd)
        os.close(sb.status_fd)
        sb.status_fd = -1
        if not sb.ready.done():
            why = sb.error or f"it exited during setup{_describe_status(sb.exit_status)}"
            sb.ready.set_exception(SandboxError(f"sandbox {sb.id} ({sb.runtime}) failed to start: {why}"))
        if sb.state in ("generic", "bound") and not sb.destroying:
            task = asyncio.ensure_future(self._died(sb))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _on_line(self, sb: _Sandbox, line: str) -> None:
        word, _, rest = line.partition(" ")
        if word == "ok":
            if not sb.ready.done():
                sb.ready.set_result(None)
        elif word == "err":
            sb.error = sb.error or rest
            if not sb.ready.done():
                sb.ready.set_exception(SandboxError(f"sandbox {sb.id} ({sb.runtime}) failed to start: {rest}"))
        elif word == "exit":
            try:
                sb.exit_status = int(rest)
            except ValueError:
                pass

    async def _died(self, sb: _Sandbox) -> None:
        """The runner or init ended on its own: report it, then clean up."""
        sb.state = "dead"
        what = f"sandbox {sb.id} ({sb.function_key or 'generic ' + sb.runtime})"
        oom = self._tree.oom_kills(sb.id) if self._tree is not None else 0
        status = sb.exit_status
        exit_code = signo = None
        if status is not None:
            if os.WIFEXITED(status):
                exit_code = os.WEXITSTATUS(status)
            elif os.WIFSIGNALED(status):
                signo = os.WTERMSIG(status)
        if oom:
            if status is None:
                signo = int(signal.SIGKILL)  # the OOM killer's; on v2 (oom.group) it took init too, so no status came
            event = SandboxEvent(
                sb.id,
                "oom_killed",
                exit_code,
                signo,
                f"{what} was killed by the kernel: it exceeded its {sb.memory_mb} MB memory limit",
            )
        elif status is None:
            event = SandboxEvent(sb.id, "exited", None, None, f"{what}: its init process was killed")
        else:
            event = SandboxEvent(sb.id, "exited", exit_code, signo, f"{what}: the runner{_describe_status(status)}")
        self._events.put_nowait(event)
        try:
            await self._teardown(sb)
        except SandboxError as exc:
            log.warning("namespace sandbox: %s", exc)

    async def _teardown(self, sb: _Sandbox) -> None:
        """Kill and remove everything of ``sb``; safe to repeat, serialized per sandbox."""
        async with sb.lock:
            problems = []
            loop = asyncio.get_running_loop()
            if sb.preparing is not None:
                await asyncio.wait([sb.preparing])  # its directories and cgroups exist, or never will
                if not sb.preparing.cancelled():
                    sb.preparing.exception()  # retrieved: create() reports it, if still there to
            if sb.pidfd < 0 and self._tree is not None:
                # Torn down before the zygote's answer (stop during create): whatever already
                # joined the cgroups is killed by pid, there is no pidfd to use yet.
                for pid in self._tree.pids(sb.id):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            if sb.pidfd >= 0:
                try:
                    signal.pidfd_send_signal(sb.pidfd, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                # Readable once init is a zombie, which is after the kernel reaped every other
                # process of its pid namespace.
                if not await _readable(loop, sb.pidfd, 10.0):
                    problems.append("its init process did not exit within 10 s of SIGKILL")
                os.close(sb.pidfd)
                sb.pidfd = -1
            if sb.status_fd >= 0:
                loop.remove_reader(sb.status_fd)
                os.close(sb.status_fd)
                sb.status_fd = -1
            if not sb.ready.done():
                sb.ready.set_exception(SandboxError(f"sandbox {sb.id} was destroyed"))
            if not sb.ready.cancelled() and sb.ready.done():
                sb.ready.exception()  # mark retrieved
            sb.state = "dead"
            if sb.code_bound:
                try:
                    L.umount(sb.code_mount, L.MNT_DETACH)
                    sb.code_bound = False
                except OSError as exc:
                    problems.append(str(exc))
            for path in (sb.code_mount, sb.sock_dir):
                try:
                    # Off the event loop: a few ms of filesystem work would delay warm-ups.
                    await asyncio.to_thread(_hostfs.remove_tree, path)
                except OSError as exc:
                    problems.append(str(exc))
            if self._tree is not None:
                busy: list[str] = []
                for _ in range(200):
                    try:
                        busy = self._tree.remove(sb.id)
                    except OSError as exc:
                        problems.append(f"removing its cgroup: {exc}")
                        break
                    if not busy:
                        break
                    await asyncio.sleep(0.01)
                if busy:
                    problems.append(f"cgroups still busy: {busy}")
            self._sandboxes.pop(sb.id, None)
            if problems:
                raise SandboxError(f"sandbox {sb.id}: incomplete cleanup: {'; '.join(problems)}")


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def _readable(loop: asyncio.AbstractEventLoop, fd: int, timeout: float) -> bool:
    future: asyncio.Future[None] = loop.create_future()
    loop.add_reader(fd, _wake, future)
    try:
        await asyncio.wait_for(future, timeout)
        return True
    except TimeoutError:
        return False
    finally:
        loop.remove_reader(fd)


def _first_child(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = f.read().split()
    except OSError:
        return 0
    return int(children[0]) if children else 0


def _describe_status(status: int | None) -> str:
    if status is None:
        return " (its init process was killed)"
    if os.WIFEXITED(status):
        return f" exited with code {os.WEXITSTATUS(status)}"
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return f" was killed by {name}"
    return f" ended with status {status}"


def _symlink_chain(path: str) -> tuple[dict[str, str], str]:
    """Each symlink met while resolving ``path`` ({link: its text}), and the real path."""
    links: dict[str, str] = {}
    current = "/"
    for part in [p for p in path.split("/") if p]:
        candidate = os.path.join(current, part)
        hops = 0
        while os.path.islink(candidate) and hops < 40:
            text = os.readlink(candidate)
            links[candidate] = text
            candidate = os.path.normpath(os.path.join(os.path.dirname(candidate), text))
            hops += 1
        current = os.path.realpath(candidate)
    return links, current
