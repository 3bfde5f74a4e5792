"""The NATS code store: functions, versions and aliases in a JetStream key-value bucket, code
packages in the JetStream object store, unpacked once per node into a cache keyed by digest."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import io
import json
import logging
import os
import shutil
import stat
import tempfile
import time
import uuid
import zipfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js.api import KeyValueConfig, ObjectStoreConfig, StorageType
from nats.js.client import JetStreamContext
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from easyfaas.errors import FunctionNotFoundError, PlatformError
from easyfaas.interfaces import LATEST, ActivationArchive, CodeStore
from easyfaas.models import NAME_RE, Alias, FunctionSpec, FunctionVersion
from easyfaas.packaging import unpack
from easyfaas_nats import REQUEST_TIMEOUT, check_options, connect, nats_errors, next_update, scan, stop_watcher
from easyfaas_storage_nats.archive import NatsActivationArchive

__all__ = ["NatsStore"]

log = logging.getLogger(__name__)

T = TypeVar("T")
_Versions = list[FunctionVersion]  # method ``list`` shadows the builtin inside the class
#: Code packages unpacked at once when a node first lists many functions.
DOWNLOADS = 8
#: A full resynchronisation of ``watch`` this often, in case an update was missed anyway.
RESYNC_INTERVAL = 300.0
#: How long activation records are kept in ``<bucket>-activations`` by default: 7 days.
ACTIVATION_TTL = 7 * 86400.0
#: Room for headers and framing within the server's ``max_payload``.
_ENVELOPE = 1024


class NatsStore(CodeStore):
    """Options: ``servers`` — NATS URLs (default ``["nats://127.0.0.1:4222"]``); ``bucket`` —
    prefix of the bucket names (``<bucket>-functions``, ``<bucket>-code``; default
    ``easyfaas``); ``replicas`` — JetStream replicas of both (1 to 5; 3 in a cluster);
    ``connect_wait`` — seconds to keep trying the first connection (default 60);
    ``activation_ttl`` — seconds every node's activation records are kept in the shared
    bucket ``<bucket>-activations`` (default 7 days; at least 1).

    Keys of the ``<bucket>-functions`` bucket: ``fn.<name>.latest`` (the newest version
    number), ``fn.<name>.v.<n>`` (version n: spec, code digest, creation time; never
    rewritten) and ``fn.<name>.aliases``. Version numbers are allocated with ``create``, which
    fails if the key exists, so two nodes deploying at once get different numbers; ``latest``
    only moves forward, by compare-and-set on its revision. Code objects are named
    ``sha256-<tree digest>``: unchanged code is uploaded once, and every node unpacks each
    digest once under ``<data_dir>/nats-code/<digest>``, the ``code_dir`` the funclet mounts.
    """

    PLUGIN_NAME = "nats"

    def __init__(
        self, *, data_dir: Path, servers: list[str] | str | None = None, bucket: str = "easyfaas", replicas: int = 1,
        connect_wait: float = 60.0, activation_ttl: float = ACTIVATION_TTL,
    ) -> None:  # fmt: skip
        super().__init__(data_dir=data_dir)
        self.servers = check_options(servers, bucket, replicas)
        if isinstance(activation_ttl, bool) or not isinstance(activation_ttl, int | float) or not activation_ttl >= 1:
            raise ValueError(f"activation_ttl must be a number of seconds, at least 1, not {activation_ttl!r}")
        self.bucket = bucket
        self.replicas = replicas
        self.connect_wait = connect_wait
        self.activation_ttl = float(activation_ttl)
        self._activations: tuple[KeyValue, int] | None = None
        self.cache_dir = data_dir / "nats-code"
        self._nc: Client | None = None
        self._kv: KeyValue | None = None
        self._obj: ObjectStore | None = None
        self._open_lock = asyncio.Lock()
        self._code_locks: dict[str, asyncio.Lock] = {}
        self._versions: dict[tuple[str, str], FunctionVersion] = {}
        self._resync = asyncio.Event()
        self._closed = False

    # -- connection ------------------------------------------------------------------------

    async def _open(self) -> tuple[KeyValue, ObjectStore]:
        """The buckets, connecting (and creating them if missing) on first use: the constructor
        cannot, being synchronous, and the controller's first call is from its event loop."""
        if self._kv is None or self._obj is None:
            async with self._open_lock:
                if self._kv is None or self._obj is None:
                    if self._closed:
                        raise PlatformError("the NATS code store is closed")
                    self._nc = await connect(
                        self.servers, name="easyfaas-storage", wait=self.connect_wait, on_reconnect=self._on_reconnect
                    )
                    js = self._nc.jetstream(timeout=REQUEST_TIMEOUT)
                    with nats_errors("opening the function buckets"):
                        self._obj = await _object_store(js, f"{self.bucket}-code", self.replicas)
                        self._kv = await _kv_bucket(js, f"{self.bucket}-functions", self.replicas)
        return self._kv, self._obj

    def activation_archive(self) -> ActivationArchive:
        """Every node's activation records in ``<bucket>-activations``, kept ``activation_ttl``."""
        return NatsActivationArchive(self._open_activations)

    async def _open_activations(self) -> tuple[KeyValue, int]:
        """The activation bucket (created with its TTL, or given the configured one) and the
        largest value it takes: the server's ``max_payload`` or the bucket's own cap."""
        if self._activations is None:
            await self._open()
            async with self._open_lock:
                if self._activations is None:
                    assert self._nc is not None
                    js = self._nc.jetstream(timeout=REQUEST_TIMEOUT)
                    name = f"{self.bucket}-activations"
                    with nats_errors("opening the activation bucket"):
                        kv = await _kv_bucket(js, name, self.replicas, ttl=self.activation_ttl)
                        config = (await kv.status()).stream_info.config
                        if abs((config.max_age or 0.0) - self.activation_ttl) > 0.001:
                            log.info("activation bucket %s: TTL %s -> %s s", name, config.max_age, self.activation_ttl)
                            config.max_age = self.activation_ttl
                            await js.update_stream(config)
                    limit = self._nc.max_payload - _ENVELOPE
                    if config.max_msg_size and config.max_msg_size > 0:
                        limit = min(limit, config.max_msg_size - _ENVELOPE)
                    self._activations = (kv, limit)
        return self._activations

    async def _on_reconnect(self) -> None:
        # The server may have restarted and dropped the watcher's consumer: start over.
        self._resync.set()

    async def close(self) -> None:
        self._closed = True
        self._resync.set()
        if self._nc is not None:
            nc, self._nc = self._nc, None
            try:
                await nc.close()
            except (nats.errors.Error, OSError, TimeoutError) as exc:
                log.debug("closing the NATS connection: %s", exc)

    # -- reading -----------------------------------------------------------------------------

    async def get(self, name: str, version: str = LATEST) -> FunctionVersion:
        if not NAME_RE.match(name):
            raise FunctionNotFoundError(f"function {name!r} not found")
        kv, _ = await self._open()
        if version == LATEST:
            version = str(await self._latest(kv, name))
        if not version.isdigit():
            raise FunctionNotFoundError(f"function {name!r} has no version {version!r}")
        cached = self._versions.get((name, version))
        if cached is not None and Path(cached.code_dir).is_dir():
            return cached
        record = await self._record(kv, name, version)
        code_dir = await self._materialize(record["code_sha256"])
        fv = FunctionVersion(
            spec=FunctionSpec.model_validate(record["spec"]), version=record["version"], code_dir=str(code_dir),
            code_sha256=record["code_sha256"], created_at=record["created_at"],
        )  # fmt: skip
        self._versions[(name, version)] = fv
        return fv

    async def list(self) -> _Versions:
        kv, _ = await self._open()
        with nats_errors("listing functions"):
            entries = await scan(kv, "fn.*.latest")
        latest = sorted((entry.key.split(".")[1], (entry.value or b"").decode()) for entry in entries)
        found = await _bounded([functools.partial(self._get_or_none, n, v) for n, v in latest], DOWNLOADS)
        return [fv for fv in found if fv is not None]

    async def versions(self, name: str) -> _Versions:
        kv, _ = await self._open()
        if not NAME_RE.match(name):
            raise FunctionNotFoundError(f"function {name!r} not found")
        await self._latest(kv, name)
        with nats_errors(f"listing the versions of {name!r}"):
            entries = await scan(kv, f"fn.{name}.v.*")
        numbers = sorted(int(number) for entry in entries if (number := entry.key.rsplit(".", 1)[1]).isdigit())
        found = await _bounded([functools.partial(self._get_or_none, name, str(n)) for n in numbers], DOWNLOADS)
        return [fv for fv in found if fv is not None]

    async def _get_or_none(self, name: str, version: str) -> FunctionVersion | None:
        try:
            return await self.get(name, version)
        except FunctionNotFoundError:
            return None  # deleted meanwhile

    async def _latest(self, kv: KeyValue, name: str) -> int:
        with nats_errors(f"reading function {name!r}"):
            try:
                entry = await kv.get(f"fn.{name}.latest")
            except nats.js.errors.KeyNotFoundError:
                raise FunctionNotFoundError(f"function {name!r} not found") from None
        return int(entry.value or b"0")

    async def _record(self, kv: KeyValue, name: str, version: str) -> dict[str, Any]:
        with nats_errors(f"reading version {version} of {name!r}"):
            try:
                entry = await kv.get(f"fn.{name}.v.{version}")
            except nats.js.errors.KeyNotFoundError:
                raise FunctionNotFoundError(f"function {name!r} has no version {version!r}") from None
        record: dict[str, Any] = json.loads(entry.value or b"{}")
        return record

    async def _materialize(self, digest: str) -> Path:
        """The local directory of a code package, downloaded and unpacked on first use."""
        target = self.cache_dir / digest
        if target.is_dir():
            return target
        lock = self._code_locks.setdefault(digest, asyncio.Lock())
        async with lock:
            if not target.is_dir():
                _, obj = await self._open()
                with nats_errors(f"downloading code {digest[:12]}"):
                    try:
                        result = await obj.get(_object_name(digest))
                    except (nats.js.errors.ObjectNotFoundError, nats.js.errors.ObjectDeletedError):
                        raise PlatformError(f"the code package {digest} is missing from the object store") from None
                await asyncio.to_thread(self._install, target, lambda staging: unpack(result.data or b"", staging))
        self._code_locks.pop(digest, None)
        return target

    def _install(self, target: Path, fill: Callable[[Path], None]) -> None:
        """Fill a staging directory, make it read-only and rename it into place: a crash never
        leaves a half-written directory under a digest's name."""
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=target.parent))
        try:
            fill(staging)
            _make_read_only(staging)
            os.rename(staging, target)
        except BaseException:
            _remove_tree(staging)
            if not target.is_dir():
                raise
            # Installed by another task of this node meanwhile: the same digest, the same tree.

    # -- writing -----------------------------------------------------------------------------

    async def put(self, spec: FunctionSpec, code_dir: Path) -> FunctionVersion:
        kv, obj = await self._open()
        digest, package = await asyncio.to_thread(_package, code_dir)
        with nats_errors(f"uploading the code of {spec.name!r}"):
            try:
                await obj.get_info(_object_name(digest))
            except (nats.js.errors.ObjectNotFoundError, nats.js.errors.ObjectDeletedError):
                await obj.put(_object_name(digest), package)
        if not (self.cache_dir / digest).is_dir():
            await asyncio.to_thread(
                self._install, self.cache_dir / digest,
                lambda staging: _copy_tree(code_dir, staging),
            )  # fmt: skip
        record = {"spec": spec.model_dump(mode="json"), "code_sha256": digest, "created_at": time.time()}
        with nats_errors(f"storing a version of {spec.name!r}"):
            version = await self._allocate(kv, spec.name, record)
        return await self.get(spec.name, version)

    async def _allocate(self, kv: KeyValue, name: str, record: dict[str, Any]) -> str:
        """Write the record under the next free version number, then move ``latest`` to it."""
        try:
            number = await self._latest(kv, name)
        except FunctionNotFoundError:
            number = 0
        while True:
            number += 1
            record["version"] = str(number)
            try:
                await kv.create(f"fn.{name}.v.{number}", json.dumps(record).encode())
                break
            except nats.js.errors.KeyWrongLastSequenceError:
                continue  # another node took this number first
        key = f"fn.{name}.latest"
        while True:
            try:
                entry = await kv.get(key)
                current, revision = int(entry.value or b"0"), entry.revision
            except nats.js.errors.KeyNotFoundError:
                current, revision = 0, None
            if current >= number:
                break  # a concurrent deploy already moved it further
            try:
                if revision is None:
                    await kv.create(key, str(number).encode())
                else:
                    await kv.update(key, str(number).encode(), last=revision)
                break
            except nats.js.errors.KeyWrongLastSequenceError:
                continue
        return str(number)

    async def delete(self, name: str) -> None:
        kv, _ = await self._open()
        if not NAME_RE.match(name):
            raise FunctionNotFoundError(f"function {name!r} not found")
        await self._latest(kv, name)
        with nats_errors(f"deleting {name!r}"):
            # ``latest`` first: readers stop seeing the function at once.
            await kv.purge(f"fn.{name}.latest")
            for entry in await scan(kv, f"fn.{name}.>"):
                await kv.purge(entry.key)
        self._forget(name)

    # -- aliases -----------------------------------------------------------------------------

    async def put_alias(self, alias: Alias) -> Alias:
        kv, _ = await self._open()
        for version in filter(None, (alias.version, alias.additional_version)):
            if not version.isdigit():
                raise FunctionNotFoundError(f"function {alias.function!r} has no version {version!r}")
            await self._record(kv, alias.function, version)
        stored = Alias(**{**alias.to_dict(), "revision": uuid.uuid4().hex})

        def change(current: dict[str, Any]) -> dict[str, Any]:
            return {**current, alias.name: stored.to_dict()}

        await self._update_aliases(kv, alias.function, change)
        return stored

    async def aliases(self, name: str) -> dict[str, Alias]:
        kv, _ = await self._open()
        if not NAME_RE.match(name):
            raise FunctionNotFoundError(f"function {name!r} not found")
        await self._latest(kv, name)
        current, _ = await self._read_aliases(kv, name)
        return {key: Alias(**value) for key, value in current.items()}

    async def delete_alias(self, name: str, alias: str) -> None:
        kv, _ = await self._open()

        def change(current: dict[str, Any]) -> dict[str, Any]:
            if alias not in current:
                raise FunctionNotFoundError(f"function {name!r} has no alias {alias!r}")
            return {k: v for k, v in current.items() if k != alias}

        await self._update_aliases(kv, name, change)

    async def _read_aliases(self, kv: KeyValue, name: str) -> tuple[dict[str, Any], int | None]:
        with nats_errors(f"reading the aliases of {name!r}"):
            try:
                entry = await kv.get(f"fn.{name}.aliases")
            except nats.js.errors.KeyNotFoundError:
                return {}, None
        value: dict[str, Any] = json.loads(entry.value or b"{}")
        return value, entry.revision

    async def _update_aliases(
        self, kv: KeyValue, name: str, change: Callable[[dict[str, Any]], dict[str, Any]]
    ) -> None:
        """Read, change and write back the alias map, again if another node wrote it meanwhile."""
        if not NAME_RE.match(name):
            raise FunctionNotFoundError(f"function {name!r} not found")
        while True:
            await self._latest(kv, name)
            current, revision = await self._read_aliases(kv, name)
            data = json.dumps(change(current)).encode()
            with nats_errors(f"writing the aliases of {name!r}"):
                try:
                    if revision is None:
                        await kv.create(f"fn.{name}.aliases", data)
                    else:
                        await kv.update(f"fn.{name}.aliases", data, last=revision)
                    return
                except nats.js.errors.KeyWrongLastSequenceError:
                    continue

    # -- change notifications ----------------------------------------------------------------

    async def watch(self) -> AsyncIterator[str]:
        """Every function whose keys change, from any node, as they change.

        Each (re)start of the underlying watcher first yields every function once: updates made
        while it was not watching (NATS restarted, this node reconnected) are not lost.
        """
        kv, _ = await self._open()
        while not self._closed:
            self._resync.clear()
            try:
                watcher = await kv.watch("fn.>")
            except (nats.errors.Error, OSError, TimeoutError) as exc:
                log.warning("cannot watch the function bucket (%s); retrying", exc or type(exc).__name__)
                await asyncio.sleep(1.0)
                continue
            try:
                initial: set[str] | None = set()
                resync_at = time.monotonic() + RESYNC_INTERVAL
                while not self._resync.is_set() and time.monotonic() < resync_at:
                    try:
                        entry = await next_update(watcher, 1.0)
                    except nats.errors.TimeoutError:
                        continue
                    if entry is None:  # caught up with the bucket's current state
                        for name in sorted(initial or ()):
                            self._forget(name)
                            yield name
                        initial = None
                        continue
                    name = entry.key.split(".")[1]
                    if initial is not None:
                        initial.add(name)
                    else:
                        self._forget(name)
                        yield name
            finally:
                await stop_watcher(watcher)

    def _forget(self, name: str) -> None:
        self._versions = {key: fv for key, fv in self._versions.items() if key[0] != name}


