"""An AWS Lambda-compatible API at ``/2015-03-31/functions``, authenticated with SigV4.

Lambda SDKs and CLIs pointed at the engine (``endpoint_url``) work unmodified with the access
key pair the engine issues (``<data_dir>/access-key.json``), as S3-compatible servers do.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import json
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

from aiohttp import web
from pydantic import ValidationError

from easyfaas.controller.auth import Credentials
from easyfaas.controller.engine import Controller
from easyfaas.errors import (
    EasyFaaSError,
    FunctionError,
    FunctionNotFoundError,
    FunctionSpecError,
    InvocationError,
    PayloadTooLargeError,
    ThrottledError,
)
from easyfaas.interfaces import LATEST
from easyfaas.models import NAME_RE, Alias, FunctionSpec, FunctionVersion

__all__ = ["add_lambda_routes", "lambda_runtime", "verify_sigv4"]

PREFIX = "/2015-03-31"
ACCOUNT = "000000000000"
REGION = "easyfaas"
#: Requests signed longer ago than this are refused (AWS allows 15 minutes too).
MAX_SKEW = 15 * 60
LOG_TAIL_BYTES = 4096

_RUNTIMES = {"python": "python3.11", "node": "nodejs20.x", "lambda": "provided.al2023", "exec": "provided", "http": "provided"}
_AUTH_RE = re.compile(
    r"^AWS4-HMAC-SHA256\s+Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/(?P<service>[^/]+)/aws4_request,\s*"
    r"SignedHeaders=(?P<headers>[a-z0-9;.-]+),\s*Signature=(?P<signature>[0-9a-f]{64})$"
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class LambdaApiError(Exception):
    """An error in AWS's shape: ``x-amzn-ErrorType`` header and a JSON message."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}

    def response(self) -> web.Response:
        return web.json_response(
            {"Type": "User", "message": self.message, "Message": self.message},
            status=self.status,
            headers={"x-amzn-ErrorType": self.code, **self.headers},
        )


def lambda_runtime(runtime: str) -> str:
    """Our runtime name → a Lambda runtime identifier (and back with ``_our_runtime``)."""
    return _RUNTIMES.get(runtime, "provided")


def _our_runtime(runtime: str) -> str:
    if runtime.startswith("python"):
        return "python"
    if runtime.startswith("nodejs"):
        return "node"
    if runtime.startswith("provided"):
        return "lambda"
    raise LambdaApiError(400, "InvalidParameterValueException", f"unsupported runtime {runtime!r}")


# -- SigV4 ----------------------------------------------------------------------------------


def _sign(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def verify_sigv4(method: str, raw_path: str, headers: Any, body: bytes, credentials: Credentials, now: float) -> None:
    """Raise ``LambdaApiError`` (403) unless the request carries a valid SigV4 signature."""
    match = _AUTH_RE.match(headers.get("Authorization", "").strip())
    if match is None:
        raise LambdaApiError(403, "MissingAuthenticationTokenException", "missing or malformed AWS SigV4 Authorization header")
    key = credentials.access_key
    if not hmac.compare_digest(match["key"], key.access_key_id):
        raise LambdaApiError(403, "UnrecognizedClientException", "The security token included in the request is invalid.")
    amz_date = headers.get("X-Amz-Date", "")
    try:
        signed_at = dt.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC).timestamp()
    except ValueError:
        raise LambdaApiError(403, "InvalidSignatureException", "X-Amz-Date is missing or malformed") from None
    if abs(now - signed_at) > MAX_SKEW or not amz_date.startswith(match["date"]):
        raise LambdaApiError(403, "InvalidSignatureException", "Signature expired: the request time is too far from the server's")

    path, _, query = raw_path.partition("?")
    canonical_path = quote(_remove_dot_segments(path), safe="/~")
    pairs = sorted(tuple(pair.partition("=")[::2]) for pair in query.split("&")) if query else []
    canonical_query = "&".join(f"{k}={v}" for k, v in pairs)
    signed = match["headers"].split(";")
    canonical_headers = "".join(
        f"{name}:{','.join(' '.join(v.split()) for v in headers.getall(name, []))}\n" for name in signed
    )
    payload_hash = headers.get("X-Amz-Content-SHA256") or hashlib.sha256(body).hexdigest()
    if payload_hash not in ("UNSIGNED-PAYLOAD",) and payload_hash != hashlib.sha256(body).hexdigest():
        raise LambdaApiError(403, "InvalidSignatureException", "the body does not match X-Amz-Content-SHA256")
    canonical = "\n".join([method.upper(), canonical_path, canonical_query, canonical_headers, match["headers"], payload_hash])
    scope = f"{match['date']}/{match['region']}/{match['service']}/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    signing_key = _sign(_sign(_sign(_sign(f"AWS4{key.secret_access_key}".encode(), match["date"]), match["region"]),
                              match["service"]), "aws4_request")  # fmt: skip
    expected = hmac.new(signing_key, to_sign.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, match["signature"]):
        raise LambdaApiError(
            403, "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided. "
            "Check your AWS Secret Access Key and signing method.",
        )  # fmt: skip


