"""Entry point of the ``exec`` runtime plugin (``easyfaas.runtimes`` group in pyproject.toml)."""

from __future__ import annotations

from easyfaas.plugin import Registry, hookimpl
from easyfaas_runtime_exec.runtime import ExecRuntime


@hookimpl
def easyfaas_register_runtimes(register: Registry) -> None:
    register.add_runtime(ExecRuntime)
