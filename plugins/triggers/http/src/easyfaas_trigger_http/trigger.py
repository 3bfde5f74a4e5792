"""The HTTP trigger: ``ANY /function/{name}[/{path}]`` becomes a call to the function.

Events have the shape of AWS Lambda function URLs / API Gateway HTTP API payload 2.0, so
handlers written for those run unchanged.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import Callable
from os import urandom
from typing import Any

from aiohttp import web

from easyfaas.errors import EasyFaaSError, FunctionNotFoundError, InvocationError, ThrottledError
from easyfaas.interfaces import InvocationResult, Invoker, Trigger

__all__ = ["HttpTrigger", "build_event", "build_response"]

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Easyfaas-Request-Id"
_PREFIX = "/function/"
#: Request body bytes read from the socket at a time for a streaming function.
STREAM_CHUNK = 64 * 1024
#: Headers of a streamed reply that the server sets itself.
_HOP_HEADERS = frozenset({"content-length", "transfer-encoding", "connection"})
_TEXT_TYPES = ("text/", "application/json", "application/xml", "application/javascript", "application/x-www-form-urlencoded")


def _is_text(content_type: str) -> bool:
    return not content_type or content_type.startswith(_TEXT_TYPES) or content_type.endswith(("+json", "+xml"))


def _request_id(request: web.BaseRequest) -> str:
    """The caller's request id, or a new one (as unique as ``uuid4().hex``, a third of the cost)."""
    return request.headers.get(REQUEST_ID_HEADER) or urandom(16).hex()


def build_event(request: web.BaseRequest, raw_path: str, body: bytes, request_id: str) -> dict[str, Any]:
    """The payload-2.0 event for one request; ``raw_path`` is the part after /function/NAME."""
    headers: dict[str, str] = {}
    for key, value in request.headers.items():
        k = key.lower()
        headers[k] = f"{headers[k]},{value}" if k in headers else value
    cookies = [c.strip() for c in headers.pop("cookie", "").split(";") if c.strip()]
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": raw_path,
        "rawQueryString": request.query_string,
        "headers": headers,
        "requestContext": {
            "http": {
                "method": request.method,
                "path": raw_path,
                "protocol": f"HTTP/{request.version.major}.{request.version.minor}",
                "sourceIp": request.remote or "",
                "userAgent": headers.get("user-agent", ""),
            },
            "requestId": request_id,
            "routeKey": "$default",
            "stage": "$default",
            "domainName": request.host,
            "timeEpoch": int(time.time() * 1000),
        },
        "isBase64Encoded": False,
    }
    if cookies:
        event["cookies"] = cookies
    if request.query_string:
        params: dict[str, str] = {}
        for key, value in request.query.items():
            params[key] = f"{params[key]},{value}" if key in params else value
        event["queryStringParameters"] = params
    if body:
        if _is_text(request.content_type):
            try:
                event["body"] = body.decode("utf-8")
            except UnicodeDecodeError:
                event["body"], event["isBase64Encoded"] = base64.b64encode(body).decode(), True
        else:
            event["body"], event["isBase64Encoded"] = base64.b64encode(body).decode(), True
    return event


def build_response(result: InvocationResult) -> web.Response:
    """A handler's ``{statusCode, headers, body, isBase64Encoded, cookies}`` is the response;
    any other value is returned as JSON with 200; bytes are returned untouched."""
    headers = {REQUEST_ID_HEADER: result.request_id}
    if result.raw:
        return web.Response(body=result.body, headers=headers, content_type="application/octet-stream")
    body = result.body
    if body[:1] == b"{" and b'"statusCode"' in body:
        value = json.loads(body)
        if isinstance(value, dict) and "statusCode" in value:
            return _shaped_response(value, headers)
    return web.Response(body=body, headers=headers, content_type="application/json")


def _shaped_response(value: dict[str, Any], headers: dict[str, str]) -> web.Response:
    try:
        status = int(value["statusCode"])
    except (TypeError, ValueError):
        return _error(502, "InvalidResponse", f"statusCode {value['statusCode']!r} is not an integer", headers)
    out_headers: dict[str, str] = {str(k): str(v) for k, v in (value.get("headers") or {}).items()}
    out_headers.update(headers)
    raw_body = value.get("body", "")
    if value.get("isBase64Encoded"):
        try:
            payload = base64.b64decode(raw_body)
        except (ValueError, TypeError):
            return _error(502, "InvalidResponse", "body is not valid base64", headers)
    elif isinstance(raw_body, str):
        payload = raw_body.encode()
    else:
        payload = json.dumps(raw_body).encode()
        out_headers.setdefault("Content-Type", "application/json")
    response = web.Response(status=status, body=payload, headers=out_headers)
    for cookie in value.get("cookies") or []:
        response.headers.add("Set-Cookie", str(cookie))
    return response


