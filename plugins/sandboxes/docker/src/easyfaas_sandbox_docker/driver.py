"""The ``docker`` sandbox driver: one pre-created container per generic sandbox, through the Docker Engine API.

Runs inside the funclet (asyncio, root, next to a local dockerd); README.md explains the design and options.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import signal
import socket
import stat
import struct
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import psutil

from easyfaas.errors import ConfigurationError, SandboxError
from easyfaas.interfaces import Runtime, SandboxDriver
from easyfaas.models import SandboxEvent, SandboxInfo, SandboxStats, WarmupSpec
from easyfaas.sockets import connect_unix
from easyfaas_sandbox_docker import _mounts
from easyfaas_sandbox_docker._image import BASE_IMAGE, SKELETON_LABEL, Skeleton, host_skeleton, import_base_image

__all__ = ["DEFAULT_URL", "DockerSandbox"]

log = logging.getLogger("easyfaas.sandbox.docker")

T = TypeVar("T")

DEFAULT_URL = "unix:///var/run/docker.sock"
#: Where things are inside every container.
CODE_DIR = "/code"
RUNNER_DIR = "/runner"
SOCKET_DIR = "/run/easyfaas"
SOCKET_NAME = "runner.sock"
LABEL_STATE = "easyfaas.state_dir"
LABEL_SANDBOX = "easyfaas.sandbox"
LABEL_RUNTIME = "easyfaas.runtime"
#: Engine API 1.40 (Docker 19.03) is the first to update PidsLimit on a running container.
MIN_API = (1, 40)
_MiB = 1 << 20
_CPU_PERIOD = 100_000
_NEEDS_ROOT = "needs root: it binds each function's code into its container with mounts on the host"
_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/tmp", "TMPDIR": "/tmp", "USER": "sandbox"}


def _default_url() -> str:
    return os.environ.get("DOCKER_HOST") or DEFAULT_URL


def _unreachable(url: str, exc: BaseException | str) -> str:
    return f"cannot reach the Docker engine at {url}: start dockerd or set funclet.sandbox.docker.url ({exc})"


@dataclass(eq=False)
class _Sandbox:
    id: str
    runtime: str
    sock_dir: str
    code_mount: str
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    state: str = "creating"  # creating | generic | bound | dead
    container_id: str = ""
    init_pid: int = 0
    runner_pid: int = 0
    exit_code: int | None = None
    oom: bool = False
    destroying: bool = False
    code_bound: bool = False
    function_key: str = ""
    memory_mb: int = 0
    pids_max: int = 0
    cpu_share: float = 0.0

    @property
    def socket_path(self) -> str:
        return f"{self.sock_dir}/{SOCKET_NAME}"


class DockerSandbox(SandboxDriver):
    """Sandboxes that are Docker containers, created ahead of time with the runner already listening.

    Options (the profile's ``funclet: {sandbox: {docker: {...}}}`` section):

    ``url`` (``$DOCKER_HOST`` or ``unix:///var/run/docker.sock``)
        the Docker engine; it must run on this host, in the funclet's mount namespace.
    ``images`` ({})
        image per runtime, e.g. ``{python: "my/image:tag"}``; others use ``easyfaas/base:1``,
        which the driver imports itself on first use. Images are never pulled.
    ``tmp_size_mb`` (64)
        size of each container's private, writable ``/tmp`` (a tmpfs; counts against memory).
    ``uid`` / ``gid`` (65534 / same as uid)
        identity the function runs as; never 0.
    ``pids_max`` (64), ``generic_memory_mb`` (128), ``cpu_share`` (1.0)
        limits of a generic container, before ``warmup`` applies the function's own.
    ``system_paths`` (``/usr`` and the host's real ``/lib*``, ``/bin`` directories)
        host directories bound read-only over the image; ``[]`` for an image with its own userland.
    ``extra_ro_paths`` ([])
        more host paths to show read-only in every container (e.g. ``/usr/share/zoneinfo``).
    ``env`` ({})
        extra environment variables for every runner (the engine's own never reach containers).
    ``network`` ("none")
        only ``none`` is supported: containers get a loopback interface and nothing else.
    ``create_timeout`` (15 s), ``api_timeout`` (60 s).
    """

    PLUGIN_NAME: ClassVar[str] = "docker"
    ISOLATION: ClassVar[str] = (
        "Docker containers: pid/mount/net/ipc/uts namespaces, read-only root, cgroup memory/pids/cpu limits, "
        "unprivileged uid without capabilities, no-new-privileges, Docker's default seccomp profile, no network"
    )

    def __init__(
        self,
        *,
        state_dir: Path,
        url: str | None = None,
        images: Mapping[str, str] | None = None,
        tmp_size_mb: int = 64,
        uid: int = 65534,
        gid: int | None = None,
        pids_max: int = 64,
        generic_memory_mb: int = 128,
        cpu_share: float = 1.0,
        system_paths: Sequence[str] | None = None,
        extra_ro_paths: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        network: str = "none",
        create_timeout: float = 15.0,
        api_timeout: float = 60.0,
    ) -> None:
        super().__init__(state_dir=Path(state_dir).absolute())
        problems = []
        if network != "none":
            problems.append(
                f"network {network!r} is not supported: the docker sandbox has no egress option yet, "
                "containers run with network 'none' (remove the option or set it to 'none')"
            )
        if not 1 <= tmp_size_mb <= 1 << 20:
            problems.append(f"tmp_size_mb must be between 1 and {1 << 20}, got {tmp_size_mb}")
        if uid <= 0 or (gid is not None and gid <= 0):
            problems.append("uid and gid must be positive: functions never run as root")
        if pids_max < 4:
            problems.append(f"pids_max must be at least 4 (init and runner count), got {pids_max}")
        if generic_memory_mb < 16:
            problems.append(f"generic_memory_mb must be at least 16, got {generic_memory_mb}")
        if cpu_share <= 0:
            problems.append(f"cpu_share must be positive, got {cpu_share}")
        for name, image in (images or {}).items():
            if not isinstance(image, str) or not image:
                problems.append(f"images.{name} must be an image reference such as 'my/image:tag'")
        for path in [*(system_paths or ()), *extra_ro_paths]:
            if not os.path.isabs(path):
                problems.append(f"path {path!r} is not absolute")
        if problems:
            raise ConfigurationError("docker sandbox: " + "; ".join(problems))
        self.url = url or _default_url()
        self.images = dict(images or {})
        self.tmp_size_mb = tmp_size_mb
        self.uid = uid
        self.gid = gid if gid is not None else uid
        self.pids_max = pids_max
        self.generic_memory_mb = generic_memory_mb
        self.cpu_share = cpu_share
        self.system_paths = None if system_paths is None else list(system_paths)
        self.extra_ro_paths = list(extra_ro_paths)
        self.env = {**_ENV, **(env or {})}
        self.create_timeout = create_timeout
        self.api_timeout = api_timeout
        self._api: Any = None  # docker.APIClient, made in start(): constructing one already talks to the engine
        self._sandboxes: dict[str, _Sandbox] = {}
        self._runtime_images: dict[str, str] = {}
        self._runtime_mounts: dict[str, list[Any]] = {}
        self._events: asyncio.Queue[SandboxEvent | None] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watcher: threading.Thread | None = None
        self._closing = threading.Event()
        self._stream: Any = None
        self._stream_lock = threading.Lock()
        self._skeleton: Skeleton | None = None
        self._started = False
        self._prepared = False  # state_dir holds our mounts and directories

    # -- paths ------------------------------------------------------------------------------

    def _path(self, *parts: str) -> str:
        return os.path.join(str(self.state_dir), *parts)

    # -- availability and connection --------------------------------------------------------

    @classmethod
    def availability(cls) -> str | None:
        try:
            import docker
        except ImportError:
            return "the 'docker' Python package is not installed (pip install easyfaas-sandbox-docker)"
        if os.geteuid() != 0:
            return _NEEDS_ROOT
        url = _default_url()
        try:
            client = docker.APIClient(base_url=url, version="auto", timeout=5)
            try:
                client.ping()
            finally:
                client.close()
        except Exception as exc:  # noqa: BLE001 - any failure to talk to the engine is the reason
            return _unreachable(url, exc)
        return None

    def _connect(self) -> Any:
        """A ``docker.APIClient`` for ``self.url``; ``ConfigurationError`` if the engine does not answer."""
        import docker

        try:
            api = docker.APIClient(base_url=self.url, version="auto", timeout=self.api_timeout)
            api.ping()
        except Exception as exc:
            raise ConfigurationError(_unreachable(self.url, exc)) from exc
        version = tuple(int(p) for p in str(api.api_version).split(".")[:2])
        if version < MIN_API:
            api.close()
            raise ConfigurationError(
                f"the Docker engine at {self.url} speaks API {api.api_version}; the docker sandbox needs "
                f"{MIN_API[0]}.{MIN_API[1]} (Docker 19.03) or newer to update pids limits"
            )
        return api

    def _check_mount_namespace(self) -> None:
        """Refuse an engine in another mount namespace: code binds could never reach its containers."""
        if not self.url.startswith("unix://"):
            log.warning(
                "docker sandbox: %s is not a local socket; function code is bound by mount propagation, "
                "which works only with an engine on this host",
                self.url,
            )
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(5)
                sock.connect(self.url[len("unix://") :])
                creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            pid = struct.unpack("3i", creds)[0]
            theirs = os.readlink(f"/proc/{pid}/ns/mnt") if pid > 0 else None
        except OSError:
            return  # cannot tell; warmup verifies every bind anyway
        if theirs is not None and theirs != os.readlink("/proc/self/ns/mnt"):
            raise ConfigurationError(
                f"the Docker engine at {self.url} (pid {pid}) runs in another mount namespace than the funclet: "
                "the docker sandbox binds function code into running containers by mount propagation, "
                "so dockerd must run on this host, in the funclet's mount namespace"
            )

    async def _call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking SDK call in a thread; its failures become ``SandboxError`` that say what failed."""
        import docker.errors
        import requests.exceptions

        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except docker.errors.ImageNotFound as exc:
            raise SandboxError(
                f"{what}: image missing from the Docker engine at {self.url}: {exc.explanation}"
            ) from exc
        except docker.errors.APIError as exc:
            raise SandboxError(f"{what}: {exc.explanation or exc}") from exc
        except (requests.exceptions.ConnectionError, docker.errors.DockerException) as exc:
            raise SandboxError(f"{what}: {_unreachable(self.url, exc)}") from exc
        except requests.exceptions.RequestException as exc:
            raise SandboxError(f"{what}: the Docker engine at {self.url} failed: {exc}") from exc

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self, runtimes: Mapping[str, Runtime]) -> None:
        if self._started:
            raise SandboxError("docker sandbox: start() was already called")
        if os.geteuid() != 0:
            raise ConfigurationError(f"docker sandbox: {_NEEDS_ROOT}")
        self._loop = asyncio.get_running_loop()
        self._api = await asyncio.to_thread(self._connect)
        self._check_mount_namespace()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.state_dir, 0o700)
        await asyncio.to_thread(self._clean_leftovers)
        self._prepared = True
        for name in ("sock", "mnt", "stage", "runners"):
            os.mkdir(self._path(name), 0o700)
        os.chmod(self._path("mnt"), 0o755)
        try:
            _mounts.make_shared_anchor(self._path("mnt"))
            _mounts.make_private_anchor(self._path("stage"))
        except OSError as exc:
            raise SandboxError(f"docker sandbox: cannot prepare the code mounts under {self.state_dir}: {exc}") from exc
        self._skeleton = host_skeleton(self.uid, self.gid)
        for name in self.images:
            if name not in runtimes:
                log.warning("docker sandbox: images.%s names a runtime that is not enabled here", name)
        for name, runtime in runtimes.items():
            self._runtime_images[name] = await self._ensure_image(name)
            self._runtime_mounts[name] = self._mounts_for(name, runtime)
        self._started = True
        # Replay from a second back: a container may die before the stream is connected.
        self._watcher = threading.Thread(
            target=self._watch_events, args=(time.time() - 1,), name="easyfaas-docker-events", daemon=True
        )
        self._watcher.start()

    async def _ensure_image(self, runtime: str) -> str:
        """The image for ``runtime``: the base image is imported when missing or stale, others must exist."""
        import docker.errors

        image = self.images.get(runtime, BASE_IMAGE)
        try:
            attrs = await asyncio.to_thread(self._api.inspect_image, image)
        except docker.errors.ImageNotFound:
            attrs = None
        except Exception as exc:
            raise ConfigurationError(_unreachable(self.url, exc)) from exc
        skeleton = self._skeleton
        assert skeleton is not None
        if image != BASE_IMAGE:
            if attrs is None:
                raise ConfigurationError(
                    f"docker sandbox: image {image!r} for runtime {runtime!r} is missing from the Docker engine at "
                    f"{self.url}; images are never pulled: build or load it on this host first (see the README of "
                    "easyfaas-sandbox-docker), or remove images." + runtime + " to use " + BASE_IMAGE
                )
            return image
        labels = ((attrs or {}).get("Config") or {}).get("Labels") or {}
        if labels.get(SKELETON_LABEL) != skeleton.digest:
            why = "missing" if attrs is None else "made for another host layout"
            log.info("docker sandbox: %s is %s; importing it (no registry needed)", image, why)
            try:
                await asyncio.to_thread(import_base_image, self._api, skeleton, image)
            except Exception as exc:
                raise ConfigurationError(
                    f"docker sandbox: cannot import {image} into the Docker engine at {self.url}: {exc}"
                ) from exc
        return image

    def _mounts_for(self, name: str, runtime: Runtime) -> list[Any]:
        """Read-only binds shared by every container of ``runtime``: system dirs, interpreter, runner."""
        from docker.types import Mount

        runner_dir = self._path("runners", name)
        os.mkdir(runner_dir, 0o755)
        for file_name, source in runtime.runner_files().items():
            target = os.path.join(runner_dir, file_name)
            shutil.copyfile(source, target)
            os.chmod(target, 0o644)
        assert self._skeleton is not None
        system = list(self._skeleton.system_dirs) if self.system_paths is None else self.system_paths
        wanted = [*system, *runtime.host_paths(), *self.extra_ro_paths]
        # Real paths only, and nothing already under another bind: Docker resolves sources, not targets.
        chosen: list[str] = []
        for path in sorted({os.path.realpath(p) for p in wanted if os.path.exists(p)}):
            if not any(path == c or path.startswith(c.rstrip("/") + "/") for c in chosen):
                chosen.append(path)
        mounts = [Mount(p, p, type="bind", read_only=True) for p in chosen]
        mounts.append(Mount(RUNNER_DIR, runner_dir, type="bind", read_only=True))
        return mounts

    def _clean_leftovers(self, *, engine_required: bool = True) -> None:
        """Remove containers, mounts and directories that a previous run on this state_dir left behind.

        At stop the engine may be gone; the host side is cleaned anyway and the next start removes
        the containers by their label.
        """
        try:
            containers = self._api.containers(all=True, filters={"label": f"{LABEL_STATE}={self.state_dir}"})
        except Exception as exc:
            if engine_required:
                raise SandboxError(
                    f"docker sandbox: cannot list leftover containers: {_unreachable(self.url, exc)}"
                ) from exc
            log.warning("docker sandbox: cannot list containers to remove: %s", _unreachable(self.url, exc))
            containers = []
        for container in containers:
            try:
                self._api.remove_container(container["Id"], force=True)
                log.info("docker sandbox: removed leftover container %s", container["Id"][:12])
            except Exception as exc:  # noqa: BLE001 - a container removed meanwhile is fine; others surface below
                log.warning("docker sandbox: cannot remove leftover container %s: %s", container["Id"][:12], exc)
        stuck = _mounts.unmount_under(str(self.state_dir))
        if stuck:
            raise SandboxError(f"docker sandbox: cannot unmount leftovers {stuck}")
        for entry in os.listdir(self.state_dir):
            _mounts.remove_tree(self._path(entry))

    async def stop(self) -> None:
        results = await asyncio.gather(*(self.destroy(sid) for sid in list(self._sandboxes)), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                log.warning("docker sandbox: %s", result)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._closing.set()
        with self._stream_lock:
            if self._stream is not None:
                with contextlib.suppress(Exception):
                    self._stream.close()
        if self._watcher is not None:
            await asyncio.to_thread(self._watcher.join, 10)
            self._watcher = None
        if self._prepared:
            await asyncio.to_thread(self._clean_leftovers, engine_required=False)
            self._prepared = False
        if self._api is not None:
            self._api.close()
        self._started = False
        self._events.put_nowait(None)

    # -- sandboxes --------------------------------------------------------------------------

    def _check_running(self) -> None:
        if not self._started:
            raise SandboxError("docker sandbox: not started (or already stopped)")

    async def create(self, runtime: Runtime) -> SandboxInfo:
        self._check_running()
        name = runtime.PLUGIN_NAME
        if name not in self._runtime_images:
            raise SandboxError(f"docker sandbox: runtime {name!r} was not prepared at start")
        sid = "d" + secrets.token_hex(6)
        sb = _Sandbox(
            id=sid,
            runtime=name,
            sock_dir=self._path("sock", sid),
            code_mount=self._path("mnt", sid),
            memory_mb=self.generic_memory_mb,
            pids_max=self.pids_max,
            cpu_share=self.cpu_share,
        )
        self._sandboxes[sid] = sb
        try:
            os.mkdir(sb.sock_dir, 0o700)
            os.chown(sb.sock_dir, self.uid, self.gid)
            os.mkdir(sb.code_mount, 0o755)
            argv = runtime.runner_command(RUNNER_DIR, f"{SOCKET_DIR}/{SOCKET_NAME}")
            created = await self._call(
                f"cannot create a {name} container", self._api.create_container, **self._container_config(sb, argv)
            )
            sb.container_id = created["Id"]
            await self._call(f"cannot start container {sid}", self._api.start, sb.container_id)
            await self._wait_listening(sb)
            # The runner has bound its socket: from now on the directory is root's, so the
            # function cannot write to the host's disk through it.
            os.chown(sb.sock_dir, 0, 0)
            os.chmod(sb.sock_dir, 0o755)
            sb.state = "generic"
        except BaseException:
            sb.destroying = True
            try:
                await self._teardown(sb)
            except SandboxError as exc:
                log.warning("docker sandbox: %s", exc)
            raise
        return SandboxInfo(id=sid, runtime=name, socket_path=sb.socket_path, pid=sb.runner_pid)

    def _container_config(self, sb: _Sandbox, argv: list[str]) -> dict[str, Any]:
        from docker.types import LogConfig, Mount

        mounts = [
            *self._runtime_mounts[sb.runtime],
            Mount(SOCKET_DIR, sb.sock_dir, type="bind"),
            # rslave: what the driver binds later at code_mount on the host shows up here.
            Mount(CODE_DIR, sb.code_mount, type="bind", read_only=True, propagation="rslave"),
        ]
        host_config = self._api.create_host_config(
            mounts=mounts,
            read_only=True,
            tmpfs={"/tmp": f"rw,exec,nosuid,nodev,size={self.tmp_size_mb}m,mode=1777"},
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            network_mode="none",
            # No /dev/shm: the container's only writable place is its capped /tmp (AWS Lambda has none either).
            ipc_mode="none",
            mem_limit=sb.memory_mb * _MiB,
            memswap_limit=sb.memory_mb * _MiB,
            pids_limit=sb.pids_max,
            cpu_period=_CPU_PERIOD,
            cpu_quota=int(sb.cpu_share * _CPU_PERIOD),
            # docker-init (tini) as pid 1 reaps orphans and passes the runner's exit status on.
            init=True,
            # Kept small: the runner's own stderr explains a failed start; what a function writes to
            # fd 1/2 directly must not fill the host's disk.
            log_config=LogConfig(type="json-file", config={"max-size": "1m", "max-file": "1"}),
        )
        return {
            "image": self._runtime_images[sb.runtime],
            "command": argv,
            "user": f"{self.uid}:{self.gid}",
            "environment": self.env,
            "working_dir": "/tmp",
            "hostname": "sandbox",
            "name": f"easyfaas-{sb.id}",
            "labels": {LABEL_STATE: str(self.state_dir), LABEL_SANDBOX: sb.id, LABEL_RUNTIME: sb.runtime},
            "host_config": host_config,
        }

    async def _wait_listening(self, sb: _Sandbox) -> None:
        inspect = await self._call(f"cannot inspect container {sb.id}", self._api.inspect_container, sb.container_id)
        sb.init_pid = int(inspect["State"].get("Pid") or 0)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.create_timeout
        delay = 0.001
        while True:
            if sb.exit_code is not None or sb.destroying:
                break
            if os.path.exists(sb.socket_path):
                with contextlib.suppress(OSError):
                    (await connect_unix(sb.socket_path)).close()
                    sb.runner_pid = _first_child(sb.init_pid) or sb.init_pid
                    return
            if loop.time() > deadline:
                break
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.02)
        if sb.destroying:
            raise SandboxError(f"sandbox {sb.id} was destroyed while it was being created")
        logs = await self._logs(sb)
        if sb.exit_code is not None:
            raise SandboxError(
                f"sandbox {sb.id} ({sb.runtime}): the runner exited with code {sb.exit_code} before listening: {logs}"
            )
        raise SandboxError(
            f"sandbox {sb.id} ({sb.runtime}): the runner did not listen on {sb.socket_path} within {self.create_timeout:g}s: {logs}"
        )

    async def _logs(self, sb: _Sandbox) -> str:
        try:
            raw = await asyncio.to_thread(self._api.logs, sb.container_id, stdout=True, stderr=True, tail=20)
        except Exception:  # noqa: BLE001 - logs only decorate an error message being raised anyway
            return "(no logs)"
        text = bytes(raw).decode("utf-8", "replace").strip()
        return text[-2000:] or "(no output)"

    async def warmup(self, sandbox_id: str, spec: WarmupSpec) -> str:
        self._check_running()
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
        if not stat.S_ISDIR(st.st_mode):
            raise SandboxError(f"sandbox {sandbox_id}: code directory {spec.code_dir} is not a directory")
        if st.st_uid != self.uid and st.st_mode & 0o005 != 0o005:
            raise SandboxError(
                f"sandbox {sandbox_id}: code directory {spec.code_dir} (mode {st.st_mode & 0o7777:o}) "
                f"is not readable by the sandbox uid {self.uid}"
            )
        async with sb.lock:
            if sb.state != "generic" or sb.destroying:
                raise SandboxError(f"sandbox {sandbox_id} is {sb.state}, it cannot be bound")
            await self._apply_limits(sb, spec)
            try:
                await asyncio.to_thread(_mounts.bind_readonly, spec.code_dir, sb.code_mount, self._path("stage", sb.id))
            except OSError as exc:
                raise SandboxError(f"sandbox {sandbox_id}: cannot bind the code of {spec.function_key}: {exc}") from exc
            sb.code_bound = True
            self._verify_code(sb, st)
            sb.function_key = spec.function_key
            sb.state = "bound"
        return CODE_DIR

    async def _apply_limits(self, sb: _Sandbox, spec: WarmupSpec) -> None:
        """One Engine API update for memory, memory+swap, pids and CPU quota (the SDK cannot set pids)."""
        memory_mb, pids, cpu = int(spec.memory_mb), int(spec.pids_max), float(spec.cpu_share)
        if (memory_mb, pids, cpu) == (sb.memory_mb, sb.pids_max, sb.cpu_share):
            return
        if memory_mb < 6 or pids < 4 or cpu <= 0:
            raise SandboxError(
                f"sandbox {sb.id}: cannot apply limits of {spec.function_key}: memory {memory_mb} MB, "
                f"pids {pids} and cpu {cpu:g} must be at least 6 MB, 4 and above 0"
            )
        body = {
            "Memory": memory_mb * _MiB,
            "MemorySwap": memory_mb * _MiB,
            "PidsLimit": pids,
            "CpuPeriod": _CPU_PERIOD,
            "CpuQuota": max(1000, int(cpu * _CPU_PERIOD)),
        }
        api = self._api
        url = f"{api.base_url}/v{api.api_version}/containers/{sb.container_id}/update"
        what = f"sandbox {sb.id}: cannot apply limits of {spec.function_key} (memory {memory_mb} MB, pids {pids}, cpu {cpu:g})"
        response = await self._call(what, api.post, url, json=body, timeout=self.api_timeout)
        if response.status_code >= 400:
            try:
                message = response.json().get("message", response.text)
            except ValueError:
                message = response.text
            raise SandboxError(f"{what}: {' '.join(str(message).split())}")
        sb.memory_mb, sb.pids_max, sb.cpu_share = memory_mb, pids, cpu

    def _verify_code(self, sb: _Sandbox, code: os.stat_result) -> None:
        """Check, through /proc, that the bind reached the container: it cannot if dockerd is elsewhere."""
        if sb.init_pid <= 0:
            return
        try:
            seen = os.stat(f"/proc/{sb.init_pid}/root{CODE_DIR}")
        except OSError as exc:
            if not os.path.exists(f"/proc/{sb.init_pid}"):
                return  # it died meanwhile: the event stream reports that
            raise SandboxError(f"sandbox {sb.id}: cannot check its {CODE_DIR}: {exc}") from exc
        if (seen.st_dev, seen.st_ino) != (code.st_dev, code.st_ino):
            raise SandboxError(
                f"sandbox {sb.id}: the code bound on the host did not appear at {CODE_DIR} in the container: "
                "mount propagation does not reach the Docker engine's containers (is dockerd running in another "
                "mount namespace, or under a systemd unit with private mounts?)"
            )

    async def destroy(self, sandbox_id: str) -> None:
        sb = self._sandboxes.get(sandbox_id)
        if sb is None:
            return
        sb.destroying = True
        await self._teardown(sb)

    async def _teardown(self, sb: _Sandbox) -> None:
        """Kill and remove everything of ``sb``; safe to repeat, serialized per sandbox."""
        import docker.errors

        async with sb.lock:
            problems = []
            if sb.container_id:
                try:
                    # SIGKILL to the container's init takes its whole pid namespace down with it.
                    await asyncio.to_thread(self._api.remove_container, sb.container_id, force=True)
                except docker.errors.NotFound:
                    pass
                except Exception as exc:  # noqa: BLE001 - reported below with the rest of the cleanup
                    problems.append(f"removing container {sb.container_id[:12]}: {exc}")
            sb.state = "dead"
            if sb.code_bound:
                try:
                    _mounts.unmount(sb.code_mount)
                    sb.code_bound = False
                except OSError as exc:
                    problems.append(str(exc))
            for path in (sb.code_mount, sb.sock_dir):
                try:
                    _mounts.remove_tree(path)
                except OSError as exc:
                    problems.append(str(exc))
            self._sandboxes.pop(sb.id, None)
            if problems:
                raise SandboxError(f"sandbox {sb.id}: incomplete cleanup: {'; '.join(problems)}")

    async def stats(self, sandbox_id: str) -> SandboxStats:
        sb = self._sandboxes.get(sandbox_id)
        if sb is None or not sb.container_id:
            raise SandboxError(f"unknown sandbox {sandbox_id!r}")
        raw = await self._call(
            f"cannot read the stats of sandbox {sandbox_id}",
            self._api.stats,
            sb.container_id,
            stream=False,
            one_shot=True,
        )
        memory = raw.get("memory_stats") or {}
        usage = int(memory.get("usage") or 0)
        cpu_ns = int(((raw.get("cpu_stats") or {}).get("cpu_usage") or {}).get("total_usage") or 0)
        pids = int((raw.get("pids_stats") or {}).get("current") or 0)
        rss, uss = await asyncio.to_thread(_tree_memory, sb.init_pid)
        return SandboxStats(
            id=sandbox_id,
            memory_rss=rss or usage,
            memory_uss=uss or usage,
            memory_peak=int(memory.get("max_usage") or usage),
            cpu_seconds=cpu_ns / 1e9,
            pids=pids,
        )

    async def events(self) -> AsyncIterator[SandboxEvent]:
        while True:
            event = await self._events.get()
            if event is None:
                return
            yield event

    # -- the Docker event stream --------------------------------------------------------------

    def _watch_events(self, since: float) -> None:
        """Thread: follow ``die`` and ``oom`` events of our containers; reconnect when the stream breaks."""
        import docker

        filters = {"type": ["container"], "label": [f"{LABEL_STATE}={self.state_dir}"], "event": ["die", "oom"]}
        backoff = 0.1
        resync = False
        while not self._closing.is_set():
            client = docker.APIClient(base_url=self.url, version=self._api.api_version, timeout=None)
            try:
                stream = client.events(since=int(since), filters=filters, decode=True)
            except Exception as exc:  # noqa: BLE001 - the engine is away; keep trying until stopped
                client.close()
                log.warning("docker sandbox: cannot follow Docker events (retrying): %s", exc)
                self._closing.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            with self._stream_lock:
                self._stream = stream
            if resync:
                self._post(self._resync)
            backoff = 0.1
            try:
                if not self._closing.is_set():
                    for event in stream:
                        since = max(since, float(event.get("time") or since))
                        self._post(self._on_docker_event, event)
            except Exception as exc:  # noqa: BLE001 - a broken stream is reconnected below
                if not self._closing.is_set():
                    log.warning("docker sandbox: the Docker event stream broke (reconnecting): %s", exc)
            finally:
                with self._stream_lock:
                    self._stream = None
                with contextlib.suppress(Exception):
                    stream.close()
                client.close()
            resync = True

    def _post(self, fn: Callable[..., Any], *args: Any) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody is listening any more
            self._loop.call_soon_threadsafe(fn, *args)

    def _on_docker_event(self, event: dict[str, Any]) -> None:
        actor = event.get("Actor") or {}
        attrs = actor.get("Attributes") or {}
        sb = self._sandboxes.get(attrs.get(LABEL_SANDBOX, ""))
        if sb is None or (sb.container_id and actor.get("ID", sb.container_id) != sb.container_id):
            return
        action = event.get("Action") or event.get("status")
        if action == "oom":
            sb.oom = True
        elif action == "die" and sb.exit_code is None:
            try:
                sb.exit_code = int(attrs.get("exitCode", "-1"))
            except ValueError:
                sb.exit_code = -1
            self._on_death(sb)

    def _on_death(self, sb: _Sandbox) -> None:
        if sb.destroying or sb.state not in ("generic", "bound"):
            return  # destroyed on purpose, or still being created (create() sees exit_code)
        task = asyncio.ensure_future(self._died(sb))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _resync(self) -> None:
        """After a broken stream: a container that died meanwhile is reported like any other."""
        task = asyncio.ensure_future(self._check_all())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _check_all(self) -> None:
        for sb in list(self._sandboxes.values()):
            if sb.state not in ("generic", "bound") or sb.destroying or sb.exit_code is not None:
                continue
            try:
                attrs = await asyncio.to_thread(self._api.inspect_container, sb.container_id)
                state = attrs.get("State") or {}
            except Exception:  # noqa: BLE001 - gone or unreachable both mean it is not running
                state = {"Running": False, "ExitCode": -1}
            if not state.get("Running") and sb.exit_code is None:
                sb.exit_code = int(state.get("ExitCode", -1))
                sb.oom = sb.oom or bool(state.get("OOMKilled"))
                self._on_death(sb)

    async def _died(self, sb: _Sandbox) -> None:
        """The container ended on its own: report how, then clean up."""
        sb.state = "dead"
        if not sb.oom:
            with contextlib.suppress(Exception):
                attrs = await asyncio.to_thread(self._api.inspect_container, sb.container_id)
                sb.oom = bool((attrs.get("State") or {}).get("OOMKilled"))
        what = f"sandbox {sb.id} ({sb.function_key or 'generic ' + sb.runtime})"
        code = sb.exit_code if sb.exit_code is not None else -1
        # docker-init exits with 128+N when the runner was killed by signal N.
        signo = code - 128 if 128 < code < 128 + 65 else None
        if sb.oom:
            event = SandboxEvent(
                sb.id,
                "oom_killed",
                None,
                signo or signal.SIGKILL,
                f"{what} was killed by the kernel: it exceeded its {sb.memory_mb} MB memory limit",
            )
        elif signo is not None:
            event = SandboxEvent(
                sb.id, "exited", None, signo, f"{what}: the runner was killed by {_signal_name(signo)}"
            )
        else:
            event = SandboxEvent(sb.id, "exited", code, None, f"{what}: the runner exited with code {code}")
        self._events.put_nowait(event)
        try:
            await self._teardown(sb)
        except SandboxError as exc:
            log.warning("docker sandbox: %s", exc)


def _signal_name(signo: int) -> str:
    try:
        return signal.Signals(signo).name
    except ValueError:
        return f"signal {signo}"


def _first_child(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = f.read().split()
    except OSError:
        return 0
    return int(children[0]) if children else 0


def _tree_memory(pid: int) -> tuple[int, int]:
    """RSS and USS summed over ``pid`` and its descendants; zeros when they are not visible from here."""
    if pid <= 0:
        return 0, 0
    rss = uss = 0
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0, 0
    for proc in procs:
        try:
            info = proc.memory_full_info()
        except psutil.Error:
            continue
        rss += info.rss
        uss += info.uss
    return rss, uss
