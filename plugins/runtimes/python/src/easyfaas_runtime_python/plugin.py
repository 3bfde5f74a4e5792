"""Entry point of the ``python`` runtime plugin."""

from __future__ import annotations

from easyfaas.plugin import Registry, hookimpl
from easyfaas_runtime_python.runtime import PythonRuntime


@hookimpl
def easyfaas_register_runtimes(register: Registry) -> None:
    register.add_runtime(PythonRuntime)
