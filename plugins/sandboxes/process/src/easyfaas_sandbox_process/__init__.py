"""easyfaas sandbox plugin: plain child processes, for development only."""

from __future__ import annotations

from easyfaas_sandbox_process.driver import ProcessSandbox

__all__ = ["ProcessSandbox"]
