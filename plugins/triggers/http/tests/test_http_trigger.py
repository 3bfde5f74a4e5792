"""The HTTP trigger on a real socket, with an in-memory invoker (fast; the e2e tests use the engine)."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import pytest

from easyfaas.errors import (
    FunctionError,
    FunctionNotFoundError,
    FunctionTimeoutError,
    ThrottledError,
    UnauthorizedError,
)
from easyfaas.interfaces import InvocationResult
from easyfaas_trigger_http import HttpTrigger


class FakeInvoker:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    async def function_exists(self, function: str) -> bool:
        return function == "f"

    async def authorize(self, function: str, authorization: str | None) -> None:
        if function == "private" and authorization != "Bearer secret":
            raise UnauthorizedError("private function")

    async def invoke(self, function: str, event: Any, **kw: Any) -> InvocationResult:
        self.calls.append((function, event))
        if function != "f":
            raise FunctionNotFoundError(f"function {function!r} not found")
        mode = event["rawPath"]
        if mode == "/error":
            raise FunctionError("boom", details={"errorType": "ValueError", "stackTrace": ["x"]})
        if mode == "/timeout":
            raise FunctionTimeoutError("took too long")
        if mode == "/busy":
            raise ThrottledError("busy", retry_after=3)
        if mode == "/shaped":
            body = json.dumps({"statusCode": 418, "headers": {"X-A": "1"}, "body": {"tea": True}, "cookies": ["c=1"]})
            return InvocationResult(kw["request_id"], body.encode())
        if mode == "/badstatus":
            return InvocationResult(kw["request_id"], b'{"statusCode": "teapot"}')
        return InvocationResult(kw["request_id"], json.dumps(event).encode())


@pytest.fixture
async def trigger():  # type: ignore[no-untyped-def]
    invoker = FakeInvoker()
    t = HttpTrigger(listen="127.0.0.1:0", max_body=1024)
    await t.start(invoker)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{t.port}") as client:
        yield client, invoker
    await t.stop()


async def test_event_shape_and_json_passthrough(trigger) -> None:  # type: ignore[no-untyped-def]
    client, invoker = trigger
    response = await client.put("/function/f/x?q=1", content=b"hello", headers={"content-type": "text/plain"})
    assert response.status_code == 200
    event = response.json()
    assert event["rawPath"] == "/x" and event["body"] == "hello" and event["requestContext"]["http"]["method"] == "PUT"
    assert event["requestContext"]["requestId"] == response.headers["X-Easyfaas-Request-Id"]
    assert invoker.calls[0][0] == "f"


async def test_root_path_and_request_id_passthrough(trigger) -> None:  # type: ignore[no-untyped-def]
    client, _ = trigger
    response = await client.get("/function/f", headers={"X-Easyfaas-Request-Id": "given-id"})
    assert response.json()["rawPath"] == "/" and response.headers["X-Easyfaas-Request-Id"] == "given-id"


async def test_binary_body_is_base64(trigger) -> None:  # type: ignore[no-untyped-def]
    client, _ = trigger
    event = (await client.post("/function/f", content=b"\xff\x00", headers={"content-type": "image/png"})).json()
    assert event["isBase64Encoded"] and base64.b64decode(event["body"]) == b"\xff\x00"


async def test_shaped_response_with_json_body(trigger) -> None:  # type: ignore[no-untyped-def]
    client, _ = trigger
    response = await client.get("/function/f/shaped")
    assert response.status_code == 418 and response.json() == {"tea": True}
    assert response.headers["X-A"] == "1" and response.headers["set-cookie"] == "c=1"


@pytest.mark.parametrize(("path", "status", "error_type"), [
    ("/error", 502, "ValueError"), ("/timeout", 504, "Timeout"), ("/busy", 429, "TooManyRequests"),
    ("/badstatus", 502, "InvalidResponse"),
])  # fmt: skip
async def test_errors_map_to_statuses(trigger, path: str, status: int, error_type: str) -> None:  # type: ignore[no-untyped-def]
    client, _ = trigger
    response = await client.get(f"/function/f{path}")
    assert response.status_code == status
    assert response.json()["error"]["errorType"] == error_type
    if status == 429:
        assert response.headers["Retry-After"] == "3"


async def test_unknown_function_is_404(trigger) -> None:  # type: ignore[no-untyped-def]
    client, _ = trigger
    response = await client.get("/function/other")
    assert response.status_code == 404 and response.json()["error"]["errorType"] == "FunctionNotFound"


@pytest.mark.parametrize("path", ["/", "/functions/f", "/function/", "/function"])
async def test_paths_outside_function_routes_are_404(trigger, path: str) -> None:  # type: ignore[no-untyped-def]
    client, invoker = trigger
    response = await client.get(path)
    assert response.status_code == 404 and response.json()["error"]["errorType"] == "NotFound"
    assert invoker.calls == []


async def test_body_over_the_limit_is_413(trigger) -> None:  # type: ignore[no-untyped-def]
    client, invoker = trigger
    response = await client.post("/function/f", content=b"x" * 5000)
    assert response.status_code == 413 and invoker.calls == []


def test_bad_listen_option_is_refused() -> None:
    with pytest.raises(ValueError, match="host:port"):
        HttpTrigger(listen="8080")


async def test_protected_function_needs_the_token(trigger) -> None:  # type: ignore[no-untyped-def]
    client, invoker = trigger
    response = await client.get("/function/private")
    assert response.status_code == 401 and response.json()["error"]["errorType"] == "Unauthorized"
    assert invoker.calls == []
    # With the token the call goes through (to a function the fake does not know: 404).
    assert (await client.get("/function/private", headers={"Authorization": "Bearer secret"})).status_code == 404
