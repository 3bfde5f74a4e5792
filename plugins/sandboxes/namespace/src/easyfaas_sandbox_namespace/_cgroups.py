"""cgroup v1 and v2 for the namespace driver: one directory per sandbox, its limits, OOM counts, cleanup.

Every path derives from the text of /proc/self/{mountinfo,cgroup}, so tests can run v2 on a fake tree.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = [
    "REQUIRED",
    "CgroupTree",
    "CgroupUnavailableError",
    "Hierarchies",
    "V1Tree",
    "V2Tree",
    "find_hierarchies",
    "open_tree",
    "read_int",
    "sweep",
]

REQUIRED = ("memory", "pids", "cpu")
CPU_PERIOD_US = 100_000
# Super options of a v1 mount mix controllers with flags (xattr, noprefix, name=...).
_V1_CONTROLLERS = frozenset(
    [
        "cpu",
        "cpuacct",
        "cpuset",
        "memory",
        "devices",
        "freezer",
        "net_cls",
        "net_prio",
        "blkio",
        "perf_event",
        "hugetlb",
        "pids",
        "rdma",
        "misc",
    ]
)
_ESCAPE = re.compile(r"\\([0-7]{3})")


class CgroupUnavailableError(Exception):
    """No usable memory+pids+cpu cgroup hierarchy; the message says what is missing."""


def unescape(field_text: str) -> str:
    """Undo mountinfo's octal escapes (``\\040`` for a space, ...)."""
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field_text)


@dataclass(frozen=True)
class Hierarchies:
    """Where the calling process sits: its own cgroup directory per hierarchy."""

    v2_mount: str | None = None
    v2_own: str | None = None
    v1_mounts: dict[str, str] = field(default_factory=dict)  # controller -> mount point
    v1_own: dict[str, str] = field(default_factory=dict)  # controller -> own cgroup dir


def _join(mountpoint: str, mount_root: str, path: str) -> str:
    # mountinfo's root is the part of the hierarchy shown at the mount point (not "/" inside
    # some containers); /proc/self/cgroup paths are from the hierarchy's root.
    if mount_root != "/" and (path == mount_root or path.startswith(mount_root + "/")):
        path = path[len(mount_root) :]
    return mountpoint.rstrip("/") + "/" + path.strip("/") if path.strip("/") else mountpoint


def find_hierarchies(mountinfo: str, proc_cgroup: str) -> Hierarchies:
    own_v1: dict[frozenset[str], str] = {}
    own_v2: str | None = None
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            own_v2 = parts[2]
        else:
            own_v1[frozenset(c for c in parts[1].split(",") if c)] = parts[2]
    v2_mount = v2_own = None
    v1_mounts: dict[str, str] = {}
    v1_own: dict[str, str] = {}
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields = left.split()
        rfields = right.split()
        if len(fields) < 5 or len(rfields) < 3:
            continue
        root, mountpoint = unescape(fields[3]), unescape(fields[4])
        fstype, options = rfields[0], rfields[2].split(",")
        if fstype == "cgroup2" and v2_mount is None:
            v2_mount = mountpoint
            v2_own = _join(mountpoint, root, own_v2) if own_v2 is not None else mountpoint
        elif fstype == "cgroup":
            controllers = frozenset(o for o in options if o in _V1_CONTROLLERS)
            for controller in controllers:
                if controller in v1_mounts:
                    continue
                v1_mounts[controller] = mountpoint
                own = own_v1.get(controllers)
                v1_own[controller] = _join(mountpoint, root, own) if own is not None else mountpoint
    return Hierarchies(v2_mount, v2_own, v1_mounts, v1_own)


def _write(path: str, value: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)
    except OSError as exc:
        raise OSError(exc.errno, f"writing {value!r} to {path}: {os.strerror(exc.errno or 0)}") from None


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def read_int(path: str, default: int = 0) -> int:
    try:
        return int(_read(path).split()[0])
    except (OSError, ValueError, IndexError):
        return default


