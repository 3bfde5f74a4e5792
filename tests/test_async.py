"""Asynchronous calls end to end: durable accept, retries, event age, destinations, dead letters,
idempotency, fairness to synchronous callers, and no accepted call lost to ``kill -9``."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from easyfaas.client import ApiError
from easyfaas.testing import RunningEngine, sandbox_params, write_function

FINAL = ("success", "application_error", "developer_error", "platform_error", "expired")
ECHO = "def handler(event, context):\n    return {'event': event, 'request_id': context.request_id}\n"
FAIL = "def handler(event, context):\n    raise ValueError('boom')\n"
SLEEP = "import time\ndef handler(event, context):\n    time.sleep(event.get('s', 0.2) if isinstance(event, dict) else 0.2)\n    return 'slept'\n"
# Fails until the same instance has seen the call ``fail`` times (one instance: concurrency 1).
FLAKY = """
seen = {}
def handler(event, context):
    seen[context.request_id] = seen.get(context.request_id, 0) + 1
    if seen[context.request_id] <= event['fail']:
        raise RuntimeError(f"failure {seen[context.request_id]}")
    return {'runs': seen[context.request_id]}
"""


class Callbacks:
    """A callback receiver on loopback: records every POST (headers, body); can fail the first ones."""

    def __init__(self, fail_first: int = 0) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.fail_first = fail_first
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with owner.lock:
                    failing = owner.fail_first > 0
                    if failing:
                        owner.fail_first -= 1
                    else:
                        owner.received.append(({k: v for k, v in self.headers.items()}, body))
                self.send_response(503 if failing else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/done"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def call_ids(self) -> list[str]:
        with self.lock:
            return [headers["X-Call-Id"] for headers, _ in self.received]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def callbacks() -> Iterator[Callbacks]:
    receiver = Callbacks()
    yield receiver
    receiver.close()


def wait_for(predicate: Callable[[], Any], timeout: float = 60.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} not met in time"
        time.sleep(0.1)


def finished(engine: RunningEngine, activation_id: str, timeout: float = 60.0) -> dict[str, Any]:
    """The activation record once the call reached a final status."""
    def final() -> dict[str, Any] | None:
        record = engine.client.activation(activation_id)
        return record if record["status"] in FINAL else None

    return dict(wait_for(final, timeout, f"activation {activation_id} finished"))


def dead_letter(engine: RunningEngine, activation_id: str) -> dict[str, Any] | None:
    return next((row for row in engine.client.dead_letters() if row["id"] == activation_id), None)


def post_event(engine: RunningEngine, name: str, event: Any, **headers: str) -> httpx.Response:
    return httpx.post(
        f"{engine.endpoint}/v1/functions/{name}/invoke", content=json.dumps(event).encode(),
        headers={"Authorization": f"Bearer {engine.token}", "X-Easyfaas-Invocation-Type": "Event", **headers},
    )  # fmt: skip


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningEngine]:
    eng = RunningEngine(
        tmp_path_factory.mktemp("async"), pool={"python": 2},
        controller={"max_queue_wait": "2s", "keep_alive": "60s", "async_max_payload": "4Ki"},
    )  # fmt: skip
    eng.start()
    yield eng
    assert eng.stop() == 0, eng.log()


@pytest.fixture(scope="module")
def echo(engine: RunningEngine, tmp_path_factory: pytest.TempPathFactory) -> str:
    engine.deploy(write_function(tmp_path_factory.mktemp("echo"), ECHO), "echo")
    return "echo"


# -- accepting ---------------------------------------------------------------------------------


def test_an_event_call_is_answered_202_and_its_activation_shows_the_run(engine: RunningEngine, echo: str) -> None:
    response = post_event(engine, echo, {"n": 1})
    assert response.status_code == 202
    activation_id = response.json()["activation_id"]
    assert response.headers["X-Easyfaas-Activation-Id"] == activation_id
    record = finished(engine, activation_id)
    assert record["status"] == "success" and record["invocation_type"] == "Event" and record["trigger"] == "api"
    # Every attempt runs under the activation id: the handler sees it as its request id.
    assert json.loads(record["result"]) == {"event": {"n": 1}, "request_id": activation_id}
    [attempt] = record["attempts"]
    assert attempt["n"] == 1 and attempt["status"] == "success" and attempt["error"] is None
    assert attempt["duration_ms"] > 0 and attempt["start"] >= record["accepted_at"]


def test_async_query_parameter_and_client_both_queue(engine: RunningEngine, echo: str) -> None:
    response = httpx.post(f"{engine.endpoint}/v1/functions/{echo}/invoke?async=true", content=b'{"q": 1}',
                          headers={"Authorization": f"Bearer {engine.token}"})  # fmt: skip
    assert response.status_code == 202
    assert finished(engine, response.json()["activation_id"])["status"] == "success"
    assert finished(engine, engine.client.invoke_async(echo, b'{"c": 1}'))["status"] == "success"
    # The header says RequestResponse: a normal synchronous call.
    sync = post_event(engine, echo, {"s": 1}, **{"X-Easyfaas-Invocation-Type": "RequestResponse"})
    assert sync.status_code == 200 and sync.json()["event"] == {"s": 1}


def test_refusals_come_before_the_202(engine: RunningEngine, echo: str) -> None:
    missing = post_event(engine, "no-such-function", {})
    assert missing.status_code == 404 and missing.json()["error"]["errorType"] == "FunctionNotFound"
    too_big = post_event(engine, echo, {"pad": "x" * 5000})  # async_max_payload is 4Ki here
    assert too_big.status_code == 413 and too_big.json()["error"]["errorType"] == "PayloadTooLarge"
    not_json = httpx.post(f"{engine.endpoint}/v1/functions/{echo}/invoke", content=b"{nope",
                          headers={"Authorization": f"Bearer {engine.token}", "X-Easyfaas-Invocation-Type": "Event"})  # fmt: skip
    assert not_json.status_code == 400
    bad_type = post_event(engine, echo, {}, **{"X-Easyfaas-Invocation-Type": "DryRunMaybe"})
    assert bad_type.status_code == 400
    no_token = httpx.post(f"{engine.endpoint}/v1/functions/{echo}/invoke", headers={"X-Easyfaas-Invocation-Type": "Event"})
    assert no_token.status_code == 401


def test_a_queued_call_reads_queued_then_running_then_final(engine: RunningEngine, tmp_path: Path) -> None:
    engine.deploy(write_function(tmp_path / "one", SLEEP, concurrency=1), "one-at-a-time")
    first = engine.client.invoke_async("one-at-a-time", b'{"s": 3}')
    second = engine.client.invoke_async("one-at-a-time", b'{"s": 0.1}')
    wait_for(lambda: engine.client.activation(first)["status"] == "running", what="first running")
    # One instance, so the second waits in the queue while the first runs.
    assert engine.client.activation(second)["status"] == "queued"
    assert finished(engine, second)["status"] == "success"


def test_an_idempotency_key_returns_the_same_activation_and_runs_once(engine: RunningEngine, echo: str) -> None:
    key = f"order-{uuid.uuid4()}"
    ids = {post_event(engine, echo, {"k": 1}, **{"X-Easyfaas-Idempotency-Key": key}).json()["activation_id"] for _ in range(3)}
    assert len(ids) == 1
    [activation_id] = ids
    assert finished(engine, activation_id)["idempotency_key"] == key
    # Still the same call once it has run, within the window.
    again = post_event(engine, echo, {"k": 1}, **{"X-Easyfaas-Idempotency-Key": key}).json()["activation_id"]
    assert again == activation_id
    assert len([r for r in engine.client.activations(echo, limit=1000) if r["id"] == activation_id]) == 1
    other = post_event(engine, echo, {"k": 1}, **{"X-Easyfaas-Idempotency-Key": key + "-2"}).json()["activation_id"]
    assert other != activation_id


# -- retries, event age, dead letters --------------------------------------------------------


def test_a_function_that_fails_twice_succeeds_on_the_third_attempt_after_backoff(engine: RunningEngine, tmp_path: Path,
                                                                                  callbacks: Callbacks) -> None:  # fmt: skip
    policy = {"max_attempts": 4, "backoff": 0.3, "on_success": callbacks.url}
    engine.deploy(write_function(tmp_path / "flaky", FLAKY, concurrency=1, **{"async": policy}), "flaky")
    activation_id = engine.client.invoke_async("flaky", b'{"fail": 2}')
    record = finished(engine, activation_id)
    assert record["status"] == "success" and json.loads(record["result"]) == {"runs": 3}
    statuses = [a["status"] for a in record["attempts"]]
    assert statuses == ["application_error", "application_error", "success"]
    assert record["attempts"][0]["error"] == {"errorType": "RuntimeError", "errorMessage": "failure 1"}
    starts = [a["start"] for a in record["attempts"]]
    # Exponential backoff with "equal jitter": each wait is at least half of 0.3 s × 2^(n-1).
    assert starts[1] - starts[0] >= 0.15 and starts[2] - starts[1] >= 0.3
    assert dead_letter(engine, activation_id) is None
    [(headers, body)] = wait_for(lambda: list(callbacks.received), what="the success callback")
    assert headers["X-Call-Id"] == activation_id and headers["X-Easyfaas-Attempts"] == "3"
    assert json.loads(body) == {"runs": 3}


def test_retries_exhausted_dead_letter_and_failure_destination_function(engine: RunningEngine, tmp_path: Path, echo: str) -> None:
    policy = {"max_attempts": 2, "backoff": 0.1, "on_failure": echo}
    engine.deploy(write_function(tmp_path / "failing", FAIL, **{"async": policy}), "failing")
    activation_id = engine.client.invoke_async("failing", b'{"order": 42}')
    record = finished(engine, activation_id)
    assert record["status"] == "application_error" and record["dead_letter"] == "retries_exhausted"
    assert [a["n"] for a in record["attempts"]] == [1, 2]
    letter = dead_letter(engine, activation_id)
    assert letter is not None and letter["reason"] == "retries_exhausted" and letter["event"] == {"order": 42}
    assert len(letter["attempts"]) == 2

    # The destination function got a Lambda-shaped destination record as its event.
    destination = record["destination"]
    assert destination["delivered"] is True and destination["condition"] == "RetriesExhausted"
    sent = json.loads(finished(engine, destination["activation_id"])["result"])["event"]
    assert sent["version"] == "1.0" and sent["timestamp"].endswith("Z")
    assert sent["requestContext"]["requestId"] == activation_id
    assert sent["requestContext"]["condition"] == "RetriesExhausted"
    assert sent["requestContext"]["approximateInvokeCount"] == 2
    assert sent["requestContext"]["functionArn"].endswith(":function:failing:1")
    assert sent["requestPayload"] == {"order": 42}
    assert sent["responseContext"]["statusCode"] == 200 and sent["responseContext"]["functionError"] == "Unhandled"
    assert sent["responsePayload"]["errorType"] == "ValueError" and sent["responsePayload"]["errorMessage"] == "boom"


def test_dead_letters_can_be_redriven_after_a_fix_and_purged(engine: RunningEngine, tmp_path: Path) -> None:
    policy = {"max_attempts": 1}
    engine.deploy(write_function(tmp_path / "v1", FAIL, **{"async": policy}), "fixable")
    broken = [engine.client.invoke_async("fixable", json.dumps({"i": i}).encode()) for i in range(3)]
    for activation_id in broken:
        assert finished(engine, activation_id)["dead_letter"] == "retries_exhausted"
    assert {r["id"] for r in engine.client.dead_letters("fixable")} == set(broken)

    engine.deploy(write_function(tmp_path / "v2", ECHO, **{"async": policy}), "fixable")
    assert engine.client.redrive(broken[0]) == broken[0]
    record = wait_for(lambda: (r := engine.client.activation(broken[0]))["status"] == "success" and r, what="redriven run")
    assert [a["status"] for a in record["attempts"]] == ["application_error", "success"]
    assert json.loads(record["result"])["event"] == {"i": 0}
    with pytest.raises(ApiError) as not_dead:
        engine.client.redrive(broken[0])
    assert not_dead.value.status == 404

    assert engine.client.purge_dead_letters("fixable") == 2
    assert engine.client.dead_letters("fixable") == []


def test_a_call_older_than_its_max_event_age_is_given_up(engine: RunningEngine, tmp_path: Path, callbacks: Callbacks) -> None:
    policy = {"max_event_age": 0.5, "on_failure": callbacks.url}
    engine.deploy(write_function(tmp_path / "aging", SLEEP, concurrency=1, **{"async": policy}), "aging")
    first = engine.client.invoke_async("aging", b'{"s": 1.5}')
    late = engine.client.invoke_async("aging", b'{"s": 0}')  # waits behind the first for longer than 0.5 s
    assert finished(engine, first)["status"] == "success"
    record = finished(engine, late)
    assert record["status"] == "expired" and record["dead_letter"] == "event_age_exceeded" and record["attempts"] == []
    assert dead_letter(engine, late)["reason"] == "event_age_exceeded"  # type: ignore[index]
    [(headers, body)] = wait_for(lambda: list(callbacks.received), what="the failure callback")
    assert headers["X-Call-Id"] == late and headers["X-Easyfaas-Condition"] == "EventAgeExceeded"
    assert json.loads(body)["errorType"] == "EventAgeExceeded"


# -- destinations ---------------------------------------------------------------------------


def test_callback_url_gets_the_result_with_openfaas_headers_and_is_retried(engine: RunningEngine, tmp_path: Path) -> None:
    receiver = Callbacks(fail_first=2)  # 503 twice: the dispatcher tries again
    try:
        policy = {"on_success": receiver.url, "on_failure": receiver.url, "max_attempts": 1}
        engine.deploy(write_function(tmp_path / "cb", FLAKY, **{"async": policy}), "called-back")
        ok = engine.client.invoke_async("called-back", b'{"fail": 0}')
        failed = engine.client.invoke_async("called-back", b'{"fail": 1}')
        wait_for(lambda: len(receiver.received) == 2, what="both callbacks")
        by_id = {headers["X-Call-Id"]: (headers, body) for headers, body in receiver.received}
        headers, body = by_id[ok]
        assert headers["X-Function-Status"] == "200" and headers["X-Function-Name"] == "called-back"
        assert float(headers["X-Duration-Seconds"]) > 0 and headers["Content-Type"] == "application/json"
        assert json.loads(body) == {"runs": 1}
        headers, body = by_id[failed]
        assert headers["X-Function-Status"] == "502" and headers["X-Easyfaas-Condition"] == "RetriesExhausted"
        assert json.loads(body)["errorMessage"] == "failure 1"
        assert finished(engine, ok)["destination"]["delivered"] is True
    finally:
        receiver.close()


def test_an_unreachable_callback_does_not_change_the_outcome(engine: RunningEngine, tmp_path: Path) -> None:
    policy = {"on_success": "http://127.0.0.1:9/nowhere"}
    engine.deploy(write_function(tmp_path / "lost", ECHO, **{"async": policy}), "lonely")
    record = finished(engine, engine.client.invoke_async("lonely", b"{}"), timeout=120)
    assert record["status"] == "success"
    assert record["destination"]["delivered"] is False and "ClientConnectorError" in record["destination"]["error"]


# -- fairness --------------------------------------------------------------------------------


def test_a_burst_of_async_calls_does_not_starve_sync_callers(engine: RunningEngine, tmp_path: Path) -> None:
    engine.deploy(write_function(tmp_path / "shared", SLEEP, concurrency=2), "shared")
    burst = [engine.client.invoke_async("shared", b'{"s": 0.2}') for _ in range(30)]
    time.sleep(0.5)  # let the dispatcher take its share
    # One of the two instances is kept for synchronous calls: none is refused with 429.
    codes = [engine.call("shared", method="GET").status_code for _ in range(8)]
    assert codes == [200] * 8
    assert all(finished(engine, activation_id, timeout=120)["status"] == "success" for activation_id in burst)


def test_an_async_call_put_back_while_sync_calls_hold_the_function_does_not_lose_an_attempt(
    engine: RunningEngine, tmp_path: Path
) -> None:
    engine.deploy(write_function(tmp_path / "busy", SLEEP, concurrency=1, **{"async": {"max_attempts": 1}}), "busy")
    with ThreadPoolExecutor(1) as pool:
        sync = pool.submit(engine.client.invoke, "busy", b'{"s": 2.5}')  # longer than max_queue_wait (2 s)
        time.sleep(0.5)
        activation_id = engine.client.invoke_async("busy", b'{"s": 0}')
        assert sync.result().json() == "slept"
    record = finished(engine, activation_id)
    # With one attempt allowed, a deferral that counted would have dead-lettered it.
    assert record["status"] == "success" and len(record["attempts"]) == 1


# -- the CLI ---------------------------------------------------------------------------------


def test_cli_invoke_async_and_dlq(engine: RunningEngine, tmp_path: Path, echo: str) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "easyfaas.cli", "--endpoint", engine.endpoint, *args],
                              capture_output=True, text=True, timeout=120, env=engine.env)  # fmt: skip

    queued = cli("invoke", echo, "--async", "--data", '{"cli": true}', "--idempotency-key", "cli-1")
    assert queued.returncode == 0, queued.stderr
    activation_id = queued.stdout.strip()
    assert cli("invoke", echo, "--async", "--data", "{}", "--idempotency-key", "cli-1").stdout.strip() == activation_id
    assert json.loads(finished(engine, activation_id)["result"])["event"] == {"cli": True}

    engine.deploy(write_function(tmp_path / "doomed", FAIL, **{"async": {"max_attempts": 1}}), "doomed")
    doomed = cli("-o", "json", "invoke", "doomed", "--async").stdout
    doomed_id = json.loads(doomed)["activation_id"]
    finished(engine, doomed_id)
    listed = cli("dlq", "list", "--function", "doomed")
    assert listed.returncode == 0 and doomed_id in listed.stdout and "retries_exhausted" in listed.stdout
    assert cli("dlq", "redrive", doomed_id).returncode == 0
    # Redriven, it fails once more (one attempt allowed) and is a dead letter again, with both attempts.
    wait_for(lambda: (d := dead_letter(engine, doomed_id)) and len(d["attempts"]) == 2, what="dead again")
    assert cli("dlq", "redrive", "nonexistent").returncode == 3
    purged = cli("-o", "json", "dlq", "purge", "--function", "doomed", "--yes")
    assert purged.returncode == 0 and json.loads(purged.stdout) == {"purged": 1}


# -- durability --------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("sandbox", sandbox_params("process", "namespace"))
def test_kill_9_after_the_202s_loses_no_call(tmp_path: Path, sandbox: str, callbacks: Callbacks) -> None:
    """Hundreds of calls accepted and not yet run; every engine process SIGKILLed; a new engine
    on the same data directory runs them all. Clients that retry with their idempotency keys
    get the same activation ids, and the callbacks, deduplicated by X-Call-Id, count each
    call once (exactly-once effects on top of at-least-once delivery)."""
    n = 300
    policy = {"on_success": callbacks.url}
    first = RunningEngine(tmp_path, sandbox=sandbox, pool={"python": 1})
    first.start()
    try:
        first.deploy(write_function(tmp_path / "slow", SLEEP, concurrency=1, **{"async": policy}), "slow")
        keys = [f"job-{i}" for i in range(n)]
        with ThreadPoolExecutor(16) as pool:
            ids = list(pool.map(lambda k: first.client.invoke_async("slow", b'{"s": 0.05}', idempotency_key=k), keys))
        assert len(set(ids)) == n
    finally:
        first.kill()
    assert len(callbacks.call_ids()) < n  # most were still queued: the test means something

    second = RunningEngine(tmp_path, sandbox=sandbox, pool={"python": 1})
    second.start()
    try:
        # A client unsure whether its first tries landed sends them again, with the same keys.
        with ThreadPoolExecutor(16) as pool:
            again = list(pool.map(lambda k: second.client.invoke_async("slow", b'{"s": 0.05}', idempotency_key=k), keys))
        assert again == ids
        wait_for(lambda: set(callbacks.call_ids()) >= set(ids), timeout=240, what="every call's callback")
        received = callbacks.call_ids()
        assert set(received) == set(ids)
        # At least once: only a call in flight at the kill (one at a time here) may have run twice.
        assert len(received) - len(set(received)) <= 1
        records = [second.client.activation(i) for i in ids[::25]]
        assert all(r["status"] == "success" for r in records)
    finally:
        assert second.stop() == 0, second.log()
