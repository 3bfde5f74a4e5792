"""Management API routes of asynchronous calls: the Event invocation type and the dead-letter list.

``build_app`` calls ``add_async_routes``; errors raised here are mapped by its error middleware.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from easyfaas.controller.dispatcher import Dispatcher
from easyfaas.controller.engine import Controller
from easyfaas.errors import FunctionSpecError, PlatformError
from easyfaas.interfaces import LATEST, QueuedCall

__all__ = ["ACTIVATION_ID_HEADER", "IDEMPOTENCY_KEY_HEADER", "INVOCATION_TYPE_HEADER", "add_async_routes"]

INVOCATION_TYPE_HEADER = "X-Easyfaas-Invocation-Type"
IDEMPOTENCY_KEY_HEADER = "X-Easyfaas-Idempotency-Key"
ACTIVATION_ID_HEADER = "X-Easyfaas-Activation-Id"
_INVOKE_ROUTE = "/v1/functions/{name}/invoke"


def add_async_routes(app: web.Application, controller: Controller) -> None:
    """``POST /v1/functions/{name}/invoke`` as an Event (queued) call, and ``/v1/dead-letters``."""

    @web.middleware
    async def event_invocations(request: web.Request, handler: Handler) -> web.StreamResponse:
        # The invoke route belongs to the synchronous API; an Event call is answered here,
        # before it, so that route stays as it is.
        resource = request.match_info.route.resource
        is_invoke = request.method == "POST" and resource is not None and resource.canonical == _INVOKE_ROUTE
        if is_invoke and _is_event(request):
            return await invoke_event(request)
        return await handler(request)

    async def invoke_event(request: web.Request) -> web.Response:
        body = await request.read()
        if body:
            try:
                json.loads(body)
            except ValueError:
                raise FunctionSpecError("the event must be JSON") from None
        activation_id = await controller.invoke_async(
            request.match_info["name"], body or b"null", qualifier=request.query.get("qualifier", LATEST),
            idempotency_key=request.headers.get(IDEMPOTENCY_KEY_HEADER) or None, trigger="api",
        )  # fmt: skip
        return web.json_response(
            {"activation_id": activation_id}, status=202,
            headers={ACTIVATION_ID_HEADER: activation_id, "X-Easyfaas-Request-Id": activation_id},
        )  # fmt: skip

    routes = web.RouteTableDef()

    @routes.get("/v1/dead-letters")
    async def dead_letters(request: web.Request) -> web.Response:
        try:
            limit = min(1000, int(request.query.get("limit", "100")))
        except ValueError:
            raise FunctionSpecError("limit must be an integer") from None
        calls = await _dispatcher(controller).queue.dead_letters(function=request.query.get("function"), limit=limit)
        return web.json_response({"dead_letters": [describe(call) for call in calls]})

    @routes.post("/v1/dead-letters/{id}/redrive")
    async def redrive(request: web.Request) -> web.Response:
        call = await _dispatcher(controller).redrive(request.match_info["id"])
        if call is None:
            return web.json_response(
                {"error": {"errorType": "NotFound", "errorMessage": "no such dead letter"}}, status=404
            )
        return web.json_response({"activation_id": call.id}, status=202, headers={ACTIVATION_ID_HEADER: call.id})

    @routes.delete("/v1/dead-letters")
    async def purge(request: web.Request) -> web.Response:
        purged = await _dispatcher(controller).queue.purge(function=request.query.get("function"))
        return web.json_response({"purged": purged})

    app.middlewares.append(event_invocations)
    app.add_routes(routes)


def _is_event(request: web.Request) -> bool:
    kind = request.headers.get(INVOCATION_TYPE_HEADER, "")
    if kind:
        if kind.lower() == "event":
            return True
        if kind.lower() != "requestresponse":
            raise FunctionSpecError(f"{INVOCATION_TYPE_HEADER} must be Event or RequestResponse, not {kind!r}")
        return False
    return request.query.get("async", "").lower() in ("1", "true", "yes")


def _dispatcher(controller: Controller) -> Dispatcher:
    if controller.dispatcher is None:
        raise PlatformError("asynchronous calls are not available: the engine has not started")
    return controller.dispatcher


def describe(call: QueuedCall) -> dict[str, Any]:
    """A dead letter as the API shows it; the event as JSON when it is JSON."""
    row: dict[str, Any] = {
        "id": call.id, "function": call.function, "qualifier": call.qualifier, "trigger": call.trigger,
        "enqueued_at": call.enqueued_at, "dead_at": call.dead_at, "reason": call.reason,
        "attempts": call.history, "idempotency_key": call.idempotency_key,
    }  # fmt: skip
    try:
        row["event"] = json.loads(call.event)
    except ValueError:
        row["event_base64"] = base64.b64encode(call.event).decode()
    return row
