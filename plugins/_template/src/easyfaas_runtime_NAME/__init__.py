"""easyfaas runtime plugin for NAME functions."""

from __future__ import annotations

from easyfaas_runtime_NAME.runtime import NAMERuntime

__all__ = ["NAMERuntime"]
