"""easyfaas runtime plugin for Python functions (``def handler(event, context)``)."""

from __future__ import annotations

from easyfaas_runtime_python.runtime import PythonRuntime

__all__ = ["PythonRuntime"]
