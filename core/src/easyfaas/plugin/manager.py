"""The plugin host: stevedore finds plugins, pluggy registers them, one facade calls hooks.

Each engine process builds one ``Plugins`` from the profile; nothing here is global.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pluggy
from stevedore import ExtensionManager

from easyfaas.errors import PluginError, PluginNotFoundError
from easyfaas.interfaces import AsyncQueue, CodeStore, Runtime, SandboxDriver, Trigger
from easyfaas.plugin import PROJECT_NAME, hookspecs
from easyfaas.plugin._registry import GROUPS, KINDS, SINGULAR, Registry

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

    from easyfaas.models import SandboxEvent

__all__ = ["GROUPS", "KINDS", "PluginInfo", "Plugins", "Registry"]

log = logging.getLogger(__name__)

def distribution_for(kind: str, name: str) -> str:
    """The distribution that provides a first-party plugin, by naming convention."""
    return f"easyfaas-{SINGULAR[kind]}-{name}"


@dataclass(frozen=True)
class PluginInfo:
    """One installed entry point, as ``easyfaas plugins`` lists it."""

    kind: str
    name: str
    target: str
    distribution: str
    version: str
    error: str | None = None


class Plugins:
    """The plugin host of one process: discovery, registration, and the typed hook facade."""

    def __init__(self) -> None:
        self._pm = pluggy.PluginManager(PROJECT_NAME)
        self._pm.add_hookspecs(hookspecs)
        self.registry = Registry()
        self._managers: dict[str, ExtensionManager[Any]] = {}
        self._failures: dict[str, list[PluginInfo]] = {kind: [] for kind in GROUPS}
        self._observes_invocations = False

    # -- discovery ---------------------------------------------------------------------

    def _manager(self, kind: str) -> ExtensionManager[Any]:
        """The stevedore manager of one group; each group is scanned once per process."""
        if kind not in self._managers:
            group = GROUPS[kind]

            def on_failure(_manager: ExtensionManager[Any], entry_point: EntryPoint, exc: BaseException) -> None:
                log.warning("plugin %r in group %r failed to import and is skipped: %s", entry_point.name, group, exc)
                self._failures[kind].append(_info(kind, entry_point, error=f"{type(exc).__name__}: {exc}"))

            self._managers[kind] = ExtensionManager(
                namespace=group, invoke_on_load=False, on_load_failure_callback=on_failure
            )
        return self._managers[kind]

    def discover(self, kinds: Iterable[str] = GROUPS) -> list[PluginInfo]:
        """Every installed plugin of the given kinds, including those that failed to import."""
        found: list[PluginInfo] = []
        for kind in kinds:
            manager = self._manager(kind)
            found.extend(_info(kind, ext.entry_point) for ext in manager.extensions)
            found.extend(self._failures[kind])
        owners = _owners()
        return sorted(
            (replace(info, **owners.get((GROUPS[info.kind], info.name, info.target), {})) for info in found),
            key=lambda info: (info.kind, info.name),
        )

    def load(self, wanted: Mapping[str, Iterable[str]]) -> None:
        """Load and register the named plugins of each kind, e.g. ``{"runtimes": ["python"]}``.

        A name with no installed entry point raises ``PluginNotFoundError`` naming the
        distribution to install.
        """
        for kind, names in wanted.items():
            manager = self._manager(kind)
            by_name = {ext.name: ext for ext in manager.extensions}
            failed = {info.name: info for info in self._failures[kind]}
            for name in names:
                if name in self.registry.classes[kind]:
                    continue
                ext = by_name.get(name)
                if ext is None:
                    if name in failed:
                        raise PluginNotFoundError(
                            f"{SINGULAR[kind]} plugin {name!r} is installed but failed to import: {failed[name].error}"
                        )
                    raise PluginNotFoundError(
                        f"{SINGULAR[kind]} plugin {name!r} not found in group {GROUPS[kind]!r}. "
                        f"Install {distribution_for(kind, name)}"
                    )
                if self._pm.get_plugin(f"{kind}:{name}") is None:
                    self._pm.register(ext.plugin, name=f"{kind}:{name}")
                    self._call_register(kind, ext.plugin)
                if name not in self.registry.classes[kind]:
                    raise PluginError(
                        f"{SINGULAR[kind]} plugin {name!r} ({ext.entry_point.value}) registered no class named {name!r}"
                    )
        self._pm.check_pending()
        self._observes_invocations = bool(self._pm.hook.easyfaas_after_invoke.get_hookimpls())

    def register_object(self, plugin: object, name: str) -> None:
        """Register an already-imported plugin object (built-ins, tests) and its classes."""
        self._pm.register(plugin, name=name)
        for kind in GROUPS:
            self._call_register(kind, plugin)
        self._pm.check_pending()
        self._observes_invocations = bool(self._pm.hook.easyfaas_after_invoke.get_hookimpls())

    def _call_register(self, kind: str, plugin: object) -> None:
        """Call one plugin's registration hook (not every registered plugin's again)."""
        others = [p for p in self._pm.get_plugins() if p is not plugin]
        hook = self._pm.subset_hook_caller(f"easyfaas_register_{kind}", remove_plugins=others)
        hook(register=self.registry)

    def get(self, kind: str, name: str) -> type[Any]:
        """A registered class; ``PluginNotFoundError`` if it was never loaded."""
        try:
            return self.registry.classes[kind][name]
        except KeyError:
            raise PluginNotFoundError(
                f"{SINGULAR[kind]} plugin {name!r} is not loaded. Install {distribution_for(kind, name)}"
            ) from None

    def _create(self, kind: str, name: str, **options: Any) -> Any:
        """Construct a plugin class with its profile section; bad options are a ``PluginError``."""
        cls = self.get(kind, name)
        try:
            obj = cls(**options)
        except (TypeError, ValueError) as exc:
            raise PluginError(f"{SINGULAR[kind]} plugin {name!r} rejected its options: {exc}") from exc
        if not isinstance(obj, KINDS[kind]):
            raise PluginError(f"{SINGULAR[kind]} plugin {name!r} built {type(obj).__name__}, not a {KINDS[kind].__name__}")
        return obj

    def create_trigger(self, name: str, *, data_dir: Path | None = None, **options: Any) -> Trigger:
        """``data_dir`` is passed on only to a trigger whose constructor takes it."""
        if data_dir is not None and "data_dir" in inspect.signature(self.get("triggers", name)).parameters:
            options["data_dir"] = data_dir
        return cast(Trigger, self._create("triggers", name, **options))

    def create_runtime(self, name: str, **options: Any) -> Runtime:
        return cast(Runtime, self._create("runtimes", name, **options))

    def create_sandbox(self, name: str, **options: Any) -> SandboxDriver:
        return cast(SandboxDriver, self._create("sandboxes", name, **options))

    def create_storage(self, name: str, **options: Any) -> CodeStore:
        return cast(CodeStore, self._create("storage", name, **options))

    def create_queue(self, name: str, **options: Any) -> AsyncQueue:
        return cast(AsyncQueue, self._create("queues", name, **options))

    # -- the hook facade ---------------------------------------------------------------

    def after_invoke(self, activation: dict[str, Any]) -> None:
        if self._observes_invocations:
            try:
                self._pm.hook.easyfaas_after_invoke(activation=activation)
            except Exception:
                log.exception("an easyfaas_after_invoke hook failed")

    def instance_event(self, event: SandboxEvent) -> None:
        try:
            self._pm.hook.easyfaas_instance_event(event=event)
        except Exception:
            log.exception("an easyfaas_instance_event hook failed")


def _owners() -> dict[tuple[str, str, str], dict[str, str]]:
    """(group, name, target) → distribution name and version, from installed metadata.

    stevedore's cached entry points do not carry their distribution; this lookup is only
    made for listings (``easyfaas plugins``), never on the engine's start path.
    """
    groups = set(GROUPS.values())
    owners: dict[tuple[str, str, str], dict[str, str]] = {}
    for dist in importlib.metadata.distributions():
        for ep in dist.entry_points:
            if ep.group in groups:
                owners[(ep.group, ep.name, ep.value)] = {"distribution": dist.name, "version": dist.version}
    return owners


def _info(kind: str, entry_point: EntryPoint, error: str | None = None) -> PluginInfo:
    dist = getattr(entry_point, "dist", None)
    return PluginInfo(
        kind=kind,
        name=entry_point.name,
        target=entry_point.value,
        distribution=dist.name if dist is not None else "?",
        version=dist.version if dist is not None else "?",
        error=error,
    )
