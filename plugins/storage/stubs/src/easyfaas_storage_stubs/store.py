"""The stubs code store: functions, versions and code in a local directory.

Layout: ``PATH/<name>/<version>/{spec.json, code/}`` plus ``PATH/<name>/LATEST``. Writes go to a
temporary directory renamed into place, so a crash never leaves a half-written version.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

from easyfaas.errors import FunctionNotFoundError
from easyfaas.interfaces import LATEST, CodeStore
from easyfaas.models import NAME_RE, Alias, FunctionSpec, FunctionVersion

__all__ = ["StubsStore"]

_Versions = list[FunctionVersion]  # method ``list`` shadows the builtin inside the class


class StubsStore(CodeStore):
    """Options: ``path`` — where functions are kept (default ``<data_dir>/functions``)."""

    PLUGIN_NAME = "stubs"

    def __init__(self, *, data_dir: Path, path: str | None = None) -> None:
        super().__init__(data_dir=data_dir)
        self.root = (data_dir / "functions") if path is None else Path(path).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = asyncio.Lock()
        self._cache: dict[tuple[str, str], FunctionVersion] = {}

    async def put(self, spec: FunctionSpec, code_dir: Path) -> FunctionVersion:
        async with self._lock:
            return await asyncio.to_thread(self._put, spec, code_dir)

    def _put(self, spec: FunctionSpec, code_dir: Path) -> FunctionVersion:
        fn_dir = self.root / spec.name
        fn_dir.mkdir(exist_ok=True)
        numbers = [int(p.name) for p in fn_dir.iterdir() if p.name.isdigit()]
        version = str(max(numbers, default=0) + 1)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=fn_dir))
        try:
            shutil.copytree(code_dir, staging / "code", symlinks=True)
            digest = _tree_digest(staging / "code")
            record = {"spec": spec.model_dump(mode="json"), "version": version, "code_sha256": digest, "created_at": time.time()}
            (staging / "spec.json").write_text(json.dumps(record, indent=2))
            _make_read_only(staging / "code")
            os.rename(staging, fn_dir / version)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        _atomic_write(fn_dir / "LATEST", version)
        return self._read(spec.name, version)

    async def get(self, name: str, version: str = LATEST) -> FunctionVersion:
        if not NAME_RE.match(name):
            raise FunctionNotFoundError(f"function {name!r} not found")
        if version == LATEST:
            try:
                version = (self.root / name / "LATEST").read_text().strip()
            except FileNotFoundError:
                raise FunctionNotFoundError(f"function {name!r} not found") from None
        if not version.isdigit():
            raise FunctionNotFoundError(f"function {name!r} has no version {version!r}")
        return self._read(name, version)

    def _read(self, name: str, version: str) -> FunctionVersion:
        cached = self._cache.get((name, version))
        if cached is not None and Path(cached.code_dir).is_dir():
            return cached
        try:
            record = json.loads((self.root / name / version / "spec.json").read_text())
        except FileNotFoundError:
            raise FunctionNotFoundError(f"function {name!r} has no version {version!r}") from None
        fv = FunctionVersion(
            spec=FunctionSpec.model_validate(record["spec"]),
            version=record["version"],
            code_dir=str(self.root / name / version / "code"),
            code_sha256=record["code_sha256"],
            created_at=record["created_at"],
        )
        self._cache[(name, version)] = fv
        return fv

    async def list(self) -> _Versions:
        found = []
        for fn_dir in sorted(self.root.iterdir()):
            if fn_dir.is_dir() and NAME_RE.match(fn_dir.name):
                try:
                    found.append(await self.get(fn_dir.name))
                except FunctionNotFoundError:
                    continue  # a function whose first version is still being written
        return found

    async def versions(self, name: str) -> _Versions:
        await self.get(name)
        numbers = sorted(int(p.name) for p in (self.root / name).iterdir() if p.name.isdigit())
        return [self._read(name, str(n)) for n in numbers]

    async def delete(self, name: str) -> None:
        async with self._lock:
            await self.get(name)
            fn_dir = self.root / name
            # Rename first: readers stop seeing the function at once, removal can take its time.
            trash = self.root / f".deleted-{name}-{time.time_ns()}"
            os.rename(fn_dir, trash)
            self._cache = {k: v for k, v in self._cache.items() if k[0] != name}
            await asyncio.to_thread(_remove_tree, trash)


    # -- aliases: PATH/<name>/aliases.json, replaced atomically -----------------------------

    async def put_alias(self, alias: Alias) -> Alias:
        async with self._lock:
            current = await self.aliases(alias.function)
            for version in filter(None, (alias.version, alias.additional_version)):
                await self.get(alias.function, version)
            stored = Alias(**{**alias.to_dict(), "revision": uuid.uuid4().hex})
            current[alias.name] = stored
            self._write_aliases(alias.function, current)
            return stored

    async def aliases(self, name: str) -> dict[str, Alias]:
        await self.get(name)
        try:
            raw = json.loads((self.root / name / "aliases.json").read_text())
        except FileNotFoundError:
            return {}
        return {key: Alias(**value) for key, value in raw.items()}

    async def delete_alias(self, name: str, alias: str) -> None:
        async with self._lock:
            current = await self.aliases(name)
            if current.pop(alias, None) is None:
                raise FunctionNotFoundError(f"function {name!r} has no alias {alias!r}")
            self._write_aliases(name, current)

    def _write_aliases(self, name: str, aliases: dict[str, Alias]) -> None:
        _atomic_write(self.root / name / "aliases.json", json.dumps({k: v.to_dict() for k, v in aliases.items()}, indent=2))


def _tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            digest.update(f"L {rel} {os.readlink(path)}\n".encode())
        elif path.is_file():
            digest.update(f"F {rel} {path.stat().st_size}\n".encode())
            with open(path, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
        elif path.is_dir():
            digest.update(f"D {rel}\n".encode())
    return digest.hexdigest()


def _make_read_only(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        mode = path.stat().st_mode
        os.chmod(path, mode & ~0o222 | 0o444 | (0o111 if path.is_dir() else mode & 0o111))


def _remove_tree(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        if path.is_dir() and not path.is_symlink():
            os.chmod(path, 0o755)
    shutil.rmtree(root, ignore_errors=True)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
