"""What the kernel offers sandboxes: namespaces, cgroups, user namespaces, pivot_root, seccomp.

Standard library only (no plugin imports); ``easyfaas doctor`` adds each driver's ``availability()``.
"""

from __future__ import annotations

import os
import platform
import re
import sys
from typing import Any

__all__ = ["format_report", "kernel_report"]

NAMESPACES = ("cgroup", "ipc", "mnt", "net", "pid", "time", "user", "uts")
#: The namespaces the namespace sandbox needs.
SANDBOX_NAMESPACES = ("ipc", "mnt", "net", "pid", "uts")
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


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _read_int(path: str) -> int | None:
    text = _read(path)
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _cgroups(mountinfo: str) -> dict[str, Any]:
    v1: dict[str, str] = {}
    v2_mount: str | None = None
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        fields, rfields = left.split(), right.split()
        if not sep or len(fields) < 5 or len(rfields) < 3:
            continue
        mountpoint = _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), fields[4])
        if rfields[0] == "cgroup2" and v2_mount is None:
            v2_mount = mountpoint
        elif rfields[0] == "cgroup":
            for option in rfields[2].split(","):
                if option in _V1_CONTROLLERS:
                    v1.setdefault(option, mountpoint)
    v2_controllers: list[str] = []
    if v2_mount is not None:
        v2_controllers = (_read(os.path.join(v2_mount, "cgroup.controllers")) or "").split()
    if v2_mount is not None and not v1:
        version = "v2"
    elif v1 and v2_mount is not None:
        version = "hybrid"  # v1 controllers, plus a v2 hierarchy (usually without controllers)
    elif v1:
        version = "v1"
    else:
        version = "none"
    return {
        "version": version,
        "v1": dict(sorted(v1.items())),
        "v2": {"mount": v2_mount, "controllers": v2_controllers},
    }


def _user_namespaces() -> dict[str, Any]:
    clone = _read_int("/proc/sys/kernel/unprivileged_userns_clone")  # Debian/Ubuntu patch
    maximum = _read_int("/proc/sys/user/max_user_namespaces")
    apparmor = _read_int("/proc/sys/kernel/apparmor_restrict_unprivileged_userns")  # Ubuntu 23.10+
    exists = os.path.exists("/proc/self/ns/user")
    allowed = exists and clone != 0 and maximum != 0 and apparmor != 1
    return {
        "unprivileged_userns_clone": clone,
        "max_user_namespaces": maximum,
        "apparmor_restrict_unprivileged_userns": apparmor,
        "unprivileged_allowed": allowed,
    }


def kernel_report() -> dict[str, Any]:
    """Kernel features relevant to sandboxes, as plain JSON-able data."""
    linux = sys.platform.startswith("linux")
    mountinfo = (_read("/proc/self/mountinfo") or "") if linux else ""
    return {
        "kernel": {"system": platform.system(), "release": platform.release(), "machine": platform.machine()},
        "root": hasattr(os, "geteuid") and os.geteuid() == 0,
        "namespaces": {ns: linux and os.path.exists(f"/proc/self/ns/{ns}") for ns in NAMESPACES},
        "cgroups": _cgroups(mountinfo),
        "user_namespaces": _user_namespaces() if linux else {"unprivileged_allowed": False},
        # pivot_root(2) is in every Linux kernel; nothing to probe without doing it.
        "pivot_root": linux,
        "seccomp": linux and os.path.exists("/proc/sys/kernel/seccomp/actions_avail"),
    }


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def format_report(report: dict[str, Any]) -> str:
    """The report of ``kernel_report()`` for humans, one topic per line."""
    kernel = report.get("kernel", {})
    namespaces = report.get("namespaces", {})
    present = [ns for ns, ok in namespaces.items() if ok]
    missing = [ns for ns, ok in namespaces.items() if not ok]
    cgroups = report.get("cgroups", {})
    v1, v2 = cgroups.get("v1", {}), cgroups.get("v2", {})
    userns = report.get("user_namespaces", {})
    lines = [
        f"kernel           {kernel.get('system', '?')} {kernel.get('release', '?')} {kernel.get('machine', '?')}",
        f"running as root  {_yes(bool(report.get('root')))}",
        f"namespaces       {' '.join(present) or 'none'}" + (f"  (missing: {' '.join(missing)})" if missing else ""),
    ]
    sandbox_missing = [ns for ns in SANDBOX_NAMESPACES if not namespaces.get(ns)]
    if sandbox_missing:
        lines.append(f"                 the namespace sandbox needs {' '.join(sandbox_missing)}")
    lines.append(f"cgroups          {cgroups.get('version', 'none')}")
    if v1:
        lines.append(f"  v1 controllers {' '.join(v1)}")
    if v2.get("mount"):
        lines.append(f"  v2 at {v2['mount']}: controllers {' '.join(v2.get('controllers') or []) or '(none)'}")
    allowed = bool(userns.get("unprivileged_allowed"))
    details = [
        f"{key}={userns[key]}"
        for key in ("unprivileged_userns_clone", "max_user_namespaces", "apparmor_restrict_unprivileged_userns")
        if userns.get(key) is not None
    ]
    lines.append(
        f"user namespaces  unprivileged {'allowed' if allowed else 'not allowed'}"
        + (f" ({', '.join(details)})" if details else "")
    )
    lines.append(f"pivot_root       {_yes(bool(report.get('pivot_root')))}")
    lines.append(f"seccomp filters  {_yes(bool(report.get('seccomp')))}")
    return "\n".join(lines)
