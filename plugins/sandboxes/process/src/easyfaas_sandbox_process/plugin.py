"""Entry point of the ``process`` sandbox plugin."""

from __future__ import annotations

from easyfaas.plugin import Registry, hookimpl
from easyfaas_sandbox_process.driver import ProcessSandbox


@hookimpl
def easyfaas_register_sandboxes(register: Registry) -> None:
    register.add_sandbox(ProcessSandbox)
