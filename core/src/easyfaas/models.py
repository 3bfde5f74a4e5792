"""Plain data the engine's parts hand to each other: function specs, versions, sandboxes.

Specs are validated with pydantic (they come from users); the rest are frozen dataclasses.
"""

from __future__ import annotations

import re
import zoneinfo
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "HANDLER_RE",
    "NAME_RE",
    "Alias",
    "AsyncPolicy",
    "FunctionSpec",
    "FunctionVersion",
    "HttpRoute",
    "SandboxEvent",
    "SandboxInfo",
    "SandboxStats",
    "Schedule",
    "WarmupSpec",
]

#: Function names: what URLs and file names can carry without escaping.
NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
#: ``module.function`` (dotted module path, then a name): the Python runtime's handler shape.
HANDLER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*\.[A-Za-z_][A-Za-z0-9_]*$")
# runtimes (#7): what any runtime's handler may look like; each runtime's check_code() decides
# what it means (``module.function``, ``src/index.handler``, an executable like ``bin/run.sh``).
# A relative path of plain segments: no absolute path, no ``..``, no hidden or option-like names.
_HANDLER_ANY_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*(/[A-Za-z0-9_][A-Za-z0-9_.+-]*)*$")


class HttpRoute(BaseModel):
    """An extra HTTP path the HTTP trigger routes to the function (besides /function/NAME)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    path: str
    methods: list[str] = Field(default_factory=lambda: ["ANY"])


# -- async calls and schedules (issue #6, docs/async.md) ----------------------------------

_CRON_FIELD_RE = re.compile(r"^[0-9A-Za-z*/,?#-]+$")
_CRON_MACROS = frozenset({"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"})


def _check_destination(value: str | None) -> str | None:
    if value is None or NAME_RE.match(value) or re.match(r"^https?://[^\s/]+", value):
        return value
    raise ValueError("must be a function name or an http:// or https:// callback URL")


class AsyncPolicy(BaseModel):
    """How asynchronous calls of a function are retried, aged out and followed up."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_attempts: int = Field(3, ge=1, le=100, description="runs in all, the first included")
    backoff: float = Field(1.0, ge=0, le=3600, description="seconds before the first retry; doubles per retry")
    max_backoff: float = Field(300.0, ge=0, le=86400, description="cap on one retry's delay, in seconds")
    max_event_age: float = Field(21600.0, gt=0, le=7 * 86400, description="seconds after which a call is given up")
    on_success: str | None = Field(None, description="function name or http(s):// URL told of each success")
    on_failure: str | None = Field(None, description="function name or http(s):// URL told of each call given up")

    _destinations = field_validator("on_success", "on_failure")(classmethod(lambda cls, v: _check_destination(v)))


