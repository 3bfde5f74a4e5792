"""The runtime conformance suite (``easyfaas.testing.conformance``), run by the lambda runtime."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from easyfaas.testing.conformance import RuntimeAdapter, RuntimeConformance

# A custom runtime the way Lambda's tutorials write one, in Python with urllib: import the
# module $_HANDLER names, then loop on invocation/next, posting each response or error.
BOOTSTRAP = """#!/usr/bin/env python3
import importlib, json, os, sys, time, traceback, urllib.request

API = "http://" + os.environ["AWS_LAMBDA_RUNTIME_API"] + "/2018-06-01/runtime"


def post(path, body, headers=None):
    request = urllib.request.Request(API + path, data=body, method="POST", headers=headers or {})
    urllib.request.urlopen(request).close()


def error_document(exc):
    return json.dumps({"errorType": type(exc).__name__, "errorMessage": str(exc),
                       "stackTrace": [line.rstrip() for line in traceback.format_tb(exc.__traceback__)]}).encode()


class Context:
    def __init__(self, headers):
        self.aws_request_id = headers["Lambda-Runtime-Aws-Request-Id"]
        self.invoked_function_arn = headers["Lambda-Runtime-Invoked-Function-Arn"]
        self.deadline_ms = int(headers["Lambda-Runtime-Deadline-Ms"])
        self.function_name = os.environ["AWS_LAMBDA_FUNCTION_NAME"]
        self.function_version = os.environ["AWS_LAMBDA_FUNCTION_VERSION"]
        self.memory_limit_in_mb = os.environ["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"]
        self.log_stream_name = os.environ["AWS_LAMBDA_LOG_STREAM_NAME"]

    def get_remaining_time_in_millis(self):
        return self.deadline_ms - int(time.time() * 1000)


sys.path.insert(0, os.environ["LAMBDA_TASK_ROOT"])
module_name, _, function_name = os.environ["_HANDLER"].rpartition(".")
try:
    handler = getattr(importlib.import_module(module_name), function_name)
except Exception as exc:
    post("/init/error", error_document(exc), {"Lambda-Runtime-Function-Error-Type": "Runtime.ImportModuleError"})
    sys.exit(1)

while True:
    with urllib.request.urlopen(API + "/invocation/next") as response:
        event = json.loads(response.read())
        context = Context(response.headers)
    try:
        result = json.dumps(handler(event, context)).encode()
    except Exception as exc:
        post(f"/invocation/{context.aws_request_id}/error", error_document(exc),
             {"Lambda-Runtime-Function-Error-Type": "Unhandled"})
    else:
        post(f"/invocation/{context.aws_request_id}/response", result)
"""

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


def write_bootstrap(directory: Path) -> None:
    (directory / "bootstrap").write_text(BOOTSTRAP)
    (directory / "bootstrap").chmod(0o755)


class LambdaAdapter(RuntimeAdapter):
    runtime = "lambda"
    error_type = "BoomError"
    stack_hint = "ops.py"

    def write_function(self, directory: Path) -> dict[str, Any]:
        write_bootstrap(directory)
        (directory / "ops.py").write_text(OPS)
        return {"handler": "ops.handler"}

    def write_custom(self, directory: Path) -> dict[str, Any]:
        write_bootstrap(directory)
        (directory / "custom_entry.py").write_text("def main(event, context):\n    return {'handler': 'custom'}\n")
        return {"handler": "custom_entry.main"}


class TestLambdaConformance(RuntimeConformance):
    adapter = LambdaAdapter()
