"""easyfaas sandbox plugin ``namespace``: Linux namespaces, cgroups and pivot_root, fed by zygotes.

Needs root on Linux; see README.md for the isolation model and the options.
"""

from __future__ import annotations

from easyfaas_sandbox_namespace.driver import NamespaceSandbox

__all__ = ["NamespaceSandbox"]