class Schedule(BaseModel):
    """A cron schedule on which the cron trigger calls the function asynchronously."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Five fields (minute hour day month weekday), or six with seconds first, or a macro.
    cron: str
    timezone: str = "UTC"
    #: The event each run receives; without one, a scheduled-event description.
    event: Any = None

    @field_validator("cron")
    @classmethod
    def _check_cron(cls, value: str) -> str:
        # Only the shape: the cron trigger parses it fully and refuses bad ones at deploy.
        value = " ".join(value.split())
        if value in _CRON_MACROS:
            return value
        fields = value.split(" ")
        if len(fields) not in (5, 6) or not all(_CRON_FIELD_RE.match(f) for f in fields):
            raise ValueError("must have 5 fields (minute hour day month weekday), 6 with seconds first, or be a macro like @hourly")
        return value

    @field_validator("timezone")
    @classmethod
    def _check_timezone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a name too long for a file
            raise ValueError(f"unknown time zone {value!r} (expected an IANA name like Europe/Paris)") from None
        return value


class FunctionSpec(BaseModel):
    """What a user deploys (DESIGN §6). Limits are documented in docs/functions.md."""

    # ``async`` is a keyword: the field is ``async_``, written and shown as ``async``.
    model_config = ConfigDict(extra="forbid", frozen=True, validate_by_name=True, serialize_by_alias=True)

    name: str
    runtime: str = "python"
    handler: str = "handler.handler"
    memory: int = Field(128, ge=16, le=10240, description="memory limit in MB")
    timeout: float = Field(30.0, gt=0, le=900, description="seconds")
    env: dict[str, str] = Field(default_factory=dict)
    concurrency: int = Field(10, ge=1, le=1000, description="max instances")
    instance_concurrency: int = Field(1, ge=1, le=1000, description="calls per instance")
    min_warm: int = Field(0, ge=0, le=1000)
    keep_alive: float | None = Field(None, ge=0, le=86400, description="idle seconds before an instance retires")
    routes: list[HttpRoute] = Field(default_factory=list)
    public: bool = True
    async_: AsyncPolicy = Field(default_factory=AsyncPolicy, alias="async")
    schedules: list[Schedule] = Field(default_factory=list, max_length=32)
    #: Streamed HTTP calls (issue #7): request and response bodies flow through in chunks, of
    #: any size; only runtimes that can stream accept it (exec). docs/runtime-protocol.md.
    streaming: bool = Field(False, description="stream HTTP request and response bodies (any size)")

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not NAME_RE.match(value):
            raise ValueError("must start with a letter and hold only letters, digits, '-' and '_' (at most 64)")
        return value

    @field_validator("handler")
    @classmethod
    def _check_handler(cls, value: str) -> str:
        if len(value) > 256 or not _HANDLER_ANY_RE.match(value):
            raise ValueError(
                "must be 'module.function' or a relative file path of letters, digits, '_', '.', '+', '-' and '/' "
                "(no '..', no leading '/' or '.'; the runtime checks the rest at deploy)"
            )
        return value

    @field_validator("env")
    @classmethod
    def _check_env(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not key or "=" in key or "\0" in key:
                raise ValueError(f"environment variable name {key!r} is invalid")
        return value

    @model_validator(mode="after")
    def _check_streaming(self) -> FunctionSpec:
        if self.streaming and self.instance_concurrency != 1:
            raise ValueError("a streaming function serves one call per instance: instance_concurrency must be 1")
        return self


@dataclass(frozen=True)
class FunctionVersion:
    """One immutable deployed version of a function, as a code store returns it."""

    spec: FunctionSpec
    version: str
    code_dir: str
    code_sha256: str
    created_at: float

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def key(self) -> str:
        """Identity of the code+config an instance runs: never shared across versions."""
        return f"{self.spec.name}:{self.version}"

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.spec.model_dump(mode="json"),
            "version": self.version,
            "code_sha256": self.code_sha256,
            "created_at": self.created_at,
        }


@dataclass(frozen=True)
class Alias:
    """A name for a version; with ``additional_version`` a share ``weight`` of calls goes there (canary)."""

    name: str
    function: str
    version: str
    additional_version: str | None = None
    weight: float = 0.0
    description: str = ""
    revision: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "function": self.function, "version": self.version,
            "additional_version": self.additional_version, "weight": self.weight,
            "description": self.description, "revision": self.revision,
        }  # fmt: skip


@dataclass(frozen=True)
class SandboxInfo:
    """A sandbox as the driver reports it. ``socket_path`` is the runner's socket, on the host."""

    id: str
    runtime: str
    socket_path: str
    pid: int
    state: str = "generic"  # generic | bound
    function_key: str = ""


@dataclass(frozen=True)
class WarmupSpec:
    """What the funclet asks a driver to bind to a generic sandbox."""

    function_key: str
    code_dir: str  # on the host
    memory_mb: int
    timeout_s: float
    pids_max: int = 64
    cpu_share: float = 1.0  # in CPUs
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SandboxStats:
    id: str
    memory_rss: int
    memory_uss: int
    memory_peak: int
    cpu_seconds: float
    pids: int


@dataclass(frozen=True)
class SandboxEvent:
    """Something happened to a sandbox outside of a request: it exited, was OOM-killed, ..."""

    sandbox_id: str
    kind: str  # exited | oom_killed | unhealthy
    exit_code: int | None = None
    signal: int | None = None
    message: str = ""
