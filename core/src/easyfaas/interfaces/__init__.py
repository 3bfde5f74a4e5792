"""The ABC of each plugin kind; their docstrings are the plugin author's documentation."""

from __future__ import annotations

from easyfaas.interfaces.activations import ActivationArchive
from easyfaas.interfaces.queue import AsyncQueue, QueuedCall
from easyfaas.interfaces.runtime import ChildProcessRuntime, Runtime
from easyfaas.interfaces.sandbox import SandboxDriver
from easyfaas.interfaces.storage import LATEST, CodeStore
from easyfaas.interfaces.trigger import InvocationResult, Invoker, StreamedInvocation, Trigger

__all__ = [
    "LATEST",
    "ActivationArchive",
    "AsyncQueue",
    "ChildProcessRuntime",
    "CodeStore",
    "InvocationResult",
    "Invoker",
    "QueuedCall",
    "Runtime",
    "SandboxDriver",
    "StreamedInvocation",
    "Trigger",
]
