"""The ``SandboxDriver`` ABC: how the funclet creates, binds and destroys sandboxes."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

from easyfaas.interfaces.runtime import Runtime
from easyfaas.models import SandboxEvent, SandboxInfo, SandboxStats, WarmupSpec

__all__ = ["SandboxDriver"]


class SandboxDriver(ABC):
    """A kind of sandbox (process, namespace, docker, ...). Loaded only by the funclet.

    The funclet constructs the driver with ``state_dir`` (a directory the driver owns,
    surviving funclet restarts so leftovers can be cleaned) plus the profile's options
    for it, then calls, in order:

    1. ``start(runtimes)`` once: clean leftovers of a crashed run, prepare shared state
       (zygotes, images, cgroup parents).
    2. ``create(runtime)`` to make a *generic* sandbox: the runtime's runner is started
       inside and listening on the returned ``SandboxInfo.socket_path`` (a host path) by
       the time ``create`` returns. The funclet keeps a pool of these.
    3. ``warmup(sandbox_id, spec)`` to bind one generic sandbox to a function version:
       make ``spec.code_dir`` visible read-only, apply memory/pids/cpu limits. Returns the
       code directory *as the runner sees it*; the funclet then sends the runner LOAD.
    4. ``destroy(sandbox_id)`` when the instance retires or misbehaves: kill every process
       in it and remove everything it had. A bound sandbox is never reused for another
       function or version.
    5. ``stop()`` once at shutdown: destroy everything, leave nothing behind.

    ``stats()`` may be called at any time; ``events()`` is iterated once, for the life of
    the driver, and yields a ``SandboxEvent`` whenever a sandbox's runner exits or is
    OOM-killed without having been destroyed.

    Every method must be safe to call concurrently for different sandboxes.
    """

    PLUGIN_NAME: ClassVar[str]
    #: One line shown by ``easyfaas doctor`` and in logs: what this driver isolates.
    ISOLATION: ClassVar[str] = ""

    def __init__(self, *, state_dir: Path, **options: Any) -> None:
        if options:
            raise TypeError(f"sandbox {self.PLUGIN_NAME!r} takes no options, got {sorted(options)}")
        self.state_dir = state_dir

    @classmethod
    def availability(cls) -> str | None:
        """``None`` if the driver can work on this host, else the reason it cannot."""
        return None

    @abstractmethod
    async def start(self, runtimes: Mapping[str, Runtime]) -> None:
        """Prepare the driver; called once before anything else."""

    @abstractmethod
    async def create(self, runtime: Runtime) -> SandboxInfo:
        """Create a generic sandbox whose runner is listening; raise ``SandboxError`` on failure."""

    @abstractmethod
    async def warmup(self, sandbox_id: str, spec: WarmupSpec) -> str:
        """Bind code and limits; return the code directory as the runner sees it."""

    @abstractmethod
    async def destroy(self, sandbox_id: str) -> None:
        """Kill and remove a sandbox; unknown ids are ignored."""

    @abstractmethod
    async def stats(self, sandbox_id: str) -> SandboxStats:
        """Resource usage of one sandbox; ``SandboxError`` if unknown."""

    @abstractmethod
    def events(self) -> AsyncIterator[SandboxEvent]:
        """Events about sandboxes that ended on their own (exit, OOM kill)."""

    @abstractmethod
    async def stop(self) -> None:
        """Destroy every sandbox and release shared state."""
