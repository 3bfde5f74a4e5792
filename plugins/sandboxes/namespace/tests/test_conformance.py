"""The sandbox conformance suite (``easyfaas.testing.sandbox_conformance``), run by the namespace driver.

Lifecycle and every DESIGN §7 adversarial test, against real namespaces and cgroups; ``NamespaceAdapter``
(conftest) says what is the driver's own: its cgroups, mounts and zygotes.
"""

from __future__ import annotations

import pytest

from easyfaas.testing.sandbox_conformance import SandboxIsolationConformance

pytestmark = pytest.mark.namespace


class TestNamespaceConformance(SandboxIsolationConformance):
    pass
