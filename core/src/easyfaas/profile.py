"""The engine profile: a YAML file (or the embedded default) describing one engine node.

Loading validates every key; an error names the file, line, key and what was expected.
"""

from __future__ import annotations

import inspect
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from easyfaas.errors import ProfileError
from easyfaas.sockets import short_path

__all__ = ["DEFAULT_PROFILE", "EngineProfile", "Profile", "load_profile", "parse_duration", "parse_size"]

DEFAULT_PROFILE = """\
# The embedded default: one node, everything local.
node: {name: local, data_dir: ./.easyfaas}
controller: {api: 127.0.0.1:9090, keep_alive: 120s}
funclet:
  sandbox: auto                 # namespace when root on Linux, else process
  pool: {python: 2}             # generic sandboxes kept ready per runtime
  limits: {memory_total: 4Gi}
storage: {stubs: {}}
queue: {sqlite: {}}             # where accepted async calls wait (<data_dir>/queue.db)
triggers:
  http: {listen: 0.0.0.0:8080}
  cron: {}                      # runs the functions' `schedules`
runtimes: [python]
"""

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(Ki|Mi|Gi|Ti|K|M|G|T|B)?\s*$")
_SIZE_UNITS = {
    None: 1, "B": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
}  # fmt: skip
_DURATION_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: Any) -> float:
    """Seconds from ``120``, ``"120s"``, ``"2m"``, ``"500ms"``."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 2m or 500ms")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION_RE.match(str(value))
        if not match:
            raise ValueError(f"expected a duration such as 30s, 2m or 500ms, got {value!r}")
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def parse_size(value: Any) -> int:
    """Bytes from ``1024``, ``"512Mi"``, ``"4Gi"``, ``"1G"``."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 512Mi or 4Gi")
    if isinstance(value, int):
        return value
    match = _SIZE_RE.match(str(value))
    if not match:
        raise ValueError(f"expected a size such as 512Mi or 4Gi, got {value!r}")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])


