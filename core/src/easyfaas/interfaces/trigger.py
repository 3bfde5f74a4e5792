"""The ``Trigger`` ABC and the ``Invoker`` it calls: how events reach functions."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

__all__ = ["InvocationResult", "Invoker", "Trigger"]


@dataclass
class InvocationResult:
    """A successful call. ``body`` is JSON unless ``raw`` (the handler returned bytes)."""

    request_id: str
    body: bytes
    raw: bool = False
    function: str = ""
    version: str = ""
    duration_ms: float = 0.0
    init_ms: float | None = None
    logs: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class Invoker(Protocol):
    """The controller's call entry point, handed to triggers in ``Trigger.start``."""

    async def invoke(
        self,
        function: str,
        event: Any,
        *,
        qualifier: str = "$LATEST",
        trigger: str = "",
        request_id: str | None = None,
    ) -> InvocationResult:
        """Run one synchronous call; ``event`` is JSON-encodable or ``bytes`` (already JSON).

        Raises ``FunctionNotFoundError`` or an ``InvocationError`` subclass.
        """
        ...

    async def function_exists(self, function: str) -> bool:
        """Whether a function of that name is deployed."""
        ...

    async def authorize(self, function: str, authorization: str | None) -> None:
        """Raise ``UnauthorizedError`` unless the function is public or ``authorization``
        (the caller's ``Authorization`` header) carries the engine's bearer token."""
        ...


class Trigger(ABC):
    """A source of calls, running inside the controller process.

    The controller constructs it with the profile's section as keyword arguments
    (``triggers: {http: {listen: 0.0.0.0:8080}}`` → ``HttpTrigger(listen="0.0.0.0:8080")``),
    calls ``start(invoker)`` once the engine can serve calls, and ``stop()`` at shutdown,
    after which it must not call the invoker again. ``start`` returns once the trigger is
    accepting work (e.g. its socket is bound).

    Example::

        class TickTrigger(Trigger):
            PLUGIN_NAME = "tick"
            def __init__(self, *, every: float = 1.0, function: str): ...
            async def start(self, invoker): self._task = asyncio.create_task(self._loop(invoker))
            async def stop(self): self._task.cancel()
    """

    PLUGIN_NAME: ClassVar[str]

    @abstractmethod
    async def start(self, invoker: Invoker) -> None:
        """Begin accepting work; return when ready."""

    @abstractmethod
    async def stop(self) -> None:
        """Stop accepting work and finish what is in flight."""

    def describe(self) -> dict[str, Any]:
        """What ``easyfaas`` prints about this trigger at start (e.g. its URL)."""
        return {}
