"""A conformance suite every runtime plugin runs against itself, through a real engine.

A plugin's tests subclass ``RuntimeConformance`` and give it a ``RuntimeAdapter`` that writes
the suite's functions in the runtime's own language; see "Writing an adapter" below.

Writing an adapter
------------------
``write_function(directory)`` writes the **ops function** and returns its spec fields (at
least ``handler``). Its event is JSON; an object with an ``"op"`` key asks for one thing,
any other event is returned unchanged (the identity echo):

======================================  =====================================================
event                                   the function must
======================================  =====================================================
anything without ``op``                 return the event unchanged
``{"op": "fail", "message": M}``        fail with message ``M`` (the adapter's ``error_type``)
``{"op": "sleep", "seconds": S}``       sleep ``S`` seconds, then return ``{"slept": S}``
``{"op": "log", "marker": M}``          write the line ``M`` to its log, return ``{"logged": M}``
``{"op": "env", "names": [N, …]}``      return ``{N: value or null, …}`` from its environment
``{"op": "context"}``                   return the call's context, normalised: ``request_id``,
                                        ``function_name``, ``function_version``, ``memory_mb``,
                                        ``remaining_ms``, ``arn``, ``log_stream`` (the fields in
                                        ``context_fields``)
======================================  =====================================================

``write_custom(directory)`` writes a function under a handler name other than the runtime's
default (another file, a nested path, another export…) that returns ``{"handler": "custom"}``.

Each test runs in the ``process`` sandbox, and in ``namespace`` where that driver works on the
host (``sandbox_params``). Runner-level tests (reload refused, ping, probe connections) start
the runner directly, as a driver does, and speak frames to it.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest

from easyfaas import wire
from easyfaas.client import ApiError
from easyfaas.interfaces import Runtime
from easyfaas.testing import RunningEngine, sandbox_params
from easyfaas.wire import Kind

__all__ = [
    "ALL_CONTEXT_FIELDS",
    "Deployed",
    "RunnerProcess",
    "RuntimeAdapter",
    "RuntimeConformance",
    "invoke_meta",
    "load_meta",
]

ALL_CONTEXT_FIELDS = frozenset(
    {"request_id", "function_name", "function_version", "memory_mb", "remaining_ms", "arn", "log_stream"}
)
#: The environment every ops function is deployed with: ``=`` in values, empty and non-ASCII values.
SUITE_ENV = {"WITH_EQUALS": "a=b=c", "LEADING_EQ": "=x", "EMPTY": "", "UNICODE_VALUE": "ünïcödé ☃"}
UNICODE = "ünïcödé ☃ 🚀 中文 עברית \u2028 \\ \" \t end"
OPS_TIMEOUT = 30.0
SLOW_TIMEOUT = 1.0
MEMORY_MB = 256


class RuntimeAdapter(ABC):
    """Writes the suite's functions for one runtime, and says what its errors look like."""

    #: The runtime's entry-point name (``runtime:`` in function specs and the profile).
    runtime: ClassVar[str]
    #: The runtime's profile options (``runtimes: {name: options}``).
    options: ClassVar[dict[str, Any]] = {}
    #: ``errorType`` of ``{"op": "fail"}``.
    error_type: ClassVar[str]
    #: A text some line of the failure's ``stackTrace`` contains (e.g. the source file's name), or None.
    stack_hint: ClassVar[str | None] = None
    #: The context fields ``{"op": "context"}`` reports.
    context_fields: ClassVar[frozenset[str]] = ALL_CONTEXT_FIELDS
    #: Test name → reason, for cases the runtime cannot support.
    skips: ClassVar[dict[str, str]] = {}

    @abstractmethod
    def write_function(self, directory: Path) -> dict[str, Any]:
        """Write the ops function into ``directory``; return its spec fields (``handler``, …)."""

    @abstractmethod
    def write_custom(self, directory: Path) -> dict[str, Any]:
        """Write a function under a non-default handler name that returns ``{"handler": "custom"}``."""

    def make_runtime(self) -> Runtime:
        """The runtime object, built from its plugin and ``options`` as the engine builds it."""
        from easyfaas.plugin.manager import Plugins

        plugins = Plugins()
        plugins.load({"runtimes": [self.runtime]})
        return plugins.create_runtime(self.runtime, **self.options)


@dataclass
class Deployed:
    engine: RunningEngine
    ops: str
    slow: str
    custom: str
    ops_version: str


