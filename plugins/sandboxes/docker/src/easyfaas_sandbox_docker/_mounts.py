"""Host-side mounts of the docker driver: the shared anchor containers see /code through, read-only code binds.

Every removal refuses to cross a mount point, so a bind left behind by a failed unmount can never
turn a cleanup into deleting a function's code.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import stat

__all__ = [
    "bind_readonly",
    "make_private_anchor",
    "make_shared_anchor",
    "mounts_under",
    "remove_tree",
    "unmount",
    "unmount_under",
]

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_PRIVATE = 1 << 18
MS_SHARED = 1 << 20
MNT_DETACH = 0x2

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_ESCAPE = re.compile(r"\\([0-7]{3})")


def _mount(source: str | None, target: str, flags: int) -> None:
    if _libc.mount(None if source is None else os.fsencode(source), os.fsencode(target), None, flags, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source or ''} on {target}: {os.strerror(err)}")


def unmount(target: str) -> None:
    """Lazily detach the mount at ``target``; a path that is not mounted is fine."""
    if _libc.umount2(os.fsencode(target), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOENT):
            raise OSError(err, f"umount {target}: {os.strerror(err)}")


def mounts_under(prefix: str) -> list[str]:
    """Mount points at or below ``prefix`` in our mount namespace, deepest first."""
    prefix = prefix.rstrip("/")
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), line.split(" ", 5)[4])
            if point == prefix or point.startswith(prefix + "/"):
                found.append(point)
    return sorted(found, key=lambda p: (p.count("/"), p), reverse=True)


def unmount_under(prefix: str) -> list[str]:
    """Detach every mount at or below ``prefix``, stacked ones too; returns those that stayed."""
    for _ in range(64):
        points = mounts_under(prefix)
        if not points:
            return []
        for point in points:
            try:
                unmount(point)
            except OSError:
                pass
    return mounts_under(prefix)


def make_shared_anchor(path: str) -> None:
    """Make ``path`` a mount of its own in a new peer group with shared propagation.

    Containers bind a subdirectory of it with ``rslave`` propagation; code bound under it later
    on the host then appears in that one container. The self-bind keeps the propagation of the
    rest of the host untouched.
    """
    _mount(path, path, MS_BIND)
    _mount(None, path, MS_PRIVATE)
    _mount(None, path, MS_SHARED)


def make_private_anchor(path: str) -> None:
    """A private self-bind: where a code bind is made read-only before anything can see it."""
    _mount(path, path, MS_BIND)
    _mount(None, path, MS_PRIVATE)


def bind_readonly(source: str, target: str, staging: str) -> None:
    """Bind ``source`` read-only (nosuid, nodev) onto ``target``, which sits under the shared anchor.

    Remount flags do not propagate, so binding at ``target`` then remounting would leave the
    container a writable copy. The bind is made at ``staging`` (under a private mount), made
    read-only there, then moved: a move propagates the finished mount.
    """
    os.mkdir(staging, 0o700)
    try:
        _mount(source, staging, MS_BIND)
        try:
            _mount(None, staging, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
            _mount(staging, target, MS_MOVE)
        except OSError:
            unmount(staging)
            raise
    finally:
        os.rmdir(staging)


def remove_tree(path: str) -> None:
    """Remove ``path`` and what it holds; refuse if anything at or below it is still mounted.

    ``os.path.ismount`` cannot see binds within one filesystem; mountinfo can.
    """
    busy = mounts_under(path)
    if busy:
        raise OSError(errno.EBUSY, f"refusing to remove {path}: {busy[0]} is still mounted")
    _remove(path)


def _remove(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(path)
        return
    for entry in os.scandir(path):
        if entry.is_dir(follow_symlinks=False):
            _remove(entry.path)
        else:
            os.unlink(entry.path)
    os.rmdir(path)
