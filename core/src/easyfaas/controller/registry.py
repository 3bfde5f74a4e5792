"""The controller's view of deployed functions: an in-memory index over the code store.

Calls resolve ``name[:qualifier]`` here without touching the store on the hot path.
"""

from __future__ import annotations

import asyncio
import logging
import random
from pathlib import Path

from easyfaas.errors import EasyFaaSError, FunctionNotFoundError
from easyfaas.interfaces import LATEST, CodeStore
from easyfaas.models import Alias, FunctionSpec, FunctionVersion

__all__ = ["FunctionRegistry"]

log = logging.getLogger(__name__)


class FunctionRegistry:
    def __init__(self, store: CodeStore) -> None:
        self.store = store
        self._latest: dict[str, FunctionVersion] = {}
        self._aliases: dict[str, dict[str, Alias]] = {}

    async def load(self) -> None:
        self._latest = {fv.name: fv for fv in await self.store.list()}

    # issue #10 (scale-out): follow changes other nodes make to a shared store ---------------

    async def follow(self) -> None:
        """Refresh each function the store says changed (``CodeStore.watch``), until cancelled;
        returns at once for a store that only this node writes."""
        while True:
            try:
                async for name in self.store.watch():
                    await self.refresh(name)
                return
            except EasyFaaSError as exc:  # e.g. the store's server is away: it says so itself
                log.warning("following the code store's changes failed (%s); starting over", exc)
            except Exception:
                log.exception("following the code store's changes failed; starting over")
            # Starting over makes the store yield every function again: nothing stays stale.
            await asyncio.sleep(1.0)

    async def refresh(self, name: str) -> None:
        """Re-read one function's latest version and forget its aliases (read again when used)."""
        self._aliases.pop(name, None)
        try:
            fv = await self.store.get(name)
        except FunctionNotFoundError:
            self._latest.pop(name, None)
            return
        self._latest[name] = fv

    # -- end of issue #10 --------------------------------------------------------------------

    async def resolve(self, name: str, qualifier: str = LATEST) -> FunctionVersion:
        """``qualifier`` is ``$LATEST``, a version number, or an alias (weighted if it has two versions)."""
        if qualifier and qualifier != LATEST and not qualifier.isdigit():
            alias = (await self.aliases(name)).get(qualifier)
            if alias is None:
                raise FunctionNotFoundError(f"function {name!r} has no alias {qualifier!r}")
            use_additional = alias.additional_version and random.random() < alias.weight
            qualifier = alias.additional_version if use_additional and alias.additional_version else alias.version
        if qualifier == LATEST or not qualifier:
            fv = self._latest.get(name)
            if fv is None:
                fv = await self.store.get(name)  # deployed by another writer of the store
                self._latest[name] = fv
            return fv
        latest = self._latest.get(name)
        if latest is not None and latest.version == qualifier:
            return latest
        return await self.store.get(name, qualifier)

    async def aliases(self, name: str) -> dict[str, Alias]:
        cached = self._aliases.get(name)
        if cached is None:
            cached = self._aliases[name] = await self.store.aliases(name)
        return cached

    async def put_alias(self, alias: Alias) -> Alias:
        stored = await self.store.put_alias(alias)
        self._aliases.pop(alias.function, None)
        return stored

    async def delete_alias(self, name: str, alias: str) -> None:
        await self.store.delete_alias(name, alias)
        self._aliases.pop(name, None)

    def exists(self, name: str) -> bool:
        return name in self._latest

    def peek(self, name: str) -> FunctionVersion | None:
        """The latest version this node knows of, without I/O (``None`` if none yet)."""
        return self._latest.get(name)

    def is_current(self, fv: FunctionVersion) -> bool:
        """Whether new calls may still reach ``fv``: it is the latest, or an alias points at it."""
        latest = self._latest.get(fv.name)
        if latest is None:
            return False
        if latest.version == fv.version:
            return True
        return any(fv.version in (a.version, a.additional_version) for a in self._aliases.get(fv.name, {}).values())

    def latest(self) -> list[FunctionVersion]:
        return sorted(self._latest.values(), key=lambda fv: fv.name)

    async def deploy(self, spec: FunctionSpec, code_dir: Path) -> FunctionVersion:
        fv = await self.store.put(spec, code_dir)
        self._latest[fv.name] = fv
        return fv

    async def delete(self, name: str) -> None:
        if name not in self._latest:
            await self.store.get(name)  # raises FunctionNotFoundError
        await self.store.delete(name)
        self._latest.pop(name, None)
        self._aliases.pop(name, None)

    async def versions(self, name: str) -> list[FunctionVersion]:
        if not name:
            raise FunctionNotFoundError("no function name")
        return await self.store.versions(name)