def _keyed(path: str, key: str) -> int:
    """Value of ``key N`` lines (memory.events, memory.oom_control, cpu.stat); 0 if absent."""
    try:
        for line in _read(path).splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _procs(directory: str) -> set[int]:
    try:
        return {int(p) for p in _read(os.path.join(directory, "cgroup.procs")).split()}
    except (OSError, ValueError):
        return set()


def sweep(tops: Iterable[str], timeout: float = 5.0) -> list[str]:
    """Kill every process under each cgroup in ``tops`` and remove the directories.

    Returns the directories that could not be removed. Used for a crashed run's leftovers and
    at stop, when anything still running is by definition a leftover.
    """
    deadline = time.monotonic() + timeout
    me = os.getpid()
    left: list[str] = []
    for top in tops:
        if not os.path.isdir(top):
            continue
        dirs = [dirpath for dirpath, _, _ in os.walk(top)]
        kill_file = os.path.join(top, "cgroup.kill")
        if os.path.exists(kill_file):
            try:
                _write(kill_file, "1")
            except OSError:
                pass
        while True:
            pids = set().union(*(_procs(d) for d in dirs)) - {me}
            if not pids or time.monotonic() > deadline:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.005)
        for d in reversed(dirs):
            while True:
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    # EBUSY for a moment after the last member exited.
                    if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                        left.append(d)
                        break
                    time.sleep(0.005)
    return left


class CgroupTree(ABC):
    """The driver's own cgroup (``<parent>/<name>``) and one leaf per sandbox or zygote beneath."""

    version: int

    @property
    @abstractmethod
    def dirs(self) -> list[str]:
        """The driver-level directories, one per hierarchy: what a later run must clean."""

    @abstractmethod
    def setup(self) -> None:
        """Create the driver-level directories (and delegate controllers on v2)."""

    @abstractmethod
    def leaf_dirs(self, leaf: str) -> list[str]: ...

    def procs_files(self, leaf: str) -> list[str]:
        return [os.path.join(d, "cgroup.procs") for d in self.leaf_dirs(leaf)]

    def create(self, leaf: str) -> None:
        made: list[str] = []
        try:
            for d in self.leaf_dirs(leaf):
                os.mkdir(d)
                made.append(d)
        except OSError:
            for d in reversed(made):
                os.rmdir(d)
            raise

    def remove(self, leaf: str) -> list[str]:
        """rmdir the leaf everywhere; returns the directories still busy (retry later)."""
        busy = []
        for d in self.leaf_dirs(leaf):
            try:
                os.rmdir(d)
            except FileNotFoundError:
                pass
            except OSError as exc:
                if exc.errno != errno.EBUSY:
                    raise
                busy.append(d)
        return busy

    def pids(self, leaf: str) -> set[int]:
        return set().union(*(_procs(d) for d in self.leaf_dirs(leaf)))

    @abstractmethod
    def set_memory(self, leaf: str, limit: int) -> None:
        """Limit memory to ``limit`` bytes, swap included (no swap beyond the limit)."""

    @abstractmethod
    def set_pids(self, leaf: str, limit: int) -> None: ...

    @abstractmethod
    def set_cpu(self, leaf: str, share: float) -> None:
        """Cap CPU time at ``share`` CPUs (CFS quota); 0 or less means no cap."""

    @abstractmethod
    def oom_kills(self, leaf: str) -> int:
        """How many processes the kernel OOM-killed in the leaf since it was created."""

    @abstractmethod
    def usage(self, leaf: str) -> tuple[int, float, int]:
        """(memory peak in bytes, CPU seconds, live pids)."""

    def teardown(self) -> list[str]:
        return sweep(self.dirs)


def _quota(share: float) -> int | None:
    if share <= 0:
        return None
    return max(1000, int(share * CPU_PERIOD_US))


