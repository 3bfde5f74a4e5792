"""easyfaas runtime plugin for Node.js functions (``exports.handler = async (event, context) => …``)."""

from __future__ import annotations

from easyfaas_runtime_node.runtime import NodeRuntime

__all__ = ["NodeRuntime"]