class RunnerProcess:
    """A runner started the way the ``process`` driver starts one: clean environment, own directory."""

    def __init__(self, runtime: Runtime, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        runner_dir = directory / "runner"
        runner_dir.mkdir()
        for name, source in runtime.runner_files().items():
            (runner_dir / name).symlink_to(source.resolve())
        self.path = str(directory / "runner.sock")
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(directory)}
        self.stderr = open(directory / "stderr.log", "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            runtime.runner_command(str(runner_dir), "runner.sock"), cwd=directory, env=env,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.stderr, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while True:
            try:
                self.connect().close()  # a readiness probe, as drivers make: no frame at all
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.close()
                    raise RuntimeError(f"the runner did not listen: {(directory / 'stderr.log').read_text()}") from None
                time.sleep(0.005)

    def connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(60)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            raise
        return sock

    def request(self, kind: int, meta: dict[str, Any] | None = None, body: bytes = b"", rid: int = 0,
                sock: socket.socket | None = None) -> tuple[int, int, dict[str, Any], bytes]:  # fmt: skip
        """One frame and its reply, on ``sock`` or on a connection of its own."""
        own = sock is None
        conn = self.connect() if sock is None else sock
        try:
            wire.send_frame(conn, kind, rid, meta, body)
            return wire.recv_frame(conn)
        finally:
            if own:
                conn.close()

    def load(self, code_dir: Path, handler: str, env: dict[str, str] | None = None, **overrides: Any) -> tuple[int, dict[str, Any]]:
        """LOAD on a connection of its own, as the funclet does: (kind, meta) of the reply."""
        kind, _rid, meta, _body = self.request(Kind.LOAD, load_meta(code_dir, {"handler": handler, "env": env or {}}, **overrides))
        return kind, meta

    def invoke(self, event: Any, rid: int = 1, sock: socket.socket | None = None, *, raw: bytes | None = None,
               **overrides: Any) -> tuple[int, dict[str, Any], bytes]:  # fmt: skip
        """One INVOKE of ``event`` (JSON-encoded, or ``raw`` bytes as they are): (kind, meta, body) of the reply."""
        body = raw if raw is not None else json.dumps(event).encode()
        kind, got_rid, meta, out = self.request(Kind.INVOKE, invoke_meta(f"call-{rid}", **overrides), body, rid, sock)
        assert got_rid == rid
        return kind, meta, out

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 9)
        self.proc.wait()
        self.stderr.close()


