"""The runtime conformance suite (``easyfaas.testing.conformance``), run by the exec runtime."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from easyfaas.testing.conformance import RuntimeAdapter, RuntimeConformance

# One process per call: the program reads the event on stdin, prints the result on stdout,
# logs to stderr and fails by exiting non-zero (here, through an uncaught exception).
OPS = """#!/usr/bin/env python3
import json, os, sys, time

class BoomError(Exception):
    pass

raw = sys.stdin.buffer.read()
event = json.loads(raw or b"null")
if not isinstance(event, dict) or "op" not in event:
    sys.stdout.buffer.write(raw)
    raise SystemExit(0)
op = event["op"]
if op == "fail":
    raise BoomError(event["message"])
if op == "sleep":
    time.sleep(event["seconds"])
    result = {"slept": event["seconds"]}
elif op == "log":
    print(event["marker"], file=sys.stderr)
    result = {"logged": event["marker"]}
elif op == "env":
    result = {name: os.environ.get(name) for name in event["names"]}
elif op == "context":
    env = os.environ
    result = {"request_id": env["EASYFAAS_REQUEST_ID"], "function_name": env["EASYFAAS_FUNCTION_NAME"],
              "function_version": env["EASYFAAS_FUNCTION_VERSION"], "memory_mb": env["EASYFAAS_MEMORY_MB"],
              "remaining_ms": int(env["EASYFAAS_DEADLINE_MS"]) - int(time.time() * 1000),
              "arn": env["EASYFAAS_FUNCTION_ARN"], "log_stream": env["EASYFAAS_INSTANCE"]}
else:
    raise ValueError(f"unknown op {op!r}")
json.dump(result, sys.stdout)
"""


def write_executable(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)


class ExecAdapter(RuntimeAdapter):
    runtime = "exec"
    error_type = "Runtime.ExitError"
    stack_hint = "ops.py"  # the traceback the program printed on stderr

    def write_function(self, directory: Path) -> dict[str, Any]:
        write_executable(directory / "ops.py", OPS)
        return {"handler": "ops.py"}

    def write_custom(self, directory: Path) -> dict[str, Any]:
        write_executable(directory / "bin" / "custom-run.sh", "#!/bin/sh\necho '{\"handler\": \"custom\"}'\n")
        return {"handler": "bin/custom-run.sh"}


class TestExecConformance(RuntimeConformance):
    adapter = ExecAdapter()
