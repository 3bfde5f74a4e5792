"""``EngineClient``: a small synchronous client of the management API (used by the CLI and tests)."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml

from easyfaas.errors import EasyFaaSError, FunctionSpecError
from easyfaas.packaging import pack_directory

__all__ = ["DEFAULT_ENDPOINT", "ApiError", "EngineClient", "config_path", "load_function_dir", "resolve_target", "save_login"]

DEFAULT_ENDPOINT = "http://127.0.0.1:9090"
_Rows = list[dict[str, Any]]  # method ``list`` shadows the builtin inside the class


def config_path() -> Path:
    """Where the CLI keeps endpoints and tokens (``easyfaas login``), mode 0600."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "easyfaas" / "config.json"


def _read_config() -> dict[str, Any]:
    try:
        data = json.loads(config_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def save_login(endpoint: str, token: str, *, make_default: bool = True) -> Path:
    """Remember ``token`` for ``endpoint`` (and make it the default endpoint)."""
    data = _read_config()
    data.setdefault("endpoints", {})[endpoint.rstrip("/")] = {"token": token}
    if make_default:
        data["default"] = endpoint.rstrip("/")
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2)
    os.replace(tmp, path)
    return path


def resolve_target(endpoint: str | None = None, token: str | None = None) -> tuple[str, str | None]:
    """Endpoint: argument, $EASYFAAS_ENDPOINT, the configured default, then 127.0.0.1:9090.
    Token: argument, $EASYFAAS_TOKEN, then the one saved for that endpoint."""
    data = _read_config()
    url = (endpoint or os.environ.get("EASYFAAS_ENDPOINT") or data.get("default") or DEFAULT_ENDPOINT).rstrip("/")
    secret = token or os.environ.get("EASYFAAS_TOKEN") or data.get("endpoints", {}).get(url, {}).get("token")
    return url, secret


