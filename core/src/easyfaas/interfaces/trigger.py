"""The ``Trigger`` ABC and the ``Invoker`` it calls: how events reach functions."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

if TYPE_CHECKING:
    from easyfaas.models import FunctionSpec, Schedule

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

    async def invoke_async(
        self,
        function: str,
        event: bytes,
        *,
        qualifier: str = "$LATEST",
        idempotency_key: str | None = None,
        trigger: str = "api",
    ) -> str:
        """Accept a call durably to run it later (queued, retried: docs/async.md); its activation id.

        A key already used for the function within the idempotency window returns the first
        call's id instead. Raises ``FunctionNotFoundError`` or ``PayloadTooLargeError``.
        """
        ...

    async def schedules(self) -> dict[str, list[Schedule]]:
        """The ``schedules`` of every deployed function that has some (latest versions), by name."""
        ...


class Trigger(ABC):
    """A source of calls, running inside the controller process.

    The controller constructs it with the profile's section as keyword arguments
    (``triggers: {http: {listen: 0.0.0.0:8080}}`` → ``HttpTrigger(listen="0.0.0.0:8080")``),
    calls ``start(invoker)`` once the engine can serve calls, and ``stop()`` at shutdown,
    after which it must not call the invoker again. ``start`` returns once the trigger is
    accepting work (e.g. its socket is bound). A constructor that takes ``data_dir`` also
    receives the node's data directory, for state that must outlive a restart.

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

    def check_spec(self, spec: FunctionSpec) -> None:  # noqa: B027 - optional hook, no-op by default
        """Refuse, with ``FunctionSpecError``, a function spec this trigger could not serve.

        Called at every deploy and configuration update, before the version is stored
        (e.g. the cron trigger parses the spec's ``schedules``).
        """
