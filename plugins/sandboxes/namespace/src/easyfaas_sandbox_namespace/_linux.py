"""Typed wrappers over the Linux calls Python 3.11 lacks: mount, unshare, setns, pivot_root, capset, seccomp.

Standard library only: the driver imports it, and the zygote loads the same file by path.
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct
import sys

__all__ = [
    "CLONE_NEWIPC",
    "CLONE_NEWNET",
    "CLONE_NEWNS",
    "CLONE_NEWPID",
    "CLONE_NEWUSER",
    "CLONE_NEWUTS",
    "MNT_DETACH",
    "MS_BIND",
    "MS_MOVE",
    "MS_NODEV",
    "MS_NOEXEC",
    "MS_NOSUID",
    "MS_PRIVATE",
    "MS_RDONLY",
    "MS_REC",
    "MS_REMOUNT",
    "MS_SHARED",
    "MS_SLAVE",
    "bind_readonly_detached",
    "drop_bounding_set",
    "drop_capabilities",
    "install_seccomp",
    "mount",
    "new_mount_api",
    "pivot_root",
    "seccomp_program",
    "set_name",
    "set_no_new_privs",
    "setns",
    "umount",
    "unshare",
]

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MS_SLAVE = 0x80000
MS_SHARED = 0x100000
MNT_DETACH = 0x2

_PR_SET_NAME = 15
_PR_CAPBSET_DROP = 24
_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2

_AT_FDCWD = -100
_AT_EMPTY_PATH = 0x1000
_OPEN_TREE_CLONE = 0x1
_OPEN_TREE_CLOEXEC = 0o2000000
_MOVE_MOUNT_F_EMPTY_PATH = 0x4
_MOUNT_ATTR_RDONLY = 0x1
_MOUNT_ATTR_NOSUID = 0x2
_MOUNT_ATTR_NODEV = 0x4

# Syscalls from 424 on share one number on every architecture; older ones do not.
_NR_OPEN_TREE = 428
_NR_MOVE_MOUNT = 429
_NR_MOUNT_SETATTR = 442
_NR_CLONE3 = 435
_ARCHES: dict[str, dict[str, int]] = {
    "x86_64": {
        "audit": 0xC000003E,
        "pivot_root": 155,
        "unshare": 272,
        "clone": 56,
        "keyctl": 250,
        "add_key": 248,
        "request_key": 249,
        "bpf": 321,
        "perf_event_open": 298,
        "userfaultfd": 323,
    },
    "aarch64": {
        "audit": 0xC00000B7,
        "pivot_root": 41,
        "unshare": 97,
        "clone": 220,
        "keyctl": 219,
        "add_key": 217,
        "request_key": 218,
        "bpf": 280,
        "perf_event_open": 241,
        "userfaultfd": 282,
    },
}
_ARCH = _ARCHES.get(platform.machine())

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_libc.syscall.restype = ctypes.c_long


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def _b(path: str | None) -> bytes | None:
    return None if path is None else os.fsencode(path)


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    """mount(2); the error names the target, which is what an operator needs to see."""
    _check(_libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data)), f"mount {target}")


def umount(target: str, flags: int = MNT_DETACH) -> None:
    _check(_libc.umount2(_b(target), flags), f"umount {target}")


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), f"unshare({flags:#x})")


def setns(fd: int, nstype: int) -> None:
    _check(_libc.setns(fd, nstype), f"setns({nstype:#x})")


def _syscall(name: str) -> int:
    if _ARCH is None:
        raise OSError(38, f"{name}: syscall number unknown on {platform.machine()}")
    return _ARCH[name]


def pivot_root(new_root: str, put_old: str) -> None:
    _check(int(_libc.syscall(_syscall("pivot_root"), _b(new_root), _b(put_old))), "pivot_root")


def _prctl(option: int, arg: int = 0, what: str = "prctl") -> None:
    _check(_libc.prctl(option, arg, 0, 0, 0), what)


def set_name(name: str) -> None:
    """Set the thread's name (``comm``, 15 bytes): what ``ps -o comm`` and psutil's name() show."""
    buf = ctypes.create_string_buffer(name.encode()[:15])
    _check(_libc.prctl(_PR_SET_NAME, ctypes.addressof(buf), 0, 0, 0), "prctl(PR_SET_NAME)")


def set_no_new_privs() -> None:
    _prctl(_PR_SET_NO_NEW_PRIVS, 1, "prctl(PR_SET_NO_NEW_PRIVS)")


def drop_bounding_set(last_cap: int) -> None:
    """Empty the capability bounding set, so no later execve can grant a capability back."""
    for cap in range(last_cap + 1):
        _prctl(_PR_CAPBSET_DROP, cap, f"prctl(PR_CAPBSET_DROP, {cap})")


def drop_capabilities() -> None:
    """Clear the effective, permitted and inheritable sets of the calling thread (capset v3)."""
    header = _CapHeader(0x20080522, 0)
    data = (_CapData * 2)()
    _check(int(_libc.capset(ctypes.byref(header), ctypes.byref(data))), "capset")


def new_mount_api() -> bool:
    """Whether open_tree/mount_setattr/move_mount work (Linux 5.12+)."""
    fd = int(_libc.syscall(_NR_OPEN_TREE, _AT_FDCWD, b"/", _OPEN_TREE_CLONE | _OPEN_TREE_CLOEXEC))
    if fd < 0:
        return False
    os.close(fd)
    return True


def bind_readonly_detached(source: str, target: str) -> None:
    """Bind ``source`` on ``target`` read-only, nosuid, nodev in one attach.

    The mount is made read-only *before* it is attached, so copies that mount propagation
    hands to other namespaces are read-only too (a bind followed by a remount is not).
    """
    fd = _check(
        int(_libc.syscall(_NR_OPEN_TREE, _AT_FDCWD, _b(source), _OPEN_TREE_CLONE | _OPEN_TREE_CLOEXEC)),
        f"open_tree {source}",
    )
    try:
        attr = _MountAttr(_MOUNT_ATTR_RDONLY | _MOUNT_ATTR_NOSUID | _MOUNT_ATTR_NODEV, 0, 0, 0)
        _check(
            int(_libc.syscall(_NR_MOUNT_SETATTR, fd, b"", _AT_EMPTY_PATH, ctypes.byref(attr), ctypes.sizeof(attr))),
            f"mount_setattr {source}",
        )
        _check(
            int(_libc.syscall(_NR_MOVE_MOUNT, fd, b"", _AT_FDCWD, _b(target), _MOVE_MOUNT_F_EMPTY_PATH)),
            f"move_mount {source} -> {target}",
        )
    finally:
        os.close(fd)


# seccomp: classic BPF over struct seccomp_data {int nr; u32 arch; u64 ip; u64 args[6]}.
_BPF_LD_W_ABS = 0x20
_BPF_JEQ_K = 0x15
_BPF_JGE_K = 0x35
_BPF_JSET_K = 0x45
_BPF_RET_K = 0x06
_RET_ALLOW = 0x7FFF0000
_RET_KILL_PROCESS = 0x80000000
_RET_ERRNO = 0x00050000
_EPERM = 1
_ENOSYS = 38


def seccomp_program() -> bytes | None:
    """A filter that refuses user namespaces, keyrings, bpf, perf and userfaultfd.

    Everything else is already refused by the missing capabilities; these are the calls an
    unprivileged process may still make and that widen the kernel's attack surface (a user
    namespace would even give the function capabilities over mounts it creates). ``clone3``
    answers ENOSYS so libc falls back to ``clone``, whose flags the filter can read.
    ``None`` on architectures whose syscall numbers are not known here.
    """
    if _ARCH is None:
        return None
    arg0 = 16 if sys.byteorder == "little" else 20
    prog: list[tuple[int, int, int, int]] = [
        (_BPF_LD_W_ABS, 0, 0, 4),
        (_BPF_JEQ_K, 1, 0, _ARCH["audit"]),
        (_BPF_RET_K, 0, 0, _RET_KILL_PROCESS),  # a foreign ABI (int 0x80) would bypass the numbers below
        (_BPF_LD_W_ABS, 0, 0, 0),
    ]
    if platform.machine() == "x86_64":
        prog += [(_BPF_JGE_K, 0, 1, 0x40000000), (_BPF_RET_K, 0, 0, _RET_ERRNO | _ENOSYS)]  # x32 ABI
    prog += [(_BPF_JEQ_K, 0, 1, _NR_CLONE3), (_BPF_RET_K, 0, 0, _RET_ERRNO | _ENOSYS)]
    for name in ("unshare", "clone"):
        prog += [
            (_BPF_JEQ_K, 0, 4, _ARCH[name]),
            (_BPF_LD_W_ABS, 0, 0, arg0),
            (_BPF_JSET_K, 0, 1, CLONE_NEWUSER),
            (_BPF_RET_K, 0, 0, _RET_ERRNO | _EPERM),
            (_BPF_RET_K, 0, 0, _RET_ALLOW),
        ]
    for name in ("keyctl", "add_key", "request_key", "bpf", "perf_event_open", "userfaultfd"):
        prog += [(_BPF_JEQ_K, 0, 1, _ARCH[name]), (_BPF_RET_K, 0, 0, _RET_ERRNO | _EPERM)]
    for nr in (425, 426, 427):  # io_uring_setup/enter/register: same numbers everywhere
        prog += [(_BPF_JEQ_K, 0, 1, nr), (_BPF_RET_K, 0, 0, _RET_ERRNO | _EPERM)]
    prog.append((_BPF_RET_K, 0, 0, _RET_ALLOW))
    return b"".join(struct.pack("HBBI", *insn) for insn in prog)


def install_seccomp(program: bytes) -> None:
    """Apply ``program`` to the calling thread and its descendants; needs no_new_privs first."""
    buf = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.cast(buf, ctypes.c_void_p))
    _check(
        _libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0),
        "prctl(PR_SET_SECCOMP)",
    )
