"""Code packages: zip a function directory, and unpack an uploaded zip or tar.gz safely.

Every entry is checked before anything is written; a refusal names the offending entry.
"""

from __future__ import annotations

import io
import os
import posixpath
import shutil
import stat
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from easyfaas.errors import FunctionSpecError

__all__ = ["PackageLimits", "pack_directory", "unpack"]

_SKIP = {".git", "__pycache__", ".venv", ".easyfaas", ".mypy_cache", ".pytest_cache"}


@dataclass(frozen=True)
class PackageLimits:
    """Defaults follow AWS Lambda's: 50 MB zipped, 250 MB unpacked."""

    max_archive: int = 50 * 2**20
    max_unpacked: int = 250 * 2**20
    max_entries: int = 20_000
    #: An entry that expands more than this many times is treated as a decompression bomb.
    max_ratio: int = 1000


def pack_directory(root: Path) -> bytes:
    """Zip a function's directory (symlinks inside it are followed, those leaving it refused)."""
    root = root.resolve()
    if not root.is_dir():
        raise FunctionSpecError(f"{root} is not a directory")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        for path in _walk(root):
            rel = path.relative_to(root).as_posix()
            real = path.resolve()
            if not real.is_relative_to(root):
                raise FunctionSpecError(f"{rel}: symlink points outside the function directory (to {real})")
            if real.is_file():
                zf.write(real, rel)
    return buf.getvalue()


def _walk(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP)
        for name in sorted(filenames):
            yield Path(dirpath) / name
        for name in dirnames:
            if (Path(dirpath) / name).is_symlink():
                raise FunctionSpecError(f"{(Path(dirpath) / name).relative_to(root)}: symlinked directories are not supported")


def unpack(data: bytes, dest: Path, limits: PackageLimits = PackageLimits()) -> None:
    """Unpack a zip or (gzipped) tar archive into the empty directory ``dest``."""
    if len(data) > limits.max_archive:
        raise FunctionSpecError(f"the code package is {len(data)} bytes, over the {limits.max_archive}-byte limit")
    if data[:4] == b"PK\x03\x04" or data[:4] == b"PK\x05\x06":
        _unpack_zip(data, dest, limits)
    elif data[:2] == b"\x1f\x8b" or _is_tar(data):
        _unpack_tar(data, dest, limits)
    else:
        raise FunctionSpecError("the code package is neither a zip nor a tar/tar.gz archive")


def _is_tar(data: bytes) -> bool:
    return len(data) > 262 and data[257:262] == b"ustar"


def _check_name(name: str) -> str:
    """The entry's normalised relative path; refuses absolute paths and traversal."""
    if "\0" in name or "\\" in name:
        raise FunctionSpecError(f"{name!r}: entry name contains a NUL or backslash")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise FunctionSpecError(f"{name}: absolute paths are not allowed in a code package")
    norm = posixpath.normpath(name)
    if norm == ".." or norm.startswith("../") or "/../" in f"/{name}/":
        raise FunctionSpecError(f"{name}: path traversal ('..') is not allowed in a code package")
    return norm


def _check_link(name: str, target: str) -> None:
    if target.startswith("/"):
        raise FunctionSpecError(f"{name}: symlink to an absolute path ({target}) is not allowed")
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
    if resolved == ".." or resolved.startswith("../"):
        raise FunctionSpecError(f"{name}: symlink points outside the package (to {target})")


def _unpack_zip(data: bytes, dest: Path, limits: PackageLimits) -> None:
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = zf.infolist()
    except (zipfile.BadZipFile, ValueError) as exc:
        raise FunctionSpecError(f"the zip archive is corrupt: {exc}") from exc
    if len(infos) > limits.max_entries:
        raise FunctionSpecError(f"the package has {len(infos)} entries, over the {limits.max_entries} limit")
    total = 0
    plan: list[tuple[zipfile.ZipInfo, str, str | None]] = []
    for info in infos:
        name = _check_name(info.filename)
        mode = info.external_attr >> 16
        kind = stat.S_IFMT(mode) if mode else 0
        link = None
        if kind == stat.S_IFLNK:
            link = zf.read(info).decode("utf-8", "replace")
            _check_link(name, link)
        elif kind not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise FunctionSpecError(f"{info.filename}: special files (devices, fifos, sockets) are not allowed")
        total += info.file_size
        if total > limits.max_unpacked:
            raise FunctionSpecError(f"{info.filename}: unpacked size exceeds the {limits.max_unpacked}-byte limit")
        if info.compress_size and info.file_size / info.compress_size > limits.max_ratio and info.file_size > 2**20:
            raise FunctionSpecError(
                f"{info.filename}: compression ratio {info.file_size // info.compress_size}:1 looks like a decompression bomb"
            )
        plan.append((info, name, link))
    written = 0
    for info, name, link in plan:
        target = dest / name
        if info.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if link is not None:
            os.symlink(link, target)
            continue
        with zf.open(info) as src, open(target, "wb") as out:
            # Sizes in zip headers can lie: count what actually comes out.
            while chunk := src.read(1 << 20):
                written += len(chunk)
                if written > limits.max_unpacked:
                    raise FunctionSpecError(f"{info.filename}: unpacked size exceeds the {limits.max_unpacked}-byte limit")
                out.write(chunk)
        mode = info.external_attr >> 16
        if mode & 0o111:
            os.chmod(target, 0o755)


def _unpack_tar(data: bytes, dest: Path, limits: PackageLimits) -> None:
    try:
        tf = tarfile.open(fileobj=io.BytesIO(data), mode="r:*")  # noqa: SIM115 - in-memory, closed with the buffer
        members = tf.getmembers()
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise FunctionSpecError(f"the tar archive is corrupt: {exc}") from exc
    if len(members) > limits.max_entries:
        raise FunctionSpecError(f"the package has {len(members)} entries, over the {limits.max_entries} limit")
    total = 0
    for member in members:
        name = _check_name(member.name)
        if member.isdev() or member.isfifo():
            raise FunctionSpecError(f"{member.name}: special files (devices, fifos) are not allowed")
        if member.issym():
            _check_link(name, member.linkname)
        elif member.islnk():
            _check_name(member.linkname)
        elif not (member.isfile() or member.isdir()):
            raise FunctionSpecError(f"{member.name}: unsupported entry type")
        total += member.size
        if total > limits.max_unpacked:
            raise FunctionSpecError(f"{member.name}: unpacked size exceeds the {limits.max_unpacked}-byte limit")
    if total > 2**20 and total / max(1, len(data)) > limits.max_ratio:
        raise FunctionSpecError(f"the archive expands {total // len(data)}:1, which looks like a decompression bomb")
    try:
        # The 'data' filter re-checks everything above and drops ownership and setuid bits.
        tf.extractall(dest, filter="data")
    except (tarfile.TarError, OSError) as exc:
        shutil.rmtree(dest, ignore_errors=True)
        raise FunctionSpecError(f"cannot unpack the archive: {exc}") from exc
