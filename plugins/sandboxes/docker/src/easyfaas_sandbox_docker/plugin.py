"""Entry point of the ``docker`` sandbox plugin (group ``easyfaas.sandboxes``).

Registers ``DockerSandbox``; the Docker SDK is imported only when the driver talks to an engine.
"""

from __future__ import annotations

from easyfaas.plugin import Registry, hookimpl
from easyfaas_sandbox_docker.driver import DockerSandbox


@hookimpl
def easyfaas_register_sandboxes(register: Registry) -> None:
    register.add_sandbox(DockerSandbox)
