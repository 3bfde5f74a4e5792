"""Hook specifications: every hook a plugin may implement, and who calls it when.

Hooks are called with keyword arguments, only through ``easyfaas.plugin.manager.Plugins``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from easyfaas.plugin import hookspec

if TYPE_CHECKING:
    from easyfaas.models import SandboxEvent
    from easyfaas.plugin._registry import Registry


@hookspec
def easyfaas_register_triggers(register: Registry) -> None:
    """Add trigger classes with ``register.add_trigger(cls)``.

    Called once per plugin in the controller process, right after that plugin is loaded.
    The return value is ignored.
    """


@hookspec
def easyfaas_register_runtimes(register: Registry) -> None:
    """Add runtime classes with ``register.add_runtime(cls)``.

    Called once per plugin in the controller and in the funclet process, right after
    that plugin is loaded. The return value is ignored.
    """


@hookspec
def easyfaas_register_sandboxes(register: Registry) -> None:
    """Add sandbox driver classes with ``register.add_sandbox(cls)``.

    Called once per plugin in the funclet process (and by ``easyfaas doctor``), right
    after that plugin is loaded. The return value is ignored.
    """


@hookspec
def easyfaas_register_storage(register: Registry) -> None:
    """Add code store classes with ``register.add_storage(cls)``.

    Called once per plugin in the controller process, right after that plugin is
    loaded. The return value is ignored.
    """


@hookspec
def easyfaas_register_queues(register: Registry) -> None:
    """Add async queue classes with ``register.add_queue(cls)``.

    Called once per plugin in the controller process, right after that plugin is
    loaded. The return value is ignored.
    """


@hookspec
def easyfaas_after_invoke(activation: dict[str, Any]) -> None:
    """Observe a finished call.

    Called in the controller process after every call that reached a function version,
    once its activation record is complete (keys: ``id``, ``function``, ``version``,
    ``status``, ``trigger``, ``start``, ``end``, ``duration_ms``, ``wait_ms``, ``init_ms``,
    ``instance``, ``error``, ``result``, ``logs``). Must be quick: it runs on the call path;
    an exception is logged and ignored. Every implementation is called; return values are
    ignored.
    """


@hookspec
def easyfaas_instance_event(event: SandboxEvent) -> None:
    """Observe a sandbox that ended on its own (exited, OOM-killed).

    Called in the controller process when the funclet reports the event, after the
    controller has failed the calls in flight on that instance. Every implementation is
    called; return values are ignored.
    """