def load_meta(code_dir: Path, spec: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    """A LOAD frame's meta for a function in ``code_dir`` (``spec``: ``handler``, optional ``env``)."""
    return {
        "code_dir": str(code_dir), "handler": spec["handler"], "function": "conformance", "version": "1",
        "memory_mb": MEMORY_MB, "env": {**spec.get("env", {}), **SUITE_ENV}, "instance": "conformance-0",
        "arn": "arn:aws:lambda:easyfaas:000000000000:function:conformance:1", **overrides,
    }  # fmt: skip


def invoke_meta(rid: str = "conformance-call", **overrides: Any) -> dict[str, Any]:
    """An INVOKE frame's meta: a deadline ``OPS_TIMEOUT`` from now and a 1 MiB ``log_cap``."""
    return {"rid": rid, "deadline": (time.time() + OPS_TIMEOUT) * 1000, "log_cap": 1 << 20, **overrides}


class RuntimeConformance:
    """The suite. Subclass it as ``TestXxxConformance`` and set ``adapter``."""

    adapter: ClassVar[RuntimeAdapter]

    def skip_unsupported(self, case: str) -> None:
        reason = self.adapter.skips.get(case)
        if reason:
            pytest.skip(f"{self.adapter.runtime}: {reason}")

    # -- fixtures --------------------------------------------------------------------------

    @pytest.fixture(scope="class", params=sandbox_params("process", "namespace", "docker"))
    @classmethod
    def conformance_engine(cls, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningEngine]:
        name = cls.adapter.runtime
        # A short directory: the namespace driver's socket paths under it must fit sun_path.
        engine = RunningEngine(
            tmp_path_factory.mktemp(f"conf-{request.param}"), sandbox=request.param, pool={name: 1},
            controller={"keep_alive": "120s"}, extra={"runtimes": {name: dict(cls.adapter.options)}},
        )  # fmt: skip
        engine.start()
        yield engine
        assert engine.stop() == 0, engine.log()

    @pytest.fixture(scope="class")
    @classmethod
    def deployed(cls, conformance_engine: RunningEngine, tmp_path_factory: pytest.TempPathFactory) -> Deployed:
        engine, runtime = conformance_engine, cls.adapter.runtime
        ops_dir = tmp_path_factory.mktemp("ops")
        spec = cls.adapter.write_function(ops_dir)
        env = {**spec.pop("env", {}), **SUITE_ENV}
        fv = engine.deploy(ops_dir, f"conf-{runtime}-ops", runtime=runtime, memory=MEMORY_MB, timeout=OPS_TIMEOUT, env=env, **spec)
        engine.deploy(ops_dir, f"conf-{runtime}-slow", runtime=runtime, timeout=SLOW_TIMEOUT, env=env, **spec)
        custom_dir = tmp_path_factory.mktemp("custom")
        engine.deploy(custom_dir, f"conf-{runtime}-custom", runtime=runtime, **cls.adapter.write_custom(custom_dir))
        return Deployed(engine, f"conf-{runtime}-ops", f"conf-{runtime}-slow", f"conf-{runtime}-custom", str(fv["version"]))

    @pytest.fixture
    def runner(self, tmp_path: Path) -> Iterator[RunnerProcess]:
        proc = RunnerProcess(self.adapter.make_runtime(), tmp_path / "sandbox")
        yield proc
        proc.close()

    # -- helpers ---------------------------------------------------------------------------

    @staticmethod
    def call(deployed: Deployed, event: Any, name: str | None = None) -> Any:
        response = deployed.engine.client.invoke(name or deployed.ops, json.dumps(event).encode())
        assert response.status_code == 200, response.text
        assert "X-Easyfaas-Function-Error" not in response.headers, response.text
        return response.json()

    # -- through the engine ----------------------------------------------------------------

    @pytest.mark.parametrize(
        "event",
        [{"a": 1, "nested": {"list": [1, 2.5, None, True, False], "empty": {}}}, [1, "two", [3]], "text", 42, None, {}],
        ids=["object", "array", "string", "number", "null", "empty-object"],
    )
    def test_identity_echo(self, deployed: Deployed, event: Any) -> None:
        assert self.call(deployed, event) == event

    def test_unicode_round_trips(self, deployed: Deployed) -> None:
        event = {"text": UNICODE, UNICODE: [UNICODE]}
        assert self.call(deployed, event) == event

    def test_payloads_over_one_megabyte(self, deployed: Deployed) -> None:
        blob = ("0123456789abcdef" * 64 + "ü☃") * 1100  # about 1.1 MB of UTF-8 text
        event = {"blob": blob, "items": list(range(20000))}
        assert len(json.dumps(event, ensure_ascii=False).encode()) > 1_100_000
        assert self.call(deployed, event) == event

    def test_non_default_handler_name(self, deployed: Deployed) -> None:
        assert self.call(deployed, {"op": "ignored"}, name=deployed.custom) == {"handler": "custom"}

    def test_error_has_type_message_and_stack(self, deployed: Deployed) -> None:
        message = "boom: " + UNICODE
        response = deployed.engine.client.invoke(deployed.ops, json.dumps({"op": "fail", "message": message}).encode())
        assert response.status_code == 200 and response.headers.get("X-Easyfaas-Function-Error") == "Unhandled", response.text
        error = response.json()
        assert error["errorType"] == self.adapter.error_type
        assert message in error["errorMessage"]
        assert isinstance(error["stackTrace"], list) and all(isinstance(line, str) for line in error["stackTrace"])
        if self.adapter.stack_hint is not None:
            assert any(self.adapter.stack_hint in line for line in error["stackTrace"]), error["stackTrace"]
        assert self.call(deployed, {"after": "error"}) == {"after": "error"}

    def test_timeout_is_504_and_the_next_call_works(self, deployed: Deployed) -> None:
        self.skip_unsupported("timeout")
        with pytest.raises(ApiError) as info:
            deployed.engine.client.invoke(deployed.slow, json.dumps({"op": "sleep", "seconds": 30}).encode())
        assert info.value.status == 504, info.value.body
        assert info.value.body["error"]["errorType"] == "Timeout"
        assert self.call(deployed, {"op": "sleep", "seconds": 0}, name=deployed.slow) == {"slept": 0}

    def test_logs_are_attributed_to_their_call(self, deployed: Deployed) -> None:
        self.call(deployed, {"warm": True})  # the first call of an instance also carries what loading printed
        markers = [f"marker-{uuid.uuid4().hex[:8]}-{UNICODE[:7]}" for _ in range(3)]
        tails = []
        for marker in markers:
            response = deployed.engine.client.invoke(deployed.ops, json.dumps({"op": "log", "marker": marker}).encode(), log_tail=True)
            assert response.status_code == 200 and response.json() == {"logged": marker}, response.text
            tails.append(base64.b64decode(response.headers["X-Easyfaas-Log-Result"]).decode())
        for i, tail in enumerate(tails):
            assert markers[i] in tail
            assert not any(other in tail for j, other in enumerate(markers) if j != i), tails

    def test_environment_values_keep_equals_signs(self, deployed: Deployed) -> None:
        names = [*SUITE_ENV, "NOT_SET_ANYWHERE"]
        assert self.call(deployed, {"op": "env", "names": names}) == {**SUITE_ENV, "NOT_SET_ANYWHERE": None}

    def test_context_fields(self, deployed: Deployed) -> None:
        response = deployed.engine.client.invoke(deployed.ops, b'{"op": "context"}')
        assert response.status_code == 200, response.text
        context, fields = response.json(), self.adapter.context_fields
        assert fields <= set(context), f"missing context fields: {sorted(fields - set(context))}"
        if "request_id" in fields:
            assert context["request_id"] == response.headers["X-Easyfaas-Request-Id"]
        if "function_name" in fields:
            assert context["function_name"] == deployed.ops
        if "function_version" in fields:
            assert str(context["function_version"]) == deployed.ops_version
        if "memory_mb" in fields:
            assert int(context["memory_mb"]) == MEMORY_MB
        if "remaining_ms" in fields:
            assert 0 < int(context["remaining_ms"]) <= OPS_TIMEOUT * 1000
        if "arn" in fields:
            assert str(context["arn"]).endswith(f":function:{deployed.ops}:{deployed.ops_version}")
        if "log_stream" in fields:
            assert isinstance(context["log_stream"], str) and context["log_stream"]

    # -- the runner, at the protocol level -------------------------------------------------

    def test_runner_survives_probes_and_answers_ping(self, runner: RunnerProcess) -> None:
        for _ in range(3):
            runner.connect().close()
        kind, rid, _meta, _body = runner.request(Kind.PING, rid=41)
        assert (kind, rid) == (Kind.PONG, 41)

    def test_invoke_before_load_is_an_error(self, runner: RunnerProcess) -> None:
        kind, rid, meta, _body = runner.request(Kind.INVOKE, invoke_meta(), b"{}", rid=3)
        assert (kind, rid, meta["type"]) == (Kind.ERROR, 3, "NotLoaded")

    def test_second_load_is_refused(self, runner: RunnerProcess, tmp_path: Path) -> None:
        code = tmp_path / "code"
        code.mkdir()
        spec = self.adapter.write_function(code)
        kind, _rid, meta, _body = runner.request(Kind.LOAD, load_meta(code, spec))
        assert kind == Kind.LOADED, meta
        assert isinstance(meta.get("init_ms"), int | float)
        kind, _rid, meta, _body = runner.request(Kind.LOAD, load_meta(code, spec))
        assert (kind, meta["type"]) == (Kind.LOAD_ERROR, "ReloadRefused")
        # The first load still serves, on a fresh connection as the controller's would be.
        with runner.connect() as sock:
            kind, rid, meta, body = runner.request(Kind.INVOKE, invoke_meta(), b'{"still": "loaded"}', rid=7, sock=sock)
            assert (kind, rid, json.loads(body)) == (Kind.RESULT, 7, {"still": "loaded"}), meta
            kind, rid, meta, body = runner.request(Kind.INVOKE, invoke_meta("second"), b'"again"', rid=8, sock=sock)
            assert (kind, rid, json.loads(body)) == (Kind.RESULT, 8, "again"), meta

    def test_unknown_kind_closes_only_that_connection(self, runner: RunnerProcess) -> None:
        with runner.connect() as sock:
            wire.send_frame(sock, 200, 1)
            with pytest.raises((EOFError, ConnectionError)):
                wire.recv_frame(sock)
        assert runner.request(Kind.PING, rid=2)[0] == Kind.PONG
