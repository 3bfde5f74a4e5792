"""Unix sockets at any path length: ``sun_path`` holds 107 bytes, data directories can be deeper.

Connecting goes through ``/proc/self/fd/<dir fd>/<name>`` when the path is too long; binding
callers should bind relative to their working directory or use ``short_path``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import tempfile
from pathlib import Path

__all__ = ["MAX_PATH", "connect_unix", "short_path"]

#: Longest path that fits ``sockaddr_un.sun_path`` with its terminating NUL.
MAX_PATH = 107


async def connect_unix(path: str) -> socket.socket:
    """A connected, non-blocking unix stream socket to ``path``, whatever its length."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        if len(os.fsencode(path)) <= MAX_PATH:
            await loop.sock_connect(sock, path)
        else:
            dirfd = os.open(os.path.dirname(path) or ".", os.O_PATH | os.O_DIRECTORY)
            try:
                await loop.sock_connect(sock, f"/proc/self/fd/{dirfd}/{os.path.basename(path)}")
            finally:
                os.close(dirfd)
    except BaseException:
        sock.close()
        raise
    return sock


def short_path(preferred: Path, name: str) -> Path:
    """``preferred`` if it fits a socket address, else a stable short path in the temp directory."""
    if len(os.fsencode(str(preferred))) <= MAX_PATH - 8:
        return preferred
    digest = hashlib.sha256(str(preferred).encode()).hexdigest()[:16]
    directory = Path(tempfile.gettempdir()) / f"easyfaas-{digest}"
    with contextlib.suppress(FileExistsError):
        directory.mkdir(mode=0o700)
    return directory / name
