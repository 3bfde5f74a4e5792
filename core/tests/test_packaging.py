"""Code packages: every refused entry is named, nothing is written outside the destination."""

from __future__ import annotations

import io
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from easyfaas.errors import FunctionSpecError
from easyfaas.packaging import PackageLimits, pack_directory, unpack


def zip_of(entries: list[tuple[str, bytes, int]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data, mode in entries:
            info = zipfile.ZipInfo(name)
            info.external_attr = mode << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    return buf.getvalue()


def tar_of(members: list[tarfile.TarInfo], data: dict[str, bytes] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for member in members:
            payload = (data or {}).get(member.name)
            tf.addfile(member, io.BytesIO(payload) if payload is not None else None)
    return buf.getvalue()


def test_round_trip_of_a_directory(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    (src / "handler.py").write_text("x = 1\n")
    (src / "pkg" / "m.py").write_text("y = 2\n")
    (src / "__pycache__").mkdir()
    (src / "__pycache__" / "junk.pyc").write_bytes(b"junk")
    dest = tmp_path / "dest"
    dest.mkdir()
    unpack(pack_directory(src), dest)
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*.py")) == ["handler.py", "pkg/m.py"]
    assert not (dest / "__pycache__").exists()


def test_pack_refuses_symlinks_leaving_the_directory(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "passwd").symlink_to("/etc/passwd")
    with pytest.raises(FunctionSpecError, match="passwd: symlink points outside"):
        pack_directory(src)


@pytest.mark.parametrize(("name", "message"), [
    ("../evil.py", "path traversal"), ("a/../../evil.py", "path traversal"), ("/etc/cron.d/x", "absolute paths"),
])  # fmt: skip
def test_zip_traversal_and_absolute_paths_are_refused(tmp_path: Path, name: str, message: str) -> None:
    with pytest.raises(FunctionSpecError, match=message) as info:
        unpack(zip_of([(name, b"x", stat.S_IFREG | 0o644)]), tmp_path)
    assert name in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_zip_symlink_outside_is_refused(tmp_path: Path) -> None:
    archive = zip_of([("ok.py", b"x", stat.S_IFREG | 0o644), ("link", b"../../etc/shadow", stat.S_IFLNK | 0o777)])
    with pytest.raises(FunctionSpecError, match="link: symlink points outside"):
        unpack(archive, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_zip_symlink_inside_is_kept(tmp_path: Path) -> None:
    archive = zip_of([("real.py", b"x = 1\n", stat.S_IFREG | 0o644), ("alias.py", b"real.py", stat.S_IFLNK | 0o777)])
    unpack(archive, tmp_path)
    assert (tmp_path / "alias.py").read_text() == "x = 1\n"


def test_zip_device_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FunctionSpecError, match="dev: special files"):
        unpack(zip_of([("dev", b"", stat.S_IFCHR | 0o666)]), tmp_path)


def test_zip_bomb_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FunctionSpecError, match=r"bomb\.txt: compression ratio"):
        unpack(zip_of([("bomb.txt", b"\0" * (20 * 2**20), stat.S_IFREG | 0o644)]), tmp_path)


def test_unpacked_size_cap(tmp_path: Path) -> None:
    limits = PackageLimits(max_unpacked=1000, max_ratio=10**9)
    with pytest.raises(FunctionSpecError, match=r"big\.bin: unpacked size exceeds the 1000-byte limit"):
        unpack(zip_of([("big.bin", b"x" * 2000, stat.S_IFREG | 0o644)]), tmp_path, limits)


def test_archive_size_cap(tmp_path: Path) -> None:
    with pytest.raises(FunctionSpecError, match="over the 10-byte limit"):
        unpack(b"PK\x03\x04" + b"x" * 100, tmp_path, PackageLimits(max_archive=10))


def test_not_an_archive(tmp_path: Path) -> None:
    with pytest.raises(FunctionSpecError, match="neither a zip nor a tar"):
        unpack(b"just some text", tmp_path)


def test_tar_gz_is_accepted(tmp_path: Path) -> None:
    member = tarfile.TarInfo("handler.py")
    member.size = 6
    unpack(tar_of([member], {"handler.py": b"x = 1\n"}), tmp_path)
    assert (tmp_path / "handler.py").read_text() == "x = 1\n"


@pytest.mark.parametrize("kind", ["traversal", "absolute", "symlink", "device", "fifo", "hardlink"])
def test_tar_attacks_are_refused(tmp_path: Path, kind: str) -> None:
    member = tarfile.TarInfo({"traversal": "../x", "absolute": "/tmp/x"}.get(kind, "entry"))
    if kind == "symlink":
        member.type, member.linkname = tarfile.SYMTYPE, "/etc/shadow"
    elif kind == "device":
        member.type = tarfile.CHRTYPE
    elif kind == "fifo":
        member.type = tarfile.FIFOTYPE
    elif kind == "hardlink":
        member.type, member.linkname = tarfile.LNKTYPE, "../../etc/shadow"
    with pytest.raises(FunctionSpecError) as info:
        unpack(tar_of([member]), tmp_path / "dest")
    assert member.name in str(info.value) or (member.linkname and member.linkname in str(info.value))
    assert not (tmp_path / "x").exists()
