"""The runtime conformance suite (``easyfaas.testing.conformance``), run by the Python runtime."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from easyfaas.testing.conformance import RuntimeAdapter, RuntimeConformance

OPS = '''
import os, time

print("loading ops")

class BoomError(Exception):
    pass

def handler(event, context):
    if not isinstance(event, dict) or "op" not in event:
        return event
    op = event["op"]
    if op == "fail":
        raise BoomError(event["message"])
    if op == "sleep":
        time.sleep(event["seconds"])
        return {"slept": event["seconds"]}
    if op == "log":
        print(event["marker"])
        return {"logged": event["marker"]}
    if op == "env":
        return {name: os.environ.get(name) for name in event["names"]}
    if op == "context":
        return {"request_id": context.aws_request_id, "function_name": context.function_name,
                "function_version": context.function_version, "memory_mb": context.memory_limit_in_mb,
                "remaining_ms": context.get_remaining_time_in_millis(), "arn": context.invoked_function_arn,
                "log_stream": context.log_stream_name}
    raise ValueError(f"unknown op {op!r}")
'''


class PythonAdapter(RuntimeAdapter):
    runtime = "python"
    error_type = "BoomError"
    stack_hint = "ops.py"

    def write_function(self, directory: Path) -> dict[str, Any]:
        (directory / "ops.py").write_text(OPS)
        return {"handler": "ops.handler"}

    def write_custom(self, directory: Path) -> dict[str, Any]:
        (directory / "pkg").mkdir()
        (directory / "pkg" / "__init__.py").write_text("")
        (directory / "pkg" / "entry_points.py").write_text("def run(event, context):\n    return {'handler': 'custom'}\n")
        return {"handler": "pkg.entry_points.run"}


class TestPythonConformance(RuntimeConformance):
    adapter = PythonAdapter()
