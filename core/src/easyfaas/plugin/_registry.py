"""The registry object handed to the ``easyfaas_register_*`` hooks."""

from __future__ import annotations

from easyfaas.errors import PluginError
from easyfaas.interfaces import AsyncQueue, CodeStore, Runtime, SandboxDriver, Trigger

__all__ = ["GROUPS", "KINDS", "SINGULAR", "Registry"]

#: kind → entry-point group
GROUPS: dict[str, str] = {
    "triggers": "easyfaas.triggers",
    "runtimes": "easyfaas.runtimes",
    "sandboxes": "easyfaas.sandboxes",
    "storage": "easyfaas.storage",
    "queues": "easyfaas.queues",
}
#: kind → the ABC its classes implement
KINDS: dict[str, type] = {
    "triggers": Trigger,
    "runtimes": Runtime,
    "sandboxes": SandboxDriver,
    "storage": CodeStore,
    "queues": AsyncQueue,
}
SINGULAR = {"triggers": "trigger", "runtimes": "runtime", "sandboxes": "sandbox", "storage": "storage", "queues": "queue"}


class Registry:
    """Handed to the ``easyfaas_register_*`` hooks; validates and records plugin classes."""

    def __init__(self) -> None:
        self.classes: dict[str, dict[str, type]] = {kind: {} for kind in GROUPS}

    def add_trigger(self, cls: type[Trigger]) -> None:
        self._add("triggers", cls)

    def add_runtime(self, cls: type[Runtime]) -> None:
        self._add("runtimes", cls)

    def add_sandbox(self, cls: type[SandboxDriver]) -> None:
        self._add("sandboxes", cls)

    def add_storage(self, cls: type[CodeStore]) -> None:
        self._add("storage", cls)

    def add_queue(self, cls: type[AsyncQueue]) -> None:
        self._add("queues", cls)

    def _add(self, kind: str, cls: type) -> None:
        base = KINDS[kind]
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise PluginError(f"{cls!r} registered as a {SINGULAR[kind]} is not a subclass of {base.__name__}")
        name = getattr(cls, "PLUGIN_NAME", None)
        if not isinstance(name, str) or not name:
            raise PluginError(f"{cls.__module__}.{cls.__qualname__} has no PLUGIN_NAME")
        existing = self.classes[kind].get(name)
        if existing is not None and existing is not cls:
            raise PluginError(
                f"two {SINGULAR[kind]} plugins are named {name!r}: "
                f"{existing.__module__}.{existing.__qualname__} and {cls.__module__}.{cls.__qualname__}"
            )
        self.classes[kind][name] = cls
