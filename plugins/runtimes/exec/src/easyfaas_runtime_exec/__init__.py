"""easyfaas runtime plugin for executables, one process per call (OpenFaaS classic watchdog style)."""

from __future__ import annotations

from easyfaas_runtime_exec.runtime import ExecRuntime

__all__ = ["ExecRuntime"]
