"""Credentials of the management APIs: a bearer token, and an access key pair for SigV4.

Both are created on first start in the data directory with mode 0600 and compared in
constant time. Requests to ``/v1`` need ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Middleware

__all__ = ["AccessKey", "Credentials", "auth_middleware", "load_credentials"]

log = logging.getLogger(__name__)

#: Paths anyone may call: liveness for load balancers, the API's own description.
PUBLIC_PATHS = frozenset({"/v1/health", "/v1/openapi.json"})


@dataclass(frozen=True)
class AccessKey:
    access_key_id: str
    secret_access_key: str


@dataclass(frozen=True)
class Credentials:
    token: str
    access_key: AccessKey
    token_file: Path
    created: bool

    def token_matches(self, presented: str) -> bool:
        return hmac.compare_digest(presented.encode(), self.token.encode())


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def load_credentials(data_dir: Path, token_file: Path | None = None) -> Credentials:
    """Read the token and access key, creating them (0600) if this is the first start."""
    token_path = token_file or data_dir / "token"
    keys_path = data_dir / "access-key.json"
    created = False
    if not token_path.exists():
        try:
            _write_private(token_path, "ef_" + secrets.token_urlsafe(32) + "\n")
            created = True
        except FileExistsError:  # another process made it first
            pass
    if not keys_path.exists():
        key = {"access_key_id": "EFAK" + secrets.token_hex(8).upper(), "secret_access_key": secrets.token_urlsafe(30)}
        try:
            _write_private(keys_path, json.dumps(key))
        except FileExistsError:
            pass
    if token_path.stat().st_mode & 0o077:
        log.warning("%s is readable by other users; run: chmod 600 %s", token_path, token_path)
    keys = json.loads(keys_path.read_text())
    return Credentials(
        token=token_path.read_text().strip(),
        access_key=AccessKey(keys["access_key_id"], keys["secret_access_key"]),
        token_file=token_path,
        created=created,
    )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def auth_middleware(credentials: Credentials | None) -> Middleware:
    """Require the bearer token on /v1 (except PUBLIC_PATHS) and /metrics; ``None`` disables it."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if credentials is None or path in PUBLIC_PATHS or not (path.startswith("/v1/") or path == "/metrics"):
            return await handler(request)
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not presented or not credentials.token_matches(presented.strip()):
            return web.json_response(
                {"error": {"errorType": "Unauthorized", "errorMessage": "a valid 'Authorization: Bearer <token>' header is required"}},
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="easyfaas"'},
            )
        return await handler(request)

    return middleware