class V1Tree(CgroupTree):
    """cgroup v1: a directory per hierarchy (memory, pids, cpu, and cpuacct for statistics)."""

    version = 1

    def __init__(self, parents: dict[str, str], name: str) -> None:
        self.base = {controller: os.path.join(parent, name) for controller, parent in parents.items()}
        self._memory: dict[str, int] = {}

    @property
    def dirs(self) -> list[str]:
        return sorted(set(self.base.values()))

    def setup(self) -> None:
        for d in self.dirs:
            os.makedirs(d, exist_ok=True)

    def leaf_dirs(self, leaf: str) -> list[str]:
        return [os.path.join(d, leaf) for d in self.dirs]

    def _file(self, controller: str, leaf: str, name: str) -> str:
        return os.path.join(self.base[controller], leaf, name)

    def set_memory(self, leaf: str, limit: int) -> None:
        limit_file = self._file("memory", leaf, "memory.limit_in_bytes")
        memsw_file = self._file("memory", leaf, "memory.memsw.limit_in_bytes")
        if not os.path.exists(memsw_file):
            _write(limit_file, str(limit))
            try:
                # Without swap accounting the next best thing is not to swap this group.
                _write(self._file("memory", leaf, "memory.swappiness"), "0")
            except OSError:
                pass
            self._memory[leaf] = limit
            return
        # The kernel keeps limit <= memsw at every step: raise memsw first, lower it last.
        previous = self._memory.get(leaf)
        if previous is not None and limit > previous:
            _write(memsw_file, str(limit))
            _write(limit_file, str(limit))
        else:
            _write(limit_file, str(limit))
            _write(memsw_file, str(limit))
        self._memory[leaf] = limit

    def set_pids(self, leaf: str, limit: int) -> None:
        _write(self._file("pids", leaf, "pids.max"), str(limit))

    def set_cpu(self, leaf: str, share: float) -> None:
        quota = _quota(share)
        _write(self._file("cpu", leaf, "cpu.cfs_quota_us"), str(quota if quota is not None else -1))

    def oom_kills(self, leaf: str) -> int:
        path = self._file("memory", leaf, "memory.oom_control")
        kills = _keyed(path, "oom_kill")
        if kills == 0 and "oom_kill " not in _read_or_empty(path):
            # Kernels before 4.13 have no counter: hitting the limit is the best evidence.
            kills = read_int(self._file("memory", leaf, "memory.failcnt"))
        return kills

    def usage(self, leaf: str) -> tuple[int, float, int]:
        peak = read_int(self._file("memory", leaf, "memory.max_usage_in_bytes"))
        cpu = 0.0
        if "cpuacct" in self.base:
            cpu = read_int(self._file("cpuacct", leaf, "cpuacct.usage")) / 1e9
        pids = read_int(self._file("pids", leaf, "pids.current"))
        return peak, cpu, pids

    def remove(self, leaf: str) -> list[str]:
        busy = super().remove(leaf)
        if not busy:
            self._memory.pop(leaf, None)
        return busy


def _read_or_empty(path: str) -> str:
    try:
        return _read(path)
    except OSError:
        return ""


