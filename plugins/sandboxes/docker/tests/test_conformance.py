"""The sandbox conformance suite (``easyfaas.testing.sandbox_conformance``), run by the docker driver.

Lifecycle and every DESIGN §7 adversarial test, against real containers; ``DockerAdapter`` (conftest)
says what is docker's own: docker-init, Docker's container records and logs, dockerd.
"""

from __future__ import annotations

from easyfaas.testing.sandbox_conformance import SandboxIsolationConformance


class TestDockerConformance(SandboxIsolationConformance):
    pass
