"""Entry point of the ``namespace`` sandbox plugin (group ``easyfaas.sandboxes``).

Registers ``NamespaceSandbox`` with the engine's plugin manager.
"""

from __future__ import annotations

from easyfaas.plugin import Registry, hookimpl
from easyfaas_sandbox_namespace.driver import NamespaceSandbox


@hookimpl
def easyfaas_register_sandboxes(register: Registry) -> None:
    register.add_sandbox(NamespaceSandbox)
