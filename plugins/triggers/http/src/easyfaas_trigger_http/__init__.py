"""easyfaas trigger plugin: HTTP requests to functions, in the Lambda function-URL event shape."""

from __future__ import annotations

from easyfaas_trigger_http.trigger import HttpTrigger

__all__ = ["HttpTrigger"]
