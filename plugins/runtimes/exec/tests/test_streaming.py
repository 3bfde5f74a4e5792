"""Streamed calls of the exec runtime (issue #7): the runner spoken to with frames, then a real
engine in the namespace and process sandboxes, called over HTTP with bodies far larger than the
function's memory limit and than anything the controller may buffer.

Nothing here measures time: the memory bound is asserted on the controller's peak RSS.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import psutil
import pytest

from easyfaas.client import ApiError
from easyfaas.testing import RunningEngine, sandbox_params
from easyfaas.testing.conformance import RunnerProcess, invoke_meta
from easyfaas.wire import Kind, recv_frame, send_frame
from easyfaas_runtime_exec import ExecRuntime

REPO = Path(__file__).resolve().parents[4]
EXAMPLE = REPO / "examples" / "exec-stream"
MiB = 1 << 20
#: The big body: 8× the function's memory limit, far above what the controller could hold.
BIG = 256 * MiB
FUNCTION_MEMORY = 32  # MB


def executable(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


def http_head(query: str = "") -> dict[str, Any]:
    """A payload-2.0 event without its body, as the HTTP trigger sends for a streamed call."""
    return {
        "version": "2.0", "rawPath": "/", "rawQueryString": query, "headers": {"content-type": "text/x-test"},
        "requestContext": {"http": {"method": "POST", "path": "/"}}, "isBase64Encoded": False,
    }  # fmt: skip


def pattern_blocks(total: int, block: int = MiB) -> Iterator[bytes]:
    """``total`` bytes of pseudo-random data, one block at a time (never the whole body)."""
    seed = hashlib.sha256(b"easyfaas").digest()
    unit = b"".join(hashlib.sha256(seed + i.to_bytes(4, "big")).digest() for i in range(block // 32))
    for i in range(total // block):
        yield unit[i % 32 :] + unit[: i % 32]


def digest(total: int) -> str:
    h = hashlib.sha256()
    for block in pattern_blocks(total):
        h.update(block)
    return h.hexdigest()


# -- the runner, spoken to with frames --------------------------------------------------------


@pytest.fixture
def code(tmp_path: Path) -> Path:
    code = tmp_path / "code"
    executable(code / "sha.sh", "#!/bin/sh\nsha256sum | cut -d' ' -f1\n")
    executable(code / "upper.sh", "#!/bin/sh\nexec tr a-z A-Z\n")
    executable(code / "fail-first.sh", "#!/bin/sh\nhead -c 1000 >/dev/null\necho 'bad input' >&2\nexit 3\n")
    executable(code / "fail-later.sh", "#!/bin/sh\nhead -c 100000\necho 'broke halfway' >&2\nexit 4\n")
    executable(code / "env.sh", '#!/bin/sh\ncat >/dev/null\necho "$Http_Method $Http_Query $Http_Content_Type"\n')
    return code


@pytest.fixture
def runner(tmp_path: Path) -> Iterator[RunnerProcess]:
    proc = RunnerProcess(ExecRuntime(), tmp_path / "sandbox")
    yield proc
    proc.close()


def stream_call(sock: Any, rid: int, chunks: list[bytes] | Iterator[bytes], head: Any = None,
                end_meta: dict[str, Any] | None = None) -> list[tuple[int, dict[str, Any], bytes]]:  # fmt: skip
    """INVOKE_STREAM, the chunks and the final one; then every reply frame up to RESULT/ERROR."""
    send_frame(sock, Kind.INVOKE_STREAM, rid, invoke_meta(f"call-{rid}"), json.dumps(head).encode())
    replies: list[tuple[int, dict[str, Any], bytes]] = []
    collected = threading.Thread(target=lambda: replies.extend(read_reply(sock, rid)))
    collected.start()  # read while sending: the runner streams its output back meanwhile
    for chunk in chunks:
        send_frame(sock, Kind.CHUNK, rid, None, chunk)
    send_frame(sock, Kind.CHUNK, rid, end_meta, b"")
    collected.join(60)
    return replies


def read_reply(sock: Any, rid: int) -> Iterator[tuple[int, dict[str, Any], bytes]]:
    while True:
        kind, got, meta, body = recv_frame(sock)
        assert got == rid
        yield kind, meta, body
        if kind in (Kind.RESULT, Kind.ERROR):
            return


def test_runner_streams_the_body_through_the_process(runner: RunnerProcess, code: Path) -> None:
    assert runner.load(code, "upper.sh", {"content_type": "text/plain"})[0] == Kind.LOADED
    sock = runner.connect()
    data = [bytes([97 + i % 26]) * 100_000 for i in range(40)]  # 4 MB, more than any pipe holds
    replies = stream_call(sock, 1, data, http_head())
    kinds = [kind for kind, _, _ in replies]
    assert kinds[0] == Kind.HEAD and kinds[-1] == Kind.RESULT and set(kinds[1:-1]) == {Kind.CHUNK}
    assert replies[0][1] == {"status": 200, "headers": {"Content-Type": "text/plain"}}
    assert b"".join(body for kind, _, body in replies if kind == Kind.CHUNK) == b"".join(data).upper()
    assert replies[-1][2] == b"" and replies[-1][1]["ms"] > 0
    # The same connection serves plain calls as before, and further streamed ones.
    kind, _meta, body = runner.invoke("ab", rid=2, sock=sock)
    assert (kind, body) == (Kind.RESULT, b'"AB"')
    assert b"".join(b for k, _, b in stream_call(sock, 3, [b"xyz"]) if k == Kind.CHUNK) == b"XYZ"
    sock.close()


def test_runner_passes_the_http_head_as_watchdog_variables(runner: RunnerProcess, code: Path) -> None:
    assert runner.load(code, "env.sh")[0] == Kind.LOADED
    sock = runner.connect()
    replies = stream_call(sock, 1, [b"ignored"], http_head("a=1"))
    assert replies[0][1]["headers"] == {"Content-Type": "text/x-test"}  # the request's type, as the watchdog does
    assert replies[1][2] == b"POST a=1 text/x-test\n"
    sock.close()


def test_runner_failure_before_any_output_is_an_error_without_head(runner: RunnerProcess, code: Path) -> None:
    assert runner.load(code, "fail-first.sh")[0] == Kind.LOADED
    sock = runner.connect()
    replies = stream_call(sock, 1, [b"z" * 65536] * 32)  # 2 MiB the process never reads
    assert len(replies) == 1
    kind, meta, _ = replies[0]
    assert (kind, meta["type"]) == (Kind.ERROR, "Runtime.ExitError")
    assert meta["message"] == "fail-first.sh exited with status 3: bad input" and meta["logs"] == "bad input\n"
    assert stream_call(sock, 2, [b"ok"])[0][1]["type"] == "Runtime.ExitError"  # still serving
    sock.close()


def test_runner_failure_after_output_ends_the_reply_with_an_error(runner: RunnerProcess, code: Path) -> None:
    assert runner.load(code, "fail-later.sh")[0] == Kind.LOADED
    sock = runner.connect()
    replies = stream_call(sock, 1, [b"q" * 65536] * 16)
    assert replies[0][0] == Kind.HEAD and replies[-1][0] == Kind.ERROR
    assert sum(len(body) for kind, _, body in replies if kind == Kind.CHUNK) == 100_000
    assert replies[-1][1]["message"] == "fail-later.sh exited with status 4: broke halfway"
    sock.close()


def test_runner_stops_the_process_when_the_body_is_aborted(runner: RunnerProcess, code: Path) -> None:
    assert runner.load(code, "sha.sh")[0] == Kind.LOADED
    sock = runner.connect()
    replies = stream_call(sock, 1, [b"part of a body"], end_meta={"abort": True})
    assert [(kind, meta.get("type")) for kind, meta, _ in replies] == [(Kind.ERROR, "Runtime.Aborted")]
    replies = stream_call(sock, 2, [b"abc"])  # and the next call runs whole
    assert replies[1][2] == hashlib.sha256(b"abc").hexdigest().encode() + b"\n"
    sock.close()


# -- a real engine, over HTTP -----------------------------------------------------------------

FAIL_FIRST = "#!/bin/sh\nhead -c 1000000 >/dev/null\necho 'the input is wrong' >&2\nexit 3\n"
FAIL_LATER = "#!/bin/sh\nhead -c 3000000\necho 'broke halfway' >&2\nexit 4\n"
SLOW = "#!/bin/sh\nhead -c 1000000 >/dev/null\nsleep 60\n"


@pytest.fixture(scope="module", params=sandbox_params("namespace", "process"))
def engine(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningEngine]:
    base = tmp_path_factory.mktemp(f"st-{request.param}")
    eng = RunningEngine(base, sandbox=request.param, pool={"exec": 1}, extra={"runtimes": {"exec": {}, "python": {}}})
    eng.start()
    eng.deploy(EXAMPLE, memory=FUNCTION_MEMORY)
    functions = base / "functions"
    for name, script, timeout in (("fail-first", FAIL_FIRST, 60), ("fail-later", FAIL_LATER, 60), ("slow", SLOW, 2)):
        executable(functions / name / "run.sh", script)
        eng.deploy(functions / name, f"stream-{name}", runtime="exec", handler="run.sh", streaming=True,
                   memory=FUNCTION_MEMORY, timeout=timeout)  # fmt: skip
    yield eng
    assert eng.stop() == 0, eng.log()


def activation(eng: RunningEngine, request_id: str) -> dict[str, Any]:
    for _ in range(100):  # records are written by a background task
        try:
            return eng.client.activation(request_id)
        except ApiError as exc:
            if exc.status != 404:
                raise
        time.sleep(0.05)
    raise AssertionError(f"no activation record for {request_id}")


class PeakRss:
    """The controller's peak RSS during a block: the kernel's high-water mark (reset first,
    as root), and psutil samples as a floor where it cannot be reset."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.status = Path(f"/proc/{pid}/status")
        self.samples: list[int] = []
        self._stop = threading.Event()

    def _hwm(self) -> int:
        for line in self.status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return 0

    def __enter__(self) -> PeakRss:
        self.before = self.proc.memory_info().rss
        try:
            Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")  # reset VmHWM to the current RSS
            self.reset = True
        except OSError:
            self.reset = False
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.samples.append(self.proc.memory_info().rss)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max([*self.samples, self.proc.memory_info().rss, self._hwm() if self.reset else 0])

    @property
    def growth(self) -> int:
        return self.peak - self.before


