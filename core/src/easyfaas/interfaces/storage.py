"""The ``CodeStore`` ABC: where functions, their versions and their code live."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from easyfaas.models import Alias, FunctionSpec, FunctionVersion

if TYPE_CHECKING:
    from easyfaas.interfaces.activations import ActivationArchive

__all__ = ["LATEST", "CodeStore"]

LATEST = "$LATEST"
_Versions = list[FunctionVersion]  # method ``list`` shadows the builtin inside the class


class CodeStore(ABC):
    """A function registry with code. Loaded by the controller.

    Every ``put`` creates a new immutable version (``"1"``, ``"2"``, ...); ``$LATEST`` names
    the newest. ``FunctionVersion.code_dir`` is a directory on this node holding the
    version's unpacked code, which the funclet mounts read-only; it must not change
    while the version exists.

    Options from the profile (``storage: {stubs: {path: ...}}``) arrive as keyword
    arguments, with ``data_dir`` (the node's data directory) always passed.
    """

    PLUGIN_NAME: ClassVar[str]

    def __init__(self, *, data_dir: Path, **options: Any) -> None:
        if options:
            raise TypeError(f"storage {self.PLUGIN_NAME!r} takes no options, got {sorted(options)}")
        self.data_dir = data_dir

    @abstractmethod
    async def put(self, spec: FunctionSpec, code_dir: Path) -> FunctionVersion:
        """Store a new version from an unpacked, already validated code directory (copied)."""

    @abstractmethod
    async def get(self, name: str, version: str = LATEST) -> FunctionVersion:
        """One version; ``FunctionNotFoundError`` if the function or version is unknown."""

    @abstractmethod
    async def list(self) -> _Versions:
        """The latest version of every function, sorted by name."""

    @abstractmethod
    async def versions(self, name: str) -> _Versions:
        """Every version of one function, oldest first; ``FunctionNotFoundError`` if unknown."""

    @abstractmethod
    async def delete(self, name: str) -> None:
        """Remove a function and all its versions; ``FunctionNotFoundError`` if unknown."""

    @abstractmethod
    async def put_alias(self, alias: Alias) -> Alias:
        """Create or replace an alias; returns it with a new ``revision``.

        ``FunctionNotFoundError`` if the function or a version it names does not exist.
        """

    @abstractmethod
    async def aliases(self, name: str) -> dict[str, Alias]:
        """Every alias of a function by alias name; ``FunctionNotFoundError`` if unknown."""

    @abstractmethod
    async def delete_alias(self, name: str, alias: str) -> None:
        """Remove an alias; ``FunctionNotFoundError`` if the function or alias is unknown."""

    # issue #10 (scale-out): change notifications from other writers of a shared store ------

    async def watch(self) -> AsyncIterator[str]:
        """Names of functions changed by any writer of the store, as they change (optional).

        The controller keeps an in-memory index of the latest versions and aliases; a store
        that other nodes also write (a networked one) yields here the name of each function
        they deploy, delete or re-alias, and the controller refreshes that function from
        ``get``/``aliases``. Yielding a name that did not change is harmless; a store that
        cannot be sure it missed nothing (e.g. after a reconnection) yields every name.
        Runs for the controller's lifetime; the default, for a store only this node
        writes, yields nothing and returns.
        """
        return
        yield  # an async generator that yields nothing

    def activation_archive(self) -> ActivationArchive | None:
        """A store of activation records shared with the other nodes of this store (optional).

        A networked store may offer one (``easyfaas.interfaces.ActivationArchive``) so that
        every node's management API sees every node's calls; the controller asks once at
        start. The default, for a store only this node uses, is ``None``: records stay in the
        node's own SQLite. The archive lives until the store's ``close``.
        """
        return None

    async def close(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """Release resources; called once at shutdown."""
