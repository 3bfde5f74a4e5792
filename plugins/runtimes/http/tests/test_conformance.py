"""The runtime conformance suite (``easyfaas.testing.conformance``), run by the http runtime."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from easyfaas.testing.conformance import RuntimeAdapter, RuntimeConformance

# A plain http.server on $PORT. A call that is not an HTTP event arrives as `POST /` with the
# event as its JSON body; a 4xx/5xx answer to it is the function error.
OPS = """#!/usr/bin/env python3
import json, os, time
from http.server import BaseHTTPRequestHandler, HTTPServer

print("loading ops server", flush=True)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, status, body):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        event = json.loads(raw or b"null")
        if not isinstance(event, dict) or "op" not in event:
            return self.answer(200, raw)
        op = event["op"]
        if op == "fail":
            return self.answer(500, event["message"].encode())
        if op == "sleep":
            time.sleep(event["seconds"])
            result = {"slept": event["seconds"]}
        elif op == "log":
            print(event["marker"], flush=True)
            result = {"logged": event["marker"]}
        elif op == "env":
            result = {name: os.environ.get(name) for name in event["names"]}
        elif op == "context":
            env = os.environ
            result = {"request_id": self.headers["X-Easyfaas-Request-Id"], "function_name": env["EASYFAAS_FUNCTION_NAME"],
                      "function_version": env["EASYFAAS_FUNCTION_VERSION"], "memory_mb": env["EASYFAAS_MEMORY_MB"],
                      "remaining_ms": int(self.headers["X-Easyfaas-Deadline-Ms"]) - int(time.time() * 1000),
                      "arn": env["EASYFAAS_FUNCTION_ARN"], "log_stream": env["EASYFAAS_INSTANCE"]}
        else:
            return self.answer(400, f"unknown op {op!r}".encode())
        self.answer(200, json.dumps(result).encode())


HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""

CUSTOM = """#!/usr/bin/env python3
import os
from http.server import BaseHTTPRequestHandler, HTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"handler": "custom"}')


HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""


def write_executable(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)


class HttpAdapter(RuntimeAdapter):
    runtime = "http"
    error_type = "Runtime.HttpError"
    stack_hint = None  # an HTTP error status carries no stack

    def write_function(self, directory: Path) -> dict[str, Any]:
        write_executable(directory / "server.py", OPS)
        return {"handler": "server.py"}

    def write_custom(self, directory: Path) -> dict[str, Any]:
        write_executable(directory / "bin" / "serve-custom", CUSTOM)
        return {"handler": "bin/serve-custom"}


class TestHttpConformance(RuntimeConformance):
    adapter = HttpAdapter()