def _remove_dot_segments(path: str) -> str:
    out: list[str] = []
    for part in path.split("/"):
        if part == "..":
            if out:
                out.pop()
        elif part and part != ".":
            out.append(part)
    return "/" + "/".join(out) + ("/" if path.endswith("/") and out else "")


# -- shapes -----------------------------------------------------------------------------------


def _arn(name: str, qualifier: str | None = None) -> str:
    base = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name}"
    return f"{base}:{qualifier}" if qualifier else base


def _configuration(fv: FunctionVersion, *, version: str) -> dict[str, Any]:
    spec = fv.spec
    return {
        "FunctionName": spec.name,
        "FunctionArn": _arn(spec.name, version if version != LATEST else None),
        "Runtime": lambda_runtime(spec.runtime),
        "Role": f"arn:aws:iam::{ACCOUNT}:role/easyfaas",
        "Handler": spec.handler,
        "CodeSize": 0,
        "Description": "",
        "Timeout": int(spec.timeout),
        "MemorySize": spec.memory,
        "LastModified": dt.datetime.fromtimestamp(fv.created_at, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.000+0000"),
        "CodeSha256": base64.b64encode(binascii.unhexlify(fv.code_sha256)).decode() if fv.code_sha256 else "",
        "Version": version,
        "Environment": {"Variables": dict(spec.env)},
        "State": "Active",
        "LastUpdateStatus": "Successful",
        "PackageType": "Zip",
        "Architectures": ["x86_64"],
        "RevisionId": fv.code_sha256[:8] + "-" + fv.version,
    }


def _alias_configuration(alias: Alias) -> dict[str, Any]:
    shape: dict[str, Any] = {
        "AliasArn": _arn(alias.function, alias.name),
        "Name": alias.name,
        "FunctionVersion": alias.version,
        "Description": alias.description,
        "RevisionId": alias.revision,
    }
    if alias.additional_version:
        shape["RoutingConfig"] = {"AdditionalVersionWeights": {alias.additional_version: alias.weight}}
    return shape


def _json(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw or b"{}")
    except ValueError:
        raise LambdaApiError(400, "InvalidRequestContentException", "could not parse the request body as JSON") from None
    if not isinstance(value, dict):
        raise LambdaApiError(400, "InvalidRequestContentException", "the request body must be a JSON object")
    return value


def _zip(code: dict[str, Any]) -> bytes:
    data = code.get("ZipFile")
    if not isinstance(data, str):
        raise LambdaApiError(400, "InvalidParameterValueException", "only Code.ZipFile uploads are supported (no S3 here)")
    try:
        return base64.b64decode(data, validate=True)
    except binascii.Error:
        raise LambdaApiError(400, "InvalidParameterValueException", "Code.ZipFile is not valid base64") from None


def _spec_changes(body: dict[str, Any]) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    if "Runtime" in body:
        changes["runtime"] = _our_runtime(str(body["Runtime"]))
    if "Handler" in body:
        changes["handler"] = body["Handler"]
    if "MemorySize" in body:
        changes["memory"] = body["MemorySize"]
    if "Timeout" in body:
        changes["timeout"] = body["Timeout"]
    if "Environment" in body:
        changes["env"] = (body["Environment"] or {}).get("Variables") or {}
    return changes


# -- routes -----------------------------------------------------------------------------------


def add_lambda_routes(app: web.Application, controller: Controller) -> None:
    """Mount the Lambda API on ``app`` as a sub-application with its own auth and error shape."""

    @web.middleware
    async def lambda_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            if controller.credentials is not None:
                body = await request.read()
                verify_sigv4(request.method, request.raw_path, request.headers, body, controller.credentials, time.time())
            return await handler(request)
        except LambdaApiError as exc:
            return exc.response()
        except ThrottledError as exc:
            return LambdaApiError(429, "TooManyRequestsException", exc.message, {"Retry-After": str(exc.retry_after)}).response()
        except PayloadTooLargeError as exc:
            return LambdaApiError(413, "RequestTooLargeException", exc.message).response()
        except FunctionNotFoundError as exc:
            return LambdaApiError(404, "ResourceNotFoundException", str(exc)).response()
        except FunctionSpecError as exc:
            return LambdaApiError(400, "InvalidParameterValueException", str(exc)).response()
        except EasyFaaSError as exc:
            return LambdaApiError(500, "ServiceException", str(exc)).response()

    sub = web.Application(middlewares=[lambda_middleware], client_max_size=controller.limits.max_archive * 2)
    routes = web.RouteTableDef()

    async def resolve(name: str, qualifier: str | None) -> tuple[FunctionVersion, str]:
        fv = await controller.registry.resolve(name, qualifier or LATEST)
        return fv, (qualifier if qualifier and qualifier.isdigit() else LATEST)

    def name_of(request: web.Request) -> str:
        # Clients may send a full ARN or a partial one (name:qualifier); keep the name.
        name = request.match_info["name"].split(":function:")[-1].split(":")[0]
        if not NAME_RE.match(name):
            raise LambdaApiError(400, "InvalidParameterValueException", f"invalid function name {name!r}")
        return name

    @routes.post("/functions")
    async def create_function(request: web.Request) -> web.Response:
        body = _json(await request.read())
        name = str(body.get("FunctionName", ""))
        if not NAME_RE.match(name):
            raise LambdaApiError(400, "InvalidParameterValueException", f"invalid FunctionName {name!r}")
        if controller.registry.exists(name):
            raise LambdaApiError(409, "ResourceConflictException", f"Function already exist: {name}")
        spec = _spec({"name": name, "runtime": "python", **_spec_changes(body)})
        fv = await controller.deploy(spec, _zip(body.get("Code") or {}))
        return web.json_response(_configuration(fv, version=fv.version if body.get("Publish") else LATEST), status=201)

    @routes.get("/functions")
    async def list_functions(request: web.Request) -> web.Response:
        return web.json_response({"Functions": [_configuration(fv, version=LATEST) for fv in controller.registry.latest()]})

    @routes.get("/functions/{name}")
    async def get_function(request: web.Request) -> web.Response:
        fv, version = await resolve(name_of(request), request.query.get("Qualifier"))
        location = f"{request.scheme}://{request.host}/v1/functions/{fv.name}/code?qualifier={fv.version}"
        return web.json_response({"Configuration": _configuration(fv, version=version),
                                  "Code": {"RepositoryType": "easyfaas", "Location": location}})  # fmt: skip

    @routes.get("/functions/{name}/configuration")
    async def get_configuration(request: web.Request) -> web.Response:
        fv, version = await resolve(name_of(request), request.query.get("Qualifier"))
        return web.json_response(_configuration(fv, version=version))

    @routes.put("/functions/{name}/code")
    async def update_code(request: web.Request) -> web.Response:
        body = _json(await request.read())
        current = await controller.registry.resolve(name_of(request))
        fv = await controller.deploy(current.spec, _zip(body))
        return web.json_response(_configuration(fv, version=fv.version if body.get("Publish") else LATEST))

    @routes.put("/functions/{name}/configuration")
    async def update_configuration(request: web.Request) -> web.Response:
        body = _json(await request.read())
        fv = await controller.update_config(name_of(request), _spec_changes(body))
        return web.json_response(_configuration(fv, version=LATEST))

    @routes.delete("/functions/{name}")
    async def delete_function(request: web.Request) -> web.Response:
        await controller.delete(name_of(request))
        return web.Response(status=204)

    @routes.post("/functions/{name}/versions")
    async def publish_version(request: web.Request) -> web.Response:
        fv = await controller.registry.resolve(name_of(request))
        return web.json_response(_configuration(fv, version=fv.version), status=201)

    @routes.get("/functions/{name}/versions")
    async def list_versions(request: web.Request) -> web.Response:
        fvs = await controller.registry.versions(name_of(request))
        return web.json_response({"Versions": [_configuration(fv, version=fv.version) for fv in fvs]})

    def alias_body(function: str, name: str, body: dict[str, Any]) -> Alias:
        weights = ((body.get("RoutingConfig") or {}).get("AdditionalVersionWeights") or {}).items()
        if len(weights) > 1:
            raise LambdaApiError(400, "InvalidParameterValueException", "at most one additional version")
        additional, weight = next(iter(weights), (None, 0.0))
        version = str(body.get("FunctionVersion", ""))
        if not version.isdigit():
            raise LambdaApiError(400, "InvalidParameterValueException", "FunctionVersion must be a published version")
        if not NAME_RE.match(name) or name.isdigit():
            raise LambdaApiError(400, "InvalidParameterValueException", f"invalid alias name {name!r}")
        return Alias(name=name, function=function, version=version, additional_version=additional,
                     weight=float(weight), description=str(body.get("Description", "")))  # fmt: skip

    @routes.post("/functions/{name}/aliases")
    async def create_alias(request: web.Request) -> web.Response:
        body = _json(await request.read())
        function = name_of(request)
        alias_name = str(body.get("Name", ""))
        if alias_name in await controller.registry.aliases(function):
            raise LambdaApiError(409, "ResourceConflictException", f"Alias already exists: {alias_name}")
        stored = await controller.registry.put_alias(alias_body(function, alias_name, body))
        return web.json_response(_alias_configuration(stored), status=201)

    @routes.get("/functions/{name}/aliases/{alias}")
    async def get_alias(request: web.Request) -> web.Response:
        function, alias_name = name_of(request), request.match_info["alias"]
        alias = (await controller.registry.aliases(function)).get(alias_name)
        if alias is None:
            raise LambdaApiError(404, "ResourceNotFoundException", f"Alias not found: {_arn(function, alias_name)}")
        return web.json_response(_alias_configuration(alias))

    @routes.put("/functions/{name}/aliases/{alias}")
    async def update_alias(request: web.Request) -> web.Response:
        function, alias_name = name_of(request), request.match_info["alias"]
        current = (await controller.registry.aliases(function)).get(alias_name)
        if current is None:
            raise LambdaApiError(404, "ResourceNotFoundException", f"Alias not found: {_arn(function, alias_name)}")
        body = _json(await request.read())
        merged = {"FunctionVersion": current.version, "Description": current.description, **body}
        if "RoutingConfig" not in body and current.additional_version:
            merged["RoutingConfig"] = {"AdditionalVersionWeights": {current.additional_version: current.weight}}
        stored = await controller.registry.put_alias(alias_body(function, alias_name, merged))
        return web.json_response(_alias_configuration(stored))

    @routes.delete("/functions/{name}/aliases/{alias}")
    async def delete_alias(request: web.Request) -> web.Response:
        await controller.registry.delete_alias(name_of(request), request.match_info["alias"])
        return web.Response(status=204)

    @routes.post("/functions/{name}/invocations")
    async def invoke(request: web.Request) -> web.Response:
        name = name_of(request)
        qualifier = request.query.get("Qualifier") or LATEST
        kind = request.headers.get("X-Amz-Invocation-Type", "RequestResponse")
        payload = await request.read() or b"{}"
        try:
            json.loads(payload)
        except ValueError:
            raise LambdaApiError(400, "InvalidRequestContentException", "Could not parse request body into json") from None
        if kind == "DryRun":
            await controller.registry.resolve(name, qualifier)
            return web.Response(status=204)
        if kind == "Event":
            activation = await controller.invoke_async(name, payload, qualifier=qualifier, trigger="lambda-api")
            return web.Response(status=202, headers={"x-amzn-RequestId": activation})
        if kind != "RequestResponse":
            raise LambdaApiError(400, "InvalidParameterValueException", f"unknown X-Amz-Invocation-Type {kind!r}")
        tail = request.headers.get("X-Amz-Log-Type") == "Tail"
        try:
            result = await controller.invoke(name, payload, qualifier=qualifier, trigger="lambda-api")
        except (ThrottledError, PayloadTooLargeError, FunctionNotFoundError):
            raise
        except InvocationError as exc:
            # Lambda reports everything the function did wrong (raise, crash, timeout, bad import)
            # as a 200 with X-Amz-Function-Error; platform failures stay 5xx.
            if exc.status == "platform_error":
                raise
            details = exc.to_dict()
            error_type = details["errorType"] if isinstance(exc, FunctionError) else f"Runtime.{details['errorType']}"
            body = {"errorMessage": exc.message, "errorType": error_type, "stackTrace": details.get("stackTrace", [])}
            headers = {"X-Amz-Function-Error": "Unhandled", "x-amzn-RequestId": exc.request_id}
            if tail:
                headers["X-Amz-Log-Result"] = _tail(str(details.get("logs", "")))
            return web.json_response(body, headers=headers)
        headers = {"X-Amz-Executed-Version": result.version, "x-amzn-RequestId": result.request_id}
        if tail:
            headers["X-Amz-Log-Result"] = _tail(result.logs)
        content_type = "application/octet-stream" if result.raw else "application/json"
        return web.Response(body=result.body, headers=headers, content_type=content_type)

    sub.add_routes(routes)
    # ListFunctions is GET /2015-03-31/functions/ (trailing slash) in the SDKs.
    sub.router.add_get("/functions/", list_functions)
    app.add_subapp(PREFIX, sub)


def _tail(logs: str) -> str:
    return base64.b64encode(logs.encode()[-LOG_TAIL_BYTES:]).decode()


def _spec(data: dict[str, Any]) -> FunctionSpec:
    try:
        return FunctionSpec.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise LambdaApiError(400, "InvalidParameterValueException", f"{where}: {first['msg']}") from None