class ApiError(EasyFaaSError):
    """The API answered with an error; ``status`` is the HTTP status, ``body`` the JSON error."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status = status
        self.body = body
        error = body.get("error", body)
        super().__init__(f"{error.get('errorType', 'Error')}: {error.get('errorMessage', body)}")


def load_function_dir(path: Path, overrides: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
    """The spec (``function.yaml`` in ``path`` if any, then ``overrides``) and the zipped code.

    ``path`` may also be a ``function.yaml`` file, or a ready .zip/.tar.gz package.
    """
    spec: dict[str, Any] = {}
    if path.is_file() and path.name in ("function.yaml", "function.yml"):
        path = path.parent
    if path.is_dir():
        for name in ("function.yaml", "function.yml"):
            spec_file = path / name
            if spec_file.is_file():
                try:
                    loaded = yaml.safe_load(spec_file.read_text()) or {}
                except yaml.YAMLError as exc:
                    raise FunctionSpecError(f"{spec_file}: not valid YAML: {exc}") from exc
                if not isinstance(loaded, dict):
                    raise FunctionSpecError(f"{spec_file}: must be a mapping of spec fields")
                spec.update(loaded)
                break
        archive = pack_directory(path)
    elif path.is_file():
        archive = path.read_bytes()
    else:
        raise FunctionSpecError(f"{path}: no such file or directory")
    spec.update({k: v for k, v in overrides.items() if v is not None})
    return spec, archive


class EngineClient:
    def __init__(self, endpoint: str | None = None, *, token: str | None = None, timeout: float = 60.0) -> None:
        self.endpoint, token = resolve_target(endpoint, token)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.endpoint, timeout=timeout, headers=headers)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> EngineClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = self._http.request(method, path, **kwargs)
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = {"error": {"errorType": "HTTPError", "errorMessage": response.text}}
            raise ApiError(response.status_code, body)
        return response

    def health(self) -> dict[str, Any]:
        return dict(self._request("GET", "/v1/health").json())

    def deploy(
        self, name: str, spec: dict[str, Any], archive: bytes, *, progress: Callable[[int], None] | None = None
    ) -> dict[str, Any]:
        """Upload a new version; ``progress`` is called with the bytes sent so far."""
        boundary = uuid.uuid4().hex
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="spec"\r\nContent-Type: application/json\r\n\r\n'
            f"{json.dumps(spec)}\r\n--{boundary}\r\n"
            'Content-Disposition: form-data; name="code"; filename="code.zip"\r\nContent-Type: application/zip\r\n\r\n'
        ).encode()
        tail = f"\r\n--{boundary}--\r\n".encode()

        def body() -> Iterator[bytes]:
            sent = 0
            for chunk in (head, *(archive[i : i + 256 * 1024] for i in range(0, len(archive), 256 * 1024)), tail):
                yield chunk
                sent += len(chunk)
                if progress is not None:
                    progress(sent)

        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}",
                   "Content-Length": str(len(head) + len(archive) + len(tail))}  # fmt: skip
        return dict(self._request("PUT", f"/v1/functions/{name}", content=body(), headers=headers).json())

    def update(self, name: str, changes: dict[str, Any]) -> dict[str, Any]:
        return dict(self._request("PATCH", f"/v1/functions/{name}", json=changes).json())

    def aliases(self, name: str) -> _Rows:
        return list(self._request("GET", f"/v1/functions/{name}/aliases").json()["aliases"])

    def put_alias(self, name: str, alias: str, body: dict[str, Any]) -> dict[str, Any]:
        return dict(self._request("PUT", f"/v1/functions/{name}/aliases/{alias}", json=body).json())

    def delete_alias(self, name: str, alias: str) -> None:
        self._request("DELETE", f"/v1/functions/{name}/aliases/{alias}")

    def list(self) -> _Rows:
        return list(self._request("GET", "/v1/functions").json()["functions"])

    def get(self, name: str) -> dict[str, Any]:
        return dict(self._request("GET", f"/v1/functions/{name}").json())

    def versions(self, name: str) -> _Rows:
        return list(self._request("GET", f"/v1/functions/{name}/versions").json()["versions"])

    def delete(self, name: str) -> None:
        self._request("DELETE", f"/v1/functions/{name}")

    def invoke(self, name: str, event: bytes, *, log_tail: bool = False) -> httpx.Response:
        """The raw response: a function error is a 200 with ``X-Easyfaas-Function-Error``."""
        params = {"log": "tail"} if log_tail else {}
        return self._request("POST", f"/v1/functions/{name}/invoke", content=event, params=params)

    def instances(self) -> _Rows:
        return list(self._request("GET", "/v1/instances").json()["instances"])

    def activations(self, function: str | None = None, *, limit: int = 50, since: int = 0) -> _Rows:
        params: dict[str, Any] = {"limit": limit, "since": since}
        if function:
            params["function"] = function
        return list(self._request("GET", "/v1/activations", params=params).json()["activations"])

    # -- asynchronous calls (issue #6, docs/async.md) ------------------------------------

    def invoke_async(self, name: str, event: bytes, *, idempotency_key: str | None = None) -> str:
        """Queue a call (Event invocation type); its activation id."""
        headers = {"X-Easyfaas-Invocation-Type": "Event"}
        if idempotency_key is not None:
            headers["X-Easyfaas-Idempotency-Key"] = idempotency_key
        response = self._request("POST", f"/v1/functions/{name}/invoke", content=event, headers=headers)
        return str(response.json()["activation_id"])

    def activation(self, activation_id: str) -> dict[str, Any]:
        return dict(self._request("GET", f"/v1/activations/{activation_id}").json())

    def dead_letters(self, function: str | None = None, *, limit: int = 100) -> _Rows:
        params: dict[str, Any] = {"limit": limit}
        if function:
            params["function"] = function
        return list(self._request("GET", "/v1/dead-letters", params=params).json()["dead_letters"])

    def redrive(self, activation_id: str) -> str:
        return str(self._request("POST", f"/v1/dead-letters/{activation_id}/redrive").json()["activation_id"])

    def purge_dead_letters(self, function: str | None = None) -> int:
        params = {"function": function} if function else {}
        return int(self._request("DELETE", "/v1/dead-letters", params=params).json()["purged"])