def test_a_body_far_larger_than_memory_streams_through(engine: RunningEngine) -> None:
    controller = engine.children()["controller"]
    with PeakRss(controller) as rss:
        response = engine.call("exec-stream", content=pattern_blocks(BIG), timeout=600)
    assert response.status_code == 200, response.text
    assert response.text.strip() == digest(BIG)
    assert response.headers["Transfer-Encoding"] == "chunked"
    # Nothing on the way held the body: the controller grew by far less than it (it is 256 MiB;
    # the function itself could not have held it in 32 MB either).
    assert rss.growth < BIG // 8, f"controller RSS grew by {rss.growth / MiB:.1f} MiB"
    record = activation(engine, response.headers["X-Easyfaas-Request-Id"])
    assert (record["status"], record["trigger"], record["function"]) == ("success", "http", "exec-stream")
    assert record["duration_ms"] > 0


def test_the_reply_streams_back_while_the_body_streams_in(engine: RunningEngine) -> None:
    """``tr`` answers as it reads: 64 MiB go in and come back upper-cased, through a client
    that reads the reply while it sends (a full-duplex stream, never held whole anywhere)."""
    total = 64 * MiB
    unit = bytes(range(97, 123)) * 2521  # 65,546 lowercase bytes

    async def body() -> Any:
        for _ in range(total // len(unit)):
            yield unit

    async def call() -> tuple[int, int, str]:
        expected = hashlib.sha256()
        for _ in range(total // len(unit)):
            expected.update(unit.upper())
        got = hashlib.sha256()
        size = 0
        timeout = aiohttp.ClientTimeout(total=600)
        url = f"{engine.http_url}/function/exec-stream?op=upper"
        async with aiohttp.ClientSession(timeout=timeout) as session, session.post(url, data=body()) as response:
            async for piece in response.content.iter_chunked(MiB):
                got.update(piece)
                size += len(piece)
            assert got.hexdigest() == expected.hexdigest()
            return response.status, size, response.headers["Content-Type"]

    status, size, content_type = asyncio.run(call())
    assert (status, size, content_type) == (200, total // len(unit) * len(unit), "application/octet-stream")


def test_a_process_that_fails_before_any_output_is_a_function_error(engine: RunningEngine) -> None:
    response = engine.call("stream-fail-first", content=pattern_blocks(8 * MiB), timeout=120)
    assert response.status_code == 502, response.text
    error = response.json()["error"]
    assert error["errorType"] == "Runtime.ExitError"
    assert error["errorMessage"] == "run.sh exited with status 3: the input is wrong"
    record = activation(engine, response.headers["X-Easyfaas-Request-Id"])
    assert record["status"] == "application_error" and record["logs"] == "the input is wrong\n"


def test_a_process_that_fails_mid_stream_cuts_the_reply_and_is_recorded(engine: RunningEngine) -> None:
    rid = os.urandom(8).hex()
    received = 0
    # The connection is cut without the terminating chunk: the client knows the reply is
    # incomplete ("incomplete chunked read", or a reset while it still sends).
    with pytest.raises(httpx.TransportError), engine.http.stream(
        "POST", "/function/stream-fail-later", content=pattern_blocks(16 * MiB), headers={"X-Easyfaas-Request-Id": rid},
        timeout=120,
    ) as response:  # fmt: skip
        assert response.status_code == 200
        for piece in response.iter_bytes():
            received += len(piece)
    assert received <= 3_000_000
    record = activation(engine, rid)
    assert record["status"] == "application_error"
    assert record["error"]["errorMessage"] == "run.sh exited with status 4: broke halfway"
    assert record["logs"] == "broke halfway\n"


def test_a_streamed_call_that_times_out_is_killed_and_the_engine_serves_on(engine: RunningEngine) -> None:
    response = engine.call("stream-slow", content=pattern_blocks(4 * MiB), timeout=120)
    assert response.status_code == 504, response.text
    assert response.json()["error"]["errorType"] == "Timeout"
    record = activation(engine, response.headers["X-Easyfaas-Request-Id"])
    assert record["status"] == "developer_error" and record["error"]["errorType"] == "Timeout"
    # The timed-out instance was killed; the next calls get a fresh one.
    again = engine.call("exec-stream", params={"op": "count"}, content=pattern_blocks(8 * MiB), timeout=120)
    assert (again.status_code, again.text.strip()) == (200, str(8 * MiB))
    instances = engine.client.instances()
    assert not [i for i in instances if i["function"] == "stream-slow" and i["state"] != "dead"]


def test_streaming_functions_still_take_buffered_calls(engine: RunningEngine) -> None:
    # The management API's invoke is not streamed: the event is stdin, as for any exec function.
    response = engine.client.invoke("exec-stream", b'"abc"')
    assert response.status_code == 200 and "X-Easyfaas-Function-Error" not in response.headers
    assert response.content.decode().strip('"\n') == hashlib.sha256(b'"abc"').hexdigest()


def test_streaming_needs_a_runtime_that_streams_and_one_call_per_instance(
    engine: RunningEngine, tmp_path: Path
) -> None:
    (tmp_path / "py").mkdir()
    (tmp_path / "py" / "handler.py").write_text("def handler(event, context):\n    return 1\n")
    with pytest.raises(ApiError, match="cannot stream bodies") as refused:
        engine.deploy(tmp_path / "py", "py-stream", runtime="python", handler="handler.handler", streaming=True)
    assert refused.value.status == 400
    with pytest.raises(ApiError, match="instance_concurrency must be 1"):
        engine.deploy(EXAMPLE, "stream-parallel", instance_concurrency=4)
