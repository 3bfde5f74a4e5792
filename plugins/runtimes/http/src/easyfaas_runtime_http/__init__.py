"""easyfaas runtime plugin for HTTP servers on $PORT (of-watchdog http mode, Knative contract)."""

from __future__ import annotations

from easyfaas_runtime_http.runtime import HttpRuntime

__all__ = ["HttpRuntime"]
