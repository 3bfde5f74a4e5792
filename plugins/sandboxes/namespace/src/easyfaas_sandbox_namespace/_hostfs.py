"""Host-side mounts and directories of the namespace driver: the shared code anchor, code binds, cleanup.

Removals refuse to cross a mount point: a stale bind of a function's code must never be deleted through.
"""

from __future__ import annotations

import os
import stat

from easyfaas_sandbox_namespace import _linux as L
from easyfaas_sandbox_namespace._cgroups import unescape

__all__ = ["bind_code", "make_anchor", "make_private_anchor", "mounts_under", "remove_tree", "unmount_under"]


def mounts_under(prefix: str) -> list[str]:
    """Mount points at or below ``prefix`` in our mount namespace, deepest first."""
    prefix = prefix.rstrip("/")
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = unescape(line.split(" ", 5)[4])
            if point == prefix or point.startswith(prefix + "/"):
                found.append(point)
    return sorted(found, key=lambda p: (p.count("/"), p), reverse=True)


def unmount_under(prefix: str) -> list[str]:
    """Detach every mount at or below ``prefix`` (stacked ones too); returns those that stayed."""
    for _ in range(64):
        points = mounts_under(prefix)
        if not points:
            return []
        for point in points:
            try:
                L.umount(point, L.MNT_DETACH)
            except OSError:
                pass
    return mounts_under(prefix)


def make_anchor(path: str) -> None:
    """Turn ``path`` into a mount of its own, in a peer group of its own, with shared propagation.

    Binds made under it later (the function code of each sandbox) propagate to the slave copies
    that sandboxes hold of it. Binding it onto itself first keeps the rest of the host's
    propagation untouched.
    """
    L.mount(path, path, None, L.MS_BIND)
    L.mount(None, path, None, L.MS_PRIVATE)
    L.mount(None, path, None, L.MS_SHARED)


def make_private_anchor(path: str) -> None:
    """A private self-bind: where the pre-5.12 code path prepares a read-only bind before moving it."""
    L.mount(path, path, None, L.MS_BIND)
    L.mount(None, path, None, L.MS_PRIVATE)


def bind_code(source: str, target: str, staging: str | None) -> None:
    """Bind ``source`` read-only on ``target`` (under the shared anchor).

    With the new mount API the bind is read-only before it is attached. Without it, a bind then
    remount would propagate a *writable* copy, so the read-only bind is made at ``staging`` (a
    directory under a private mount) and moved into place; a move propagates the finished mount.
    """
    if staging is None:
        L.bind_readonly_detached(source, target)
        return
    os.mkdir(staging, 0o755)
    try:
        L.mount(source, staging, None, L.MS_BIND)
        try:
            L.mount(None, staging, None, L.MS_REMOUNT | L.MS_BIND | L.MS_RDONLY | L.MS_NOSUID | L.MS_NODEV)
            L.mount(staging, target, None, L.MS_MOVE)
        except OSError:
            L.umount(staging, L.MNT_DETACH)
            raise
    finally:
        os.rmdir(staging)


def remove_tree(path: str) -> None:
    """Remove ``path`` and what it holds; refuse if anything at or below it is mounted.

    A mount found here means unmounting failed, and deleting further could reach a function's
    code through a bind (``os.path.ismount`` cannot see same-filesystem binds: mountinfo can).
    """
    busy = mounts_under(path)
    if busy:
        raise OSError(16, f"refusing to remove {path}: {busy[0]} is still mounted")
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
