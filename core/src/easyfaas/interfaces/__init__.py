"""The ABC of each plugin kind; their docstrings are the plugin author's documentation."""

from __future__ import annotations

from easyfaas.interfaces.runtime import Runtime
from easyfaas.interfaces.sandbox import SandboxDriver
from easyfaas.interfaces.storage import LATEST, CodeStore
from easyfaas.interfaces.trigger import InvocationResult, Invoker, Trigger

__all__ = ["LATEST", "CodeStore", "InvocationResult", "Invoker", "Runtime", "SandboxDriver", "Trigger"]