class V2Tree(CgroupTree):
    """cgroup v2: one directory; controllers delegated through ``cgroup.subtree_control``."""

    version = 2

    def __init__(self, parent: str, name: str) -> None:
        self.parent = parent
        self.base = os.path.join(parent, name)
        self._host_leaf: str | None = None
        self._enabled: list[str] = []

    @property
    def dirs(self) -> list[str]:
        return [self.base]

    def setup(self) -> None:
        control = os.path.join(self.parent, "cgroup.subtree_control")
        missing = [c for c in REQUIRED if c not in _read(control).split()]
        if missing:
            request = " ".join("+" + c for c in missing)
            try:
                _write(control, request)
            except OSError as exc:
                if exc.errno != errno.EBUSY:
                    raise
                # "No internal processes": a non-root cgroup holding processes (the funclet,
                # typically a service's cgroup) cannot delegate controllers. Move its
                # processes into a leaf, as systemd expects of a delegated service.
                self._host_leaf = os.path.join(self.parent, "easyfaas-host")
                os.makedirs(self._host_leaf, exist_ok=True)
                for pid in _procs(self.parent):
                    try:
                        _write(os.path.join(self._host_leaf, "cgroup.procs"), str(pid))
                    except OSError as move_exc:
                        if move_exc.errno != errno.ESRCH:
                            raise
                _write(control, request)
            self._enabled = missing
        os.makedirs(self.base, exist_ok=True)
        _write(os.path.join(self.base, "cgroup.subtree_control"), " ".join("+" + c for c in REQUIRED))

    def leaf_dirs(self, leaf: str) -> list[str]:
        return [os.path.join(self.base, leaf)]

    def _file(self, leaf: str, name: str) -> str:
        return os.path.join(self.base, leaf, name)

    def create(self, leaf: str) -> None:
        super().create(leaf)
        for name, value in (("memory.swap.max", "0"), ("memory.oom.group", "1")):
            # oom.group: an OOM kill takes the whole sandbox, not one random process of it.
            if os.path.exists(self._file(leaf, name)):
                _write(self._file(leaf, name), value)

    def set_memory(self, leaf: str, limit: int) -> None:
        _write(self._file(leaf, "memory.max"), str(limit))

    def set_pids(self, leaf: str, limit: int) -> None:
        _write(self._file(leaf, "pids.max"), str(limit))

    def set_cpu(self, leaf: str, share: float) -> None:
        quota = _quota(share)
        _write(self._file(leaf, "cpu.max"), f"{quota if quota is not None else 'max'} {CPU_PERIOD_US}")

    def oom_kills(self, leaf: str) -> int:
        return _keyed(self._file(leaf, "memory.events"), "oom_kill")

    def usage(self, leaf: str) -> tuple[int, float, int]:
        peak = read_int(self._file(leaf, "memory.peak"), -1)
        if peak < 0:  # memory.peak is Linux 5.19+
            peak = read_int(self._file(leaf, "memory.current"))
        cpu = _keyed(self._file(leaf, "cpu.stat"), "usage_usec") / 1e6
        return peak, cpu, read_int(self._file(leaf, "pids.current"))

    def teardown(self) -> list[str]:
        left = sweep(self.dirs)
        if self._host_leaf is not None and not left:
            # Undo the move of setup(), if nothing else started using the controllers meanwhile.
            try:
                control = os.path.join(self.parent, "cgroup.subtree_control")
                _write(control, " ".join("-" + c for c in self._enabled))
                for pid in _procs(self._host_leaf):
                    _write(os.path.join(self.parent, "cgroup.procs"), str(pid))
                os.rmdir(self._host_leaf)
                self._host_leaf = None
            except OSError:
                pass
        return left


def open_tree(
    name: str, parent: str | None = None, *, mountinfo: str | None = None, proc_cgroup: str | None = None
) -> CgroupTree:
    """The driver's tree ``name`` under ``parent`` (a path inside the hierarchy; default: our own cgroup).

    Pure cgroup v2 when the unified hierarchy offers memory, pids and cpu; otherwise v1 when those
    three are mounted as v1 hierarchies (hybrid hosts included). Raises ``CgroupUnavailableError``.
    """
    if mountinfo is None:
        mountinfo = _read("/proc/self/mountinfo")
    if proc_cgroup is None:
        proc_cgroup = _read("/proc/self/cgroup")
    h = find_hierarchies(mountinfo, proc_cgroup)
    problems = []
    if h.v2_mount is not None and h.v2_own is not None:
        v2_parent = _under(h.v2_mount, parent) if parent else h.v2_own
        try:
            available = _read(os.path.join(v2_parent, "cgroup.controllers")).split()
        except OSError as exc:
            available = []
            problems.append(f"cgroup v2 at {v2_parent}: {exc.strerror}")
        if all(c in available for c in REQUIRED):
            return V2Tree(v2_parent, name)
        missing = [c for c in REQUIRED if c not in available]
        problems.append(f"cgroup v2 at {h.v2_mount} lacks the {', '.join(missing)} controller(s)")
    if all(c in h.v1_mounts for c in REQUIRED):
        wanted = [*REQUIRED, *(["cpuacct"] if "cpuacct" in h.v1_mounts else [])]
        parents = {c: (_under(h.v1_mounts[c], parent) if parent else h.v1_own[c]) for c in wanted}
        return V1Tree(parents, name)
    missing = [c for c in REQUIRED if c not in h.v1_mounts]
    problems.append(f"no cgroup v1 hierarchy for {', '.join(missing)}")
    raise CgroupUnavailableError("; ".join(problems))


def _under(mountpoint: str, path: str) -> str:
    return mountpoint.rstrip("/") + "/" + path.strip("/")
