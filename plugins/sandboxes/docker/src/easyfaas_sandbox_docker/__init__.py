"""easyfaas sandbox plugin ``docker``: pre-created containers, function code bound by mount propagation.

Needs a local Docker engine; see README.md for the isolation model, the options and custom images.
"""

from __future__ import annotations

from easyfaas_sandbox_docker.driver import DockerSandbox

__all__ = ["DockerSandbox"]