def _check_address(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected host:port such as 127.0.0.1:9090, got {value!r}")
    return value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NodeSection(_Section):
    name: str = "local"
    data_dir: str = "./.easyfaas"


class ControllerSection(_Section):
    api: str = "127.0.0.1:9090"
    #: Require a bearer token on the management API. Off is allowed only on a loopback address.
    auth: bool = True
    token_file: str | None = None
    keep_alive: float = 120.0
    max_queue_wait: float = 10.0
    #: Idle instances are pinged this often; one that does not answer is replaced.
    health_interval: float = 10.0
    queue_size: int = Field(1000, ge=0)
    #: When every instance of a function is busy and at its cap, a call may wait in the
    #: runner's socket behind the running call instead of in the controller's queue — if the
    #: function's calls take less than this (0 turns prefetch off). See scheduler.py.
    prefetch_below: float = 0.001
    max_payload: int = 6 * 2**20
    #: Cap on a streamed call's request body (``streaming: true`` functions, which
    #: ``max_payload`` does not limit); 0: no cap.
    max_stream_bytes: int = Field(0, ge=0)
    log_cap: int = 2**20
    #: Async calls (issue #6, docs/async.md): event size limit, calls running at once, how
    #: long an idempotency key is remembered.
    async_max_payload: int = 2**20
    async_concurrency: int = Field(32, ge=1, le=10000)
    idempotency_window: float = 3600.0

    _addr = field_validator("api")(classmethod(lambda cls, v: _check_address(v)))

    @field_validator("keep_alive", "max_queue_wait", "health_interval", "idempotency_window", "prefetch_below", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        return parse_duration(value)

    @field_validator("max_payload", "max_stream_bytes", "log_cap", "async_max_payload", mode="before")
    @classmethod
    def _size(cls, value: Any) -> int:
        return parse_size(value)


    @model_validator(mode="after")
    def _auth_off_only_on_loopback(self) -> ControllerSection:
        host = self.api.rpartition(":")[0].strip("[]")
        if not self.auth and host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(f"auth can be turned off only when the API listens on loopback, not on {host}")
        return self


class LimitsSection(_Section):
    memory_total: int = 4 * 2**30

    @field_validator("memory_total", mode="before")
    @classmethod
    def _size(cls, value: Any) -> int:
        return parse_size(value)


class FuncletSection(_Section):
    socket: str | None = None
    sandbox: str | dict[str, dict[str, Any] | None] = "auto"
    pool: dict[str, int] = Field(default_factory=lambda: {"python": 2})
    limits: LimitsSection = Field(default_factory=LimitsSection)

    @field_validator("sandbox")
    @classmethod
    def _one_sandbox(cls, value: str | dict[str, Any]) -> str | dict[str, Any]:
        if isinstance(value, dict) and len(value) != 1:
            raise ValueError("name exactly one sandbox driver, e.g. 'sandbox: namespace' or 'sandbox: {docker: {...}}'")
        return value

    @field_validator("pool")
    @classmethod
    def _pool(cls, value: dict[str, int]) -> dict[str, int]:
        for runtime, size in value.items():
            if size < 0:
                raise ValueError(f"pool size of {runtime!r} cannot be negative")
        return value


def _section(name: str, options: dict[str, Any]) -> dict[str, dict[str, Any] | None]:
    return {name: options}


class EngineProfile(_Section):
    node: NodeSection = Field(default_factory=NodeSection)
    controller: ControllerSection = Field(default_factory=ControllerSection)
    funclet: FuncletSection = Field(default_factory=FuncletSection)
    storage: dict[str, dict[str, Any] | None] = Field(default_factory=lambda: _section("stubs", {}))
    queue: dict[str, dict[str, Any] | None] = Field(default_factory=lambda: _section("sqlite", {}))
    triggers: dict[str, dict[str, Any] | None] = Field(
        default_factory=lambda: {**_section("http", {"listen": "0.0.0.0:8080"}), **_section("cron", {})}
    )
    runtimes: list[str] | dict[str, dict[str, Any] | None] = Field(default_factory=lambda: ["python"])

    @field_validator("storage")
    @classmethod
    def _one_store(cls, value: dict[str, Any]) -> dict[str, Any]:
        if len(value) != 1:
            raise ValueError("name exactly one code store, e.g. 'storage: {stubs: {}}'")
        return value

    @field_validator("queue")
    @classmethod
    def _one_queue(cls, value: dict[str, Any]) -> dict[str, Any]:
        if len(value) != 1:
            raise ValueError("name exactly one async queue, e.g. 'queue: {sqlite: {}}'")
        return value


@dataclass
class Profile:
    """A validated profile plus where each key came from, for error messages."""

    model: EngineProfile
    source: str
    base_dir: Path
    marks: dict[tuple[str | int, ...], int] = field(default_factory=dict)
    text: str = ""

    # -- locations -----------------------------------------------------------------------

    def where(self, *path: str | int) -> str:
        """``file:line`` of the deepest existing key on ``path``."""
        for depth in range(len(path), -1, -1):
            line = self.marks.get(tuple(path[:depth]))
            if line is not None:
                return f"{self.source}:{line}"
        return self.source

    def problem(self, path: tuple[str | int, ...], message: str) -> ProfileError:
        key = ".".join(str(p) for p in path) or "(top level)"
        return ProfileError([f"{self.where(*path)}: {key}: {message}"])

    # -- derived values ----------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        return (self.base_dir / os.path.expanduser(self.model.node.data_dir)).resolve()

    @property
    def funclet_socket(self) -> Path:
        sock = self.model.funclet.socket
        return (self.base_dir / sock).resolve() if sock else short_path(self.data_dir / "funclet.sock", "funclet.sock")

    @property
    def sandbox(self) -> tuple[str, dict[str, Any]]:
        value = self.model.funclet.sandbox
        if isinstance(value, str):
            return value, {}
        name, options = next(iter(value.items()))
        return name, dict(options or {})

    @property
    def storage(self) -> tuple[str, dict[str, Any]]:
        name, options = next(iter(self.model.storage.items()))
        return name, dict(options or {})

    @property
    def queue(self) -> tuple[str, dict[str, Any]]:
        name, options = next(iter(self.model.queue.items()))
        return name, dict(options or {})

    @property
    def triggers(self) -> dict[str, dict[str, Any]]:
        return {name: dict(options or {}) for name, options in self.model.triggers.items()}

    @property
    def runtimes(self) -> dict[str, dict[str, Any]]:
        value = self.model.runtimes
        if isinstance(value, list):
            return {name: {} for name in value}
        return {name: dict(options or {}) for name, options in value.items()}

    def check_plugin_options(self, path: tuple[str, ...], cls: type, options: dict[str, Any]) -> None:
        """Match a plugin section against its constructor: unknown and missing keys are errors."""
        params = inspect.signature(cls).parameters
        accepts_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
        named = {n for n, p in params.items() if n != "self" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
        injected = {"state_dir", "data_dir"}
        problems = []
        if not accepts_any:
            for key in options:
                if key not in named or key in injected:
                    allowed = ", ".join(sorted(named - injected)) or "none"
                    problems.append(
                        f"{self.where(*path, key)}: {'.'.join((*path, key))}: unknown option "
                        f"(the {path[-1]!r} plugin accepts: {allowed})"
                    )
        for name, param in params.items():
            if name in named and name not in injected and param.default is param.empty and name not in options:
                problems.append(f"{self.where(*path)}: {'.'.join(path)}: missing required option {name!r}")
        if problems:
            raise ProfileError(problems)


def load_profile(path: str | os.PathLike[str] | None = None, *, text: str | None = None) -> Profile:
    """Load and validate a profile file (or ``text``, or the embedded default)."""
    if text is None:
        if path is None:
            text, source, base_dir = DEFAULT_PROFILE, "<default profile>", Path.cwd()
        else:
            file = Path(path)
            try:
                text = file.read_text()
            except OSError as exc:
                raise ProfileError([f"{file}: cannot read the profile: {exc.strerror}"]) from exc
            source, base_dir = str(file), file.resolve().parent
    else:
        source, base_dir = str(path) if path else "<profile>", Path.cwd()

    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ProfileError([f"{source}{line}: not valid YAML: {getattr(exc, 'problem', exc)}"]) from exc

    marks: dict[tuple[str | int, ...], int] = {}
    problems: list[str] = []
    data: Any = {}
    if node is not None:
        _index(node, (), marks, problems, source)
        if problems:
            raise ProfileError(problems)
        data = yaml.SafeLoader(text).get_single_data()
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ProfileError([f"{source}:1: the profile must be a mapping of sections (node, controller, funclet, ...)"])

    profile = Profile(model=EngineProfile(), source=source, base_dir=base_dir, marks=marks, text=text)
    try:
        profile.model = EngineProfile.model_validate(data)
    except ValidationError as exc:
        raise ProfileError([_describe(profile, error) for error in exc.errors()]) from None
    return profile


def _index(node: yaml.Node, path: tuple[str | int, ...], marks: dict[tuple[str | int, ...], int], problems: list[str], source: str) -> None:
    """Record the line of every key, and refuse duplicate keys (YAML silently keeps the last)."""
    marks.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            if key in seen:
                dotted = ".".join(str(p) for p in (*path, key))
                problems.append(f"{source}:{key_node.start_mark.line + 1}: {dotted}: duplicate key")
            seen.add(key)
            marks[(*path, key)] = key_node.start_mark.line + 1
            _index(value_node, (*path, key), marks, problems, source)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index(item, (*path, i), marks, problems, source)


def _describe(profile: Profile, error: Any) -> str:
    loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and ("[" in p or p in {"str", "list", "dict"})))
    key = ".".join(str(p) for p in loc) or "(top level)"
    if error["type"] == "extra_forbidden":
        parent = loc[:-1]
        model = _model_at(parent)
        allowed = ", ".join(model.model_fields) if model else "none"
        return f"{profile.where(*loc)}: {key}: unknown key (expected one of: {allowed})"
    message = str(error["msg"]).removeprefix("Value error, ")
    got = error.get("input")
    plain = error["type"] not in ("missing", "value_error") and not isinstance(got, dict | list)
    suffix = f", got {got!r}" if plain else ""
    return f"{profile.where(*loc)}: {key}: {message}{suffix}"


def _model_at(path: tuple[str | int, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] = EngineProfile
    for part in path:
        info = model.model_fields.get(str(part))
        annotation = info.annotation if info else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model
