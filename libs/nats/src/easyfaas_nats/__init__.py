"""What the NATS plugins share (``easyfaas-storage-nats``, ``easyfaas-queue-nats``): connecting
to NATS (retried at start, reconnecting for ever) and reading key-value buckets, with NATS
failures re-raised as ``PlatformError``.

A support library, not a plugin: it registers nothing, and depends only on core's public
surface (``easyfaas.errors``) and nats-py. Plugins never import each other; both depend on
this distribution instead (``libs/nats``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable, Iterator

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from easyfaas.errors import PlatformError

__all__ = ["REQUEST_TIMEOUT", "check_options", "connect", "nats_errors", "next_update", "scan", "stop_watcher"]

log = logging.getLogger(__name__)

#: Longest wait for one answer of the server before a ``PlatformError``.
REQUEST_TIMEOUT = 10.0

_BUCKET_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def check_options(servers: list[str] | str | None, bucket: str, replicas: int) -> list[str]:
    """The plugins' common options, checked (``ValueError`` naming the option); the server list."""
    if servers is None:
        servers = ["nats://127.0.0.1:4222"]
    servers = [servers] if isinstance(servers, str) else list(servers)
    if not servers or not all(isinstance(s, str) and s for s in servers):
        raise ValueError("servers must be a list of NATS URLs")
    if not _BUCKET_RE.match(bucket):
        raise ValueError(f"bucket must be 1-64 letters, digits, '-' or '_', not {bucket!r}")
    if not 1 <= replicas <= 5:
        raise ValueError(f"replicas must be between 1 and 5, not {replicas}")
    return servers


async def connect(
    servers: list[str], *, name: str, wait: float, on_reconnect: Callable[[], Awaitable[None]] | None = None
) -> Client:
    """A connection to the first reachable server, trying for up to ``wait`` seconds.

    A node often starts before its NATS cluster is ready (Kubernetes starts both at once), so a
    refused first connection is retried rather than fatal; once connected, the client
    reconnects for ever and ``on_reconnect`` runs after each reconnection.
    """

    async def error_cb(exc: Exception) -> None:
        # nats-py reports every failed reconnection attempt here: one line each, not a traceback.
        log.warning("NATS (%s): %s", name, exc or type(exc).__name__)

    async def disconnected_cb() -> None:
        log.info("NATS (%s): disconnected", name)  # also at close; errors_cb tells of failed reconnections

    async def reconnected_cb() -> None:
        log.info("NATS (%s): reconnected", name)
        if on_reconnect is not None:
            await on_reconnect()

    deadline = asyncio.get_running_loop().time() + wait
    while True:
        try:
            return await nats.connect(
                servers=servers, name=name, connect_timeout=2, allow_reconnect=True, max_reconnect_attempts=-1,
                reconnect_time_wait=0.5, error_cb=error_cb, disconnected_cb=disconnected_cb,
                reconnected_cb=reconnected_cb,
            )  # fmt: skip
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            if asyncio.get_running_loop().time() > deadline:
                raise PlatformError(f"cannot reach NATS at {', '.join(servers)}: {exc or type(exc).__name__}") from exc
            log.info("NATS at %s not reachable yet (%s); retrying", ", ".join(servers), exc or type(exc).__name__)
            await asyncio.sleep(0.5)


@contextlib.contextmanager
def nats_errors(what: str) -> Iterator[None]:
    """Re-raise a NATS or network failure while doing ``what`` as a ``PlatformError``."""
    try:
        yield
    except (nats.errors.Error, OSError, TimeoutError) as exc:
        raise PlatformError(f"NATS: {what} failed: {type(exc).__name__}: {exc}") from exc


async def scan(kv: KeyValue, keys: str, *, meta_only: bool = False) -> list[KeyValue.Entry]:
    """The current value of every key matching ``keys`` (a subject filter, e.g. ``fn.*.latest``);
    with ``meta_only``, the keys and revisions without their values (cheap for big values)."""
    watcher = await kv.watch(keys, meta_only=meta_only)
    found: list[KeyValue.Entry] = []
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT * 3):
            # The watcher delivers the latest message per key, each with the count still to come
            # (``delta``). Its ``None`` marker ("caught up") is not to be trusted: nats-py may
            # send it before messages already on their way, so the end is the entry whose
            # ``delta`` is 0, or a marker followed by silence (no key matches).
            seen = False
            while True:
                try:
                    entry = await next_update(watcher, REQUEST_TIMEOUT if seen else 0.1)
                except TimeoutError:
                    if seen:
                        raise
                    break
                if entry is None:
                    continue
                seen = True
                if entry.operation not in (KV_DEL, KV_PURGE):
                    found.append(entry)
                if not entry.delta:
                    break
    finally:
        await stop_watcher(watcher)
    return found


# nats-py leaves the watcher's methods unannotated: typed here, once.


async def next_update(watcher: KeyValue.KeyWatcher, timeout: float) -> KeyValue.Entry | None:
    """The watcher's next entry; ``None`` once it has delivered the bucket's current state."""
    entry: KeyValue.Entry | None = await watcher.updates(timeout=timeout)  # type: ignore[no-untyped-call]
    return entry


async def stop_watcher(watcher: KeyValue.KeyWatcher) -> None:
    try:
        await watcher.stop()  # type: ignore[no-untyped-call]
    except (nats.errors.Error, OSError, TimeoutError, AttributeError) as exc:  # AttributeError: never subscribed
        log.debug("stopping a key-value watcher: %s", exc)
