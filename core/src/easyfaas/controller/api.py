"""The management REST API under ``/v1`` (aiohttp), served on ``controller.api``.

Errors are JSON ``{"error": {"type", "message", ...}}`` with a status code per error class.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError

from easyfaas.controller.async_api import add_async_routes
from easyfaas.controller.auth import auth_middleware
from easyfaas.controller.engine import Controller
from easyfaas.controller.lambda_api import add_lambda_routes
from easyfaas.controller.openapi import openapi_document
from easyfaas.errors import (
    EasyFaaSError,
    FunctionError,
    FunctionNotFoundError,
    FunctionSpecError,
    InvocationError,
    ThrottledError,
)
from easyfaas.interfaces import LATEST
from easyfaas.models import NAME_RE, Alias, FunctionSpec
from easyfaas.packaging import pack_directory

__all__ = ["build_app", "error_response"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
REQUEST_ID_HEADER = "X-Easyfaas-Request-Id"


def error_response(exc: EasyFaaSError) -> web.Response:
    """The JSON error body and status every engine error maps to."""
    if isinstance(exc, InvocationError):
        status, body = exc.http_status, exc.to_dict()
    elif isinstance(exc, FunctionNotFoundError):
        status, body = 404, {"errorType": "FunctionNotFound", "errorMessage": str(exc)}
    elif isinstance(exc, FunctionSpecError):
        status, body = 400, {"errorType": "InvalidRequest", "errorMessage": str(exc)}
    else:
        status, body = 500, {"errorType": type(exc).__name__, "errorMessage": str(exc)}
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, ThrottledError) else None
    return web.json_response({"error": body}, status=status, headers=headers)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except EasyFaaSError as exc:
        return error_response(exc)


def spec_from(data: dict[str, Any], name: str | None = None) -> FunctionSpec:
    if name is not None:
        if data.get("name", name) != name:
            raise FunctionSpecError(f"the spec names {data['name']!r} but the URL names {name!r}")
        data = {**data, "name": name}
    try:
        return FunctionSpec.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'spec'}: {str(err['msg']).removeprefix('Value error, ')}"
            for err in exc.errors()
        )
        raise FunctionSpecError(f"invalid function spec: {problems}") from None


def alias_from(function: str, name: str, body: dict[str, Any]) -> Alias:
    """Validate an alias request: a name that is not a version, versions as digits, weight in [0, 1]."""
    if not NAME_RE.match(name) or name.isdigit():
        raise FunctionSpecError(f"alias name {name!r} must start with a letter (digits name versions)")
    version = str(body.get("version", ""))
    additional = body.get("additional_version")
    weight = body.get("weight", 0.0)
    if not version.isdigit():
        raise FunctionSpecError("version must be a published version number such as '1'")
    if additional is not None and not str(additional).isdigit():
        raise FunctionSpecError("additional_version must be a version number")
    if not isinstance(weight, int | float) or isinstance(weight, bool) or not 0.0 <= weight <= 1.0:
        raise FunctionSpecError("weight must be a number between 0 and 1")
    if weight and additional is None:
        raise FunctionSpecError("a weight needs an additional_version")
    return Alias(name=name, function=function, version=version,
                 additional_version=str(additional) if additional is not None else None,
                 weight=float(weight), description=str(body.get("description", "")))  # fmt: skip


def build_app(controller: Controller) -> web.Application:
    app = web.Application(
        middlewares=[auth_middleware(controller.credentials), _errors], client_max_size=controller.limits.max_archive + 2**20
    )
    routes = web.RouteTableDef()

    @routes.get("/v1/health")
    async def health(request: web.Request) -> web.Response:
        try:
            funclet = await controller.funclet.health(timeout=2.0, wait=False)
        except EasyFaaSError as exc:
            return web.json_response({"status": "degraded", "funclet": str(exc)}, status=503)
        triggers = {name: trigger.describe() for name, trigger in controller.triggers.items()}
        return web.json_response(
            {"status": "ok", "funclet": funclet, "triggers": triggers, "functions": len(controller.registry.latest())}
        )

    @routes.get("/v1/openapi.json")
    async def openapi(request: web.Request) -> web.Response:
        return web.json_response(openapi_document())

    @routes.get("/v1/functions")
    async def list_functions(request: web.Request) -> web.Response:
        return web.json_response({"functions": [fv.to_dict() for fv in controller.registry.latest()]})

    @routes.put("/v1/functions/{name}")
    async def put_function(request: web.Request) -> web.Response:
        """Deploy a new version: multipart with a ``spec`` (JSON) part and a ``code`` (zip/tar.gz) part,
        or JSON ``{"spec": {...}, "code_base64": "..."}``."""
        name = request.match_info["name"]
        spec_data: dict[str, Any] = {}
        archive = b""
        if request.content_type.startswith("multipart/"):
            try:
                reader = await request.multipart()
                while (part := await reader.next()) is not None:
                    if not isinstance(part, BodyPartReader):
                        continue
                    if part.name == "spec":
                        spec_data = _json_object(await part.read(decode=True), "spec")
                    elif part.name == "code":
                        archive = bytes(await part.read(decode=False))
            except (HttpProcessingError, ValueError, AssertionError) as exc:
                # aiohttp's multipart reader asserts on some malformed bodies.
                raise FunctionSpecError(f"malformed multipart body: {exc}") from None
        else:
            body = _json_object(await request.read(), "request body")
            spec_data = body.get("spec") or {}
            try:
                archive = base64.b64decode(body.get("code_base64", ""), validate=True)
            except ValueError as exc:
                raise FunctionSpecError(f"code_base64 is not valid base64: {exc}") from None
        if not archive:
            raise FunctionSpecError("no code package: send a 'code' part (zip or tar.gz)")
        fv = await controller.deploy(spec_from(spec_data, name), archive)
        return web.json_response(fv.to_dict(), status=201)

    @routes.get("/v1/functions/{name}")
    async def get_function(request: web.Request) -> web.Response:
        fv = await controller.registry.resolve(request.match_info["name"], request.query.get("qualifier", LATEST))
        return web.json_response(fv.to_dict())

    @routes.get("/v1/functions/{name}/code")
    async def get_code(request: web.Request) -> web.Response:
        """The version's code as a zip (what was deployed, as stored)."""
        fv = await controller.registry.resolve(request.match_info["name"], request.query.get("qualifier", LATEST))
        archive = await asyncio.to_thread(pack_directory, Path(fv.code_dir))
        disposition = f'attachment; filename="{fv.name}-{fv.version}.zip"'
        return web.Response(body=archive, content_type="application/zip", headers={"Content-Disposition": disposition})

    @routes.get("/v1/functions/{name}/versions")
    async def versions(request: web.Request) -> web.Response:
        fvs = await controller.registry.versions(request.match_info["name"])
        return web.json_response({"versions": [fv.to_dict() for fv in fvs]})

    @routes.patch("/v1/functions/{name}")
    async def update_config(request: web.Request) -> web.Response:
        """A new version with the same code and the given spec fields changed."""
        changes = _json_object(await request.read(), "request body")
        fv = await controller.update_config(request.match_info["name"], changes)
        return web.json_response(fv.to_dict())

    @routes.post("/v1/functions/{name}/versions")
    async def publish(request: web.Request) -> web.Response:
        """Every deploy is already an immutable version: publishing names the latest one."""
        fv = await controller.registry.resolve(request.match_info["name"])
        return web.json_response(fv.to_dict(), status=201)

    @routes.get("/v1/functions/{name}/aliases")
    async def list_aliases(request: web.Request) -> web.Response:
        aliases = await controller.registry.aliases(request.match_info["name"])
        return web.json_response({"aliases": [a.to_dict() for a in aliases.values()]})

    @routes.put("/v1/functions/{name}/aliases/{alias}")
    async def put_alias(request: web.Request) -> web.Response:
        """Body: ``{"version": "2", "additional_version": "3", "weight": 0.1, "description": ""}``."""
        body = _json_object(await request.read(), "request body")
        alias = alias_from(request.match_info["name"], request.match_info["alias"], body)
        return web.json_response((await controller.registry.put_alias(alias)).to_dict())

    @routes.get("/v1/functions/{name}/aliases/{alias}")
    async def get_alias(request: web.Request) -> web.Response:
        name, alias = request.match_info["name"], request.match_info["alias"]
        found = (await controller.registry.aliases(name)).get(alias)
        if found is None:
            raise FunctionNotFoundError(f"function {name!r} has no alias {alias!r}")
        return web.json_response(found.to_dict())

    @routes.delete("/v1/functions/{name}/aliases/{alias}")
    async def delete_alias(request: web.Request) -> web.Response:
        await controller.registry.delete_alias(request.match_info["name"], request.match_info["alias"])
        return web.Response(status=204)

    @routes.delete("/v1/functions/{name}")
    async def delete_function(request: web.Request) -> web.Response:
        await controller.delete(request.match_info["name"])
        return web.Response(status=204)

    @routes.post("/v1/functions/{name}/invoke")
    async def invoke(request: web.Request) -> web.Response:
        """Synchronous call. The body is the event (JSON). A function error is 200 with the
        ``X-Easyfaas-Function-Error`` header, as Lambda does; other failures use their status."""
        body = await request.read()
        if body:
            try:
                json.loads(body)
            except ValueError:
                raise FunctionSpecError("the event must be JSON") from None
        name = request.match_info["name"]
        qualifier = request.query.get("qualifier", LATEST)
        try:
            result = await controller.invoke(
                name, body or b"null", qualifier=qualifier, trigger="api", request_id=request.headers.get(REQUEST_ID_HEADER)
            )
        except FunctionError as exc:
            return web.json_response(
                exc.to_dict(), headers={"X-Easyfaas-Function-Error": "Unhandled", REQUEST_ID_HEADER: _rid(exc)}
            )
        headers = {REQUEST_ID_HEADER: result.request_id, "X-Easyfaas-Version": result.version}
        if result.init_ms is not None:
            headers["X-Easyfaas-Init-Ms"] = f"{result.init_ms:.3f}"
        if request.query.get("log") == "tail":
            headers["X-Easyfaas-Log-Result"] = base64.b64encode(result.logs.encode()[-4096:]).decode()
        content_type = "application/octet-stream" if result.raw else "application/json"
        return web.Response(body=result.body, headers=headers, content_type=content_type)

    @routes.get("/v1/instances")
    async def instances(request: web.Request) -> web.Response:
        return web.json_response({"instances": controller.instances(), "states": list(controller.instance_states())})

    @routes.get("/v1/activations")
    async def activations(request: web.Request) -> web.Response:
        try:
            limit = min(1000, int(request.query.get("limit", "50")))
            since = int(request.query.get("since", "0"))
        except ValueError:
            raise FunctionSpecError("limit and since must be integers") from None
        rows = await controller.activations.query(function=request.query.get("function"), limit=limit, since_seq=since)
        return web.json_response({"activations": rows})

    @routes.get("/v1/activations/{id}")
    async def activation(request: web.Request) -> web.Response:
        row = await controller.activations.get(request.match_info["id"])
        if row is None:
            return web.json_response({"error": {"errorType": "NotFound", "errorMessage": "no such activation"}}, status=404)
        return web.json_response(row)

    @routes.get("/metrics")
    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(controller.metrics), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app.add_routes(routes)
    add_lambda_routes(app, controller)
    add_async_routes(app, controller)  # Event invocations, /v1/dead-letters (controller/async_api.py)
    return app


def _rid(exc: InvocationError) -> str:
    return exc.request_id


def _json_object(raw: bytes | bytearray, what: str) -> dict[str, Any]:
    try:
        value = json.loads(raw or b"{}")
    except ValueError as exc:
        raise FunctionSpecError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise FunctionSpecError(f"{what} must be a JSON object")
    return value
