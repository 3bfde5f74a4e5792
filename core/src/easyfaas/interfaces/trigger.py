"""The ``Trigger`` ABC and the ``Invoker`` it calls: how events reach functions."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

if TYPE_CHECKING:
    from easyfaas.models import FunctionSpec, Schedule

__all__ = ["InvocationResult", "Invoker", "StreamedInvocation", "Trigger"]


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


class StreamedInvocation(Protocol):
    """A streamed call that has started answering (``Invoker.invoke_stream``).

    ``status`` and ``headers`` are the reply's head. Iterating yields the reply's body in
    chunks as the function writes it; the iteration raises an ``InvocationError`` if the
    call fails after its head (the caller has then seen part of a reply and must learn that
    it is incomplete, e.g. by an aborted HTTP response). ``result`` is set once the
    iteration ended normally. ``aclose()`` must be called in every case: a call still
    running is then stopped (its remaining request body is not sent) and its output dropped.
    """

    request_id: str
    status: int
    headers: dict[str, str]
    result: InvocationResult | None

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None: ...


class Invoker(Protocol):
    """The controller's call entry point, handed to triggers in ``Trigger.start``."""

    def streaming(self, function: str) -> bool:
        """Whether the function's latest version streams bodies (``streaming: true`` in its
        spec): a trigger then calls ``invoke_stream`` instead of ``invoke``. Cheap: no I/O."""
        ...

    async def invoke_stream(
        self,
        function: str,
        event: Any,
        body: AsyncIterable[bytes],
        *,
        trigger: str = "",
        request_id: str | None = None,
    ) -> StreamedInvocation:
        """Start one streamed call and return once it answers with its head.

        ``event`` describes the request without its body (a payload-2.0 event without
        ``body``); ``body`` yields the request body in chunks, read as fast as the function
        consumes it (``controller.max_payload`` does not apply, ``max_stream_bytes`` does).
        Raises ``FunctionNotFoundError`` or an ``InvocationError`` subclass when the call
        fails before answering (throttled, timeout, the process exits non-zero at once, …).
        """
        ...

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