async def _kv_bucket(js: JetStreamContext, bucket: str, replicas: int, *, ttl: float | None = None) -> KeyValue:
    try:
        return await js.key_value(bucket)
    except nats.js.errors.BucketNotFoundError:
        config = KeyValueConfig(
            bucket=bucket, history=1, ttl=ttl, replicas=replicas, storage=StorageType.FILE, direct=True
        )
        return await js.create_key_value(config)


async def _object_store(js: JetStreamContext, bucket: str, replicas: int) -> ObjectStore:
    try:
        return await js.object_store(bucket)
    except nats.js.errors.BucketNotFoundError:
        config = ObjectStoreConfig(replicas=replicas, storage=StorageType.FILE)
        return await js.create_object_store(bucket, config=config)


async def _bounded(jobs: list[Callable[[], Awaitable[T]]], limit: int) -> list[T]:
    """Run the jobs at most ``limit`` at a time; results in order."""
    semaphore = asyncio.Semaphore(limit)

    async def run(job: Callable[[], Awaitable[T]]) -> T:
        async with semaphore:
            return await job()

    return list(await asyncio.gather(*(run(job) for job in jobs)))


def _object_name(digest: str) -> str:
    return f"sha256-{digest}"


def _package(root: Path) -> tuple[str, bytes]:
    """The tree digest of a code directory and a zip of it that keeps symlinks, modes and empty
    directories, so that every node unpacks the same tree (``easyfaas.packaging.unpack``)."""
    digest = hashlib.sha256()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                target = os.readlink(path)
                digest.update(f"L {rel} {target}\n".encode())
                info = zipfile.ZipInfo(rel)
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
                zf.writestr(info, target)
            elif path.is_file():
                digest.update(f"F {rel} {path.stat().st_size}\n".encode())
                with open(path, "rb") as fh:
                    for chunk in iter(lambda: fh.read(1 << 20), b""):
                        digest.update(chunk)
                zf.write(path, rel)
            elif path.is_dir():
                digest.update(f"D {rel}\n".encode())
                zf.write(path, rel + "/")
    return digest.hexdigest(), buf.getvalue()


def _copy_tree(source: Path, dest: Path) -> None:
    shutil.copytree(source, dest, symlinks=True, dirs_exist_ok=True)


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
