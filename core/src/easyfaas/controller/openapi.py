"""The OpenAPI 3.1 description of the management API, served at ``/v1/openapi.json``.

Schemas of request bodies come from the pydantic models; a test checks every route is here.
"""

from __future__ import annotations

from typing import Any

from easyfaas.models import FunctionSpec

__all__ = ["openapi_document"]

_ERROR = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {"errorType": {"type": "string"}, "errorMessage": {"type": "string"}},
            "required": ["errorType", "errorMessage"],
        }
    },
}
_NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string", "pattern": "^[A-Za-z][A-Za-z0-9_-]{0,63}$"}}
_ALIAS = {"name": "alias", "in": "path", "required": True, "schema": {"type": "string", "pattern": "^[A-Za-z][A-Za-z0-9_-]{0,63}$"}}
_QUALIFIER = {"name": "qualifier", "in": "query", "required": False, "schema": {"type": "string"},
              "description": "$LATEST (default), a version number or an alias"}
_VERSION_RECORD = {"type": "object", "properties": {"name": {"type": "string"}, "version": {"type": "string"}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {400: "Invalid request", 401: "Missing or wrong token", 404: "No such function, version or alias",
            413: "Payload too large", 429: "Throttled (see Retry-After)", 502: "The function failed to run",
            504: "The function timed out", 503: "The funclet is unavailable"}
    return {str(c): {"description": text[c], "content": {"application/json": {"schema": _ERROR}}} for c in codes}


def _ok(description: str, schema: dict[str, Any] | None = None, status: int = 200) -> dict[str, Any]:
    body: dict[str, Any] = {"description": description}
    if schema is not None:
        body["content"] = {"application/json": {"schema": schema}}
    return {str(status): body}


def openapi_document() -> dict[str, Any]:
    spec_schema = FunctionSpec.model_json_schema(ref_template="#/components/schemas/{model}")
    defs = spec_schema.pop("$defs", {})
    alias_body = {
        "type": "object",
        "properties": {
            "version": {"type": "string", "pattern": "^[0-9]+$"},
            "additional_version": {"type": ["string", "null"], "pattern": "^[0-9]+$"},
            "weight": {"type": "number", "minimum": 0, "maximum": 1},
            "description": {"type": "string"},
        },
        "required": ["version"],
    }
    paths: dict[str, Any] = {
        "/v1/health": {"get": {"summary": "Liveness of controller and funclet", "security": [],
                               "responses": {**_ok("Healthy", {"type": "object"}), **_errors(503)}}},
        "/v1/openapi.json": {"get": {"summary": "This document", "security": [], "responses": _ok("OpenAPI", {"type": "object"})}},
        "/v1/functions": {"get": {"summary": "List functions (latest versions)",
                                  "responses": {**_ok("Functions", {"type": "object"}), **_errors(401)}}},
        "/v1/functions/{name}": {
            "parameters": [_NAME],
            "get": {"summary": "Get a function version", "parameters": [_QUALIFIER],
                    "responses": {**_ok("The version", _VERSION_RECORD), **_errors(401, 404)}},
            "put": {
                "summary": "Deploy a new version (multipart: spec JSON + code zip/tar.gz)",
                "requestBody": {"required": True, "content": {
                    "multipart/form-data": {"schema": {"type": "object", "properties": {
                        "spec": {"$ref": "#/components/schemas/FunctionSpec"},
                        "code": {"type": "string", "format": "binary"}}, "required": ["code"]}},
                    "application/json": {"schema": {"type": "object", "properties": {
                        "spec": {"$ref": "#/components/schemas/FunctionSpec"},
                        "code_base64": {"type": "string", "contentEncoding": "base64"}}, "required": ["code_base64"]}},
                }},
                "responses": {**_ok("Deployed", _VERSION_RECORD, 201), **_errors(400, 401)},
            },
            "patch": {"summary": "New version with the same code and changed configuration",
                      "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}},
                      "responses": {**_ok("The new version", _VERSION_RECORD), **_errors(400, 401, 404)}},
            "delete": {"summary": "Delete a function and all its versions",
                       "responses": {"204": {"description": "Deleted"}, **_errors(401, 404)}},
        },
        "/v1/functions/{name}/code": {"parameters": [_NAME], "get": {
            "summary": "Download a version's code as a zip", "parameters": [_QUALIFIER],
            "responses": {"200": {"description": "Zip archive", "content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}}},
                          **_errors(401, 404)}}},
        "/v1/functions/{name}/versions": {"parameters": [_NAME],
            "get": {"summary": "List versions", "responses": {**_ok("Versions", {"type": "object"}), **_errors(401, 404)}},
            "post": {"summary": "Publish: name the latest (immutable) version",
                     "responses": {**_ok("The version", _VERSION_RECORD, 201), **_errors(401, 404)}}},
        "/v1/functions/{name}/aliases": {"parameters": [_NAME], "get": {
            "summary": "List aliases", "responses": {**_ok("Aliases", {"type": "object"}), **_errors(401, 404)}}},
        "/v1/functions/{name}/aliases/{alias}": {
            "parameters": [_NAME, _ALIAS],
            "get": {"summary": "Get an alias", "responses": {**_ok("Alias", {"type": "object"}), **_errors(401, 404)}},
            "put": {"summary": "Create or update an alias (optionally weighted to a second version)",
                    "requestBody": {"required": True, "content": {"application/json": {"schema": alias_body}}},
                    "responses": {**_ok("Alias", {"type": "object"}), **_errors(400, 401, 404)}},
            "delete": {"summary": "Delete an alias", "responses": {"204": {"description": "Deleted"}, **_errors(401, 404)}},
        },
        "/v1/functions/{name}/invoke": {"parameters": [_NAME], "post": {
            "summary": "Call a function. A function error is a 200 with X-Easyfaas-Function-Error",
            "parameters": [_QUALIFIER,
                           {"name": "log", "in": "query", "required": False, "schema": {"enum": ["tail"]}},
                           {"name": "X-Easyfaas-Invocation-Type", "in": "header", "required": False,
                            "schema": {"enum": ["RequestResponse", "Event"]}},
                           # issue #6: async calls (docs/async.md)
                           {"name": "async", "in": "query", "required": False, "schema": {"enum": ["true", "false"]},
                            "description": "true: same as X-Easyfaas-Invocation-Type: Event"},
                           {"name": "X-Easyfaas-Idempotency-Key", "in": "header", "required": False,
                            "schema": {"type": "string", "minLength": 1, "maxLength": 256},
                            "description": "Event calls: a key reused within the idempotency window returns the first call's id"}],
            "requestBody": {"required": False, "content": {"application/json": {"schema": {}}}},
            "responses": {**_ok("The result", {}), "202": {"description": "Accepted (Event): the activation id"},
                          **_errors(400, 401, 404, 413, 429, 502, 504)}}},
        "/v1/instances": {"get": {"summary": "Instances and their states",
                                  "responses": {**_ok("Instances", {"type": "object"}), **_errors(401)}}},
        "/v1/activations": {"get": {
            "summary": "Activation records, newest first",
            "parameters": [{"name": "function", "in": "query", "required": False, "schema": {"type": "string"}},
                           {"name": "limit", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
                           {"name": "since", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 0}}],
            "responses": {**_ok("Records", {"type": "object"}), **_errors(400, 401)}}},
        "/v1/activations/{id}": {"get": {
            "summary": "One activation record",
            "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {**_ok("The record", {"type": "object"}), **_errors(401, 404)}}},
        # issue #6: dead letters of async calls (docs/async.md)
        "/v1/dead-letters": {
            "get": {"summary": "Async calls given up, newest first",
                    "parameters": [{"name": "function", "in": "query", "required": False, "schema": {"type": "string"}},
                                   {"name": "limit", "in": "query", "required": False,
                                    "schema": {"type": "integer", "minimum": 1, "maximum": 1000}}],
                    "responses": {**_ok("Dead letters", {"type": "object"}), **_errors(400, 401)}},
            "delete": {"summary": "Purge dead letters (all, or one function's)",
                       "parameters": [{"name": "function", "in": "query", "required": False, "schema": {"type": "string"}}],
                       "responses": {**_ok("How many were purged", {"type": "object"}), **_errors(401)}},
        },
        "/v1/dead-letters/{id}/redrive": {"post": {
            "summary": "Queue a dead letter again (same activation id, fresh attempts and age)",
            "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {"202": {"description": "Queued again: the activation id"}, **_errors(401, 404)}}},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "easyfaas management API", "version": "1"},
        "paths": paths,
        "components": {
            "schemas": {"FunctionSpec": spec_schema, **defs},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }
