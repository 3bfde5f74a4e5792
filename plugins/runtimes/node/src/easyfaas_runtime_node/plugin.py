"""Entry point of the ``node`` runtime plugin (``easyfaas.runtimes`` group in pyproject.toml)."""

from __future__ import annotations

from easyfaas.plugin import Registry, hookimpl
from easyfaas_runtime_node.runtime import NodeRuntime


@hookimpl
def easyfaas_register_runtimes(register: Registry) -> None:
    register.add_runtime(NodeRuntime)
