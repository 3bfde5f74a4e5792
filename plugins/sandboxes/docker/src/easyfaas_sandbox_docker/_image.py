"""The base image, made locally with no registry: a skeleton root imported as ``easyfaas/base:1``.

The host's system directories and the runtime's interpreter are bind-mounted over it read-only,
so the image itself holds only mount points, the merged-/usr symlinks and two users.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tarfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["BASE_IMAGE", "SKELETON_LABEL", "Skeleton", "host_skeleton", "import_base_image"]

log = logging.getLogger("easyfaas.sandbox.docker")

BASE_IMAGE = "easyfaas/base:1"
#: Image label holding the skeleton's digest: a host whose layout changed gets a fresh import.
SKELETON_LABEL = "easyfaas.skeleton"
#: Top-level directories that merged-/usr hosts make symlinks into /usr.
_LINKABLE = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
#: Mount points the driver always uses; ``sbin`` is where Docker binds its init (docker-init).
_DIRS = ("code", "runner", "run", "run/easyfaas", "tmp", "etc", "sbin", "proc", "dev", "sys", "usr")
_PASSWD = "root:x:0:0:root:/root:/usr/sbin/nologin\nsandbox:x:{uid}:{gid}:sandbox:/tmp:/usr/sbin/nologin\n"
_GROUP = "root:x:0:\nsandbox:x:{gid}:\n"


@dataclass(frozen=True)
class Skeleton:
    """The image's content for this host: a tar archive and the directories to bind over it."""

    tar: bytes
    digest: str
    #: Real top-level system directories (not symlinks into /usr) that must be bound from the host.
    system_dirs: tuple[str, ...]
    entries: int


def host_skeleton(uid: int, gid: int, root: str = "/") -> Skeleton:
    """Mirror the host's top-level layout: symlinks where the host has them, empty mount points elsewhere."""
    links: dict[str, str] = {}
    system_dirs = ["/usr"]
    for name in _LINKABLE:
        path = os.path.join(root, name)
        if os.path.islink(path):
            links[name] = os.readlink(path)
        elif os.path.isdir(path) and name != "sbin":
            system_dirs.append("/" + name)
    dirs = sorted({*_DIRS, *(n for n in _LINKABLE if n not in links and os.path.isdir(os.path.join(root, n)))})
    # docker-init is bound at /sbin/docker-init: /sbin must be a real directory of the image.
    links.pop("sbin", None)
    files = {"etc/passwd": _PASSWD.format(uid=uid, gid=gid), "etc/group": _GROUP.format(gid=gid)}
    buffer = io.BytesIO()
    # Fixed owners, modes and times: the same host layout gives the same bytes and digest.
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in sorted(dirs):
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if name == "tmp" else 0o755
            tar.addfile(info)
        for name, target in sorted(links.items()):
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.mode = tarfile.SYMTYPE, target, 0o777
            tar.addfile(info)
        for name, text in sorted(files.items()):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    data = buffer.getvalue()
    return Skeleton(
        tar=data,
        digest=hashlib.sha256(data).hexdigest()[:16],
        system_dirs=tuple(system_dirs),
        entries=len(dirs) + len(links) + len(files),
    )


def import_base_image(api: Any, skeleton: Skeleton, image: str = BASE_IMAGE) -> str:
    """Import ``skeleton`` as ``image`` through the Engine API, logging each step; returns the image id.

    ``api`` is a ``docker.APIClient``. Raises the SDK's errors unchanged.
    """
    repository, _, tag = image.rpartition(":")
    started = time.monotonic()
    log.info(
        "docker sandbox: building %s (%d entries, %.1f KiB, skeleton %s): [1/2] importing the root",
        image, skeleton.entries, len(skeleton.tar) / 1024, skeleton.digest,
    )  # fmt: skip
    reply = api.import_image_from_data(
        skeleton.tar, repository=repository, tag=tag, changes=[f"LABEL {SKELETON_LABEL}={skeleton.digest}"]
    )
    image_id = ""
    for line in _json_lines(reply):
        if "error" in line:
            raise RuntimeError(f"importing {image} failed: {line['error']}")
        status = str(line.get("status", ""))
        if status.startswith("sha256:"):
            image_id = status
        elif status or line.get("progress"):
            log.info("docker sandbox: building %s: %s %s", image, status, line.get("progress", ""))
    log.info(
        "docker sandbox: building %s: [2/2] tagged %s in %.2fs",
        image,
        image_id[:19] or "(no id)",
        time.monotonic() - started,
    )
    return image_id


def _json_lines(reply: Any) -> Sequence[dict[str, Any]]:
    """The daemon answers an import with a stream of JSON objects, one per line."""
    if isinstance(reply, dict):
        return [reply]
    lines = []
    for raw in str(reply).splitlines():
        raw = raw.strip()
        if raw:
            try:
                value = json.loads(raw)
            except ValueError:
                continue
            if isinstance(value, dict):
                lines.append(value)
    return lines
