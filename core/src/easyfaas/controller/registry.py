"""The controller's view of deployed functions: an in-memory index over the code store.

Calls resolve ``name[:qualifier]`` here without touching the store on the hot path.
"""

from __future__ import annotations

from pathlib import Path

from easyfaas.errors import FunctionNotFoundError
from easyfaas.interfaces import LATEST, CodeStore
from easyfaas.models import FunctionSpec, FunctionVersion

__all__ = ["FunctionRegistry"]


class FunctionRegistry:
    def __init__(self, store: CodeStore) -> None:
        self.store = store
        self._latest: dict[str, FunctionVersion] = {}

    async def load(self) -> None:
        self._latest = {fv.name: fv for fv in await self.store.list()}

    async def resolve(self, name: str, qualifier: str = LATEST) -> FunctionVersion:
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

    def exists(self, name: str) -> bool:
        return name in self._latest

    def is_current(self, fv: FunctionVersion) -> bool:
        latest = self._latest.get(fv.name)
        return latest is not None and latest.version == fv.version

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

    async def versions(self, name: str) -> list[FunctionVersion]:
        if not name:
            raise FunctionNotFoundError("no function name")
        return await self.store.versions(name)