def _failure(exc: EasyFaaSError, rid: str) -> web.Response:
    """The error response for a call that failed before answering."""
    if isinstance(exc, FunctionNotFoundError):
        return _error(404, "FunctionNotFound", str(exc), {REQUEST_ID_HEADER: rid})
    if isinstance(exc, ThrottledError):
        return _error(429, exc.error_type, exc.message, {REQUEST_ID_HEADER: rid, "Retry-After": str(exc.retry_after)})
    if isinstance(exc, InvocationError):
        details = exc.to_dict()
        extra = {k: v for k, v in details.items() if k not in ("errorType", "errorMessage", "logs")}
        return _error(exc.http_status, str(details["errorType"]), exc.message, {REQUEST_ID_HEADER: rid}, extra)
    return _error(500, "PlatformError", str(exc), {REQUEST_ID_HEADER: rid})


def _error(
    http_status: int, error_type: str, message: str, headers: dict[str, str], extra: dict[str, Any] | None = None
) -> web.Response:
    body = {"errorType": error_type, "errorMessage": message, **(extra or {})}
    return web.json_response({"error": body}, status=http_status, headers=headers)


class HttpTrigger(Trigger):
    """Options: ``listen`` (host:port, default 0.0.0.0:8080), ``max_body`` (bytes, default 6 MiB)."""

    PLUGIN_NAME = "http"

    def __init__(self, *, listen: str = "0.0.0.0:8080", max_body: int = 6 * 2**20) -> None:
        host, sep, port = listen.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"listen must be host:port, got {listen!r}")
        self.host, self.port = host, int(port)
        self.max_body = max_body
        self._runner: web.ServerRunner | None = None
        self._invoker: Invoker | None = None
        self._streaming: Callable[[str], bool] | None = None

    async def start(self, invoker: Invoker) -> None:
        self._invoker = invoker
        self._streaming = getattr(invoker, "streaming", None)  # issue #7; an invoker may not stream
        # aiohttp's low-level server: one route needs no Application, router or middlewares
        # (about a tenth of a warm call's CPU in the controller).
        loop = asyncio.get_running_loop()
        max_body = self.max_body

        def make_request(message: Any, payload: Any, protocol: Any, writer: Any, task: Any) -> web.BaseRequest:
            return web.BaseRequest(message, payload, protocol, writer, task, loop, client_max_size=max_body)

        server = web.Server(self._route, request_factory=make_request, access_log=None)
        self._runner = web.ServerRunner(server, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        if self.port == 0:  # bound to a free port: remember which one
            listening = getattr(site, "_server", None)
            if listening is not None and listening.sockets:
                self.port = listening.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._runner is not None:
            # Stops listening, then waits for in-flight requests (aiohttp's shutdown timeout).
            await self._runner.cleanup()
            self._runner = None

    def describe(self) -> dict[str, Any]:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return {"url": f"http://{host}:{self.port}/function/"}

    async def _route(self, request: web.BaseRequest) -> web.StreamResponse:
        """``/function/NAME`` and ``/function/NAME/PATH``; anything else is a 404."""
        name, _, rest = request.path[len(_PREFIX) :].partition("/")
        if not request.path.startswith(_PREFIX) or not name:
            return _error(404, "NotFound", f"no route for {request.path!r}: call /function/NAME[/PATH]", {})
        return await self._handle(request, name, "/" + rest)

    async def _handle(self, request: web.BaseRequest, name: str, path: str) -> web.StreamResponse:
        assert self._invoker is not None
        if self._streaming is not None and self._streaming(name):
            return await self._handle_stream(request, name, path)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _error(413, "PayloadTooLarge", f"the request body is over {self.max_body} bytes", {})
        rid = _request_id(request)
        event = build_event(request, path, body, rid)
        try:
            await self._invoker.authorize(name, request.headers.get("Authorization"))
            result = await self._invoker.invoke(name, event, trigger="http", request_id=rid)
        except EasyFaaSError as exc:
            return _failure(exc, rid)
        return build_response(result)

    async def _handle_stream(self, request: web.BaseRequest, name: str, path: str) -> web.StreamResponse:
        """A ``streaming: true`` function (issue #7): the request body goes from the socket to
        the function chunk by chunk, and its reply comes back chunked, as fast as each side
        takes it; nothing holds a whole body. A call that fails before its first byte of
        reply gets the usual error response; after it, the connection is cut so the client
        sees an incomplete reply (no terminating chunk), and the activation record says why."""
        assert self._invoker is not None
        rid = _request_id(request)
        event = build_event(request, path, b"", rid)
        try:
            await self._invoker.authorize(name, request.headers.get("Authorization"))
            call = await self._invoker.invoke_stream(
                name, event, request.content.iter_chunked(STREAM_CHUNK), trigger="http", request_id=rid
            )
        except EasyFaaSError as exc:
            return _failure(exc, rid)
        headers = {k: v for k, v in call.headers.items() if k.lower() not in _HOP_HEADERS}
        headers[REQUEST_ID_HEADER] = rid
        response = web.StreamResponse(status=call.status, headers=headers)
        if request.version >= (1, 1):
            response.enable_chunked_encoding()
        try:
            await response.prepare(request)
            async for chunk in call:
                await response.write(chunk)
        except InvocationError as exc:
            log.info("streamed call %s of %s failed after its reply began: %s", rid, name, exc.message)
            if request.transport is not None:
                request.transport.abort()  # no terminating chunk: the client sees the reply is cut
            return response
        except ConnectionError:  # the client went away
            return response
        finally:
            await call.aclose()
        await response.write_eof()
        return response
