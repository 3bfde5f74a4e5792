"""easyfaas runtime plugin for AWS Lambda custom runtimes (a bootstrap speaking the Runtime API)."""

from __future__ import annotations

from easyfaas_runtime_lambda.runtime import LambdaRuntime

__all__ = ["LambdaRuntime"]
