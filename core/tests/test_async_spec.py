"""Async calls in core, without an engine: the spec's ``async`` policy and ``schedules``, the
profile's ``queue`` section, the dispatcher's capacity, backoff and destination event."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from easyfaas.controller.dispatcher import async_capacity, backoff_delay, destination_event
from easyfaas.errors import FunctionError, FunctionTimeoutError, ProfileError
from easyfaas.interfaces import InvocationResult, QueuedCall
from easyfaas.models import AsyncPolicy, FunctionSpec, FunctionVersion
from easyfaas.profile import load_profile


def test_the_async_policy_is_written_async_and_has_lambda_like_defaults() -> None:
    spec = FunctionSpec.model_validate({"name": "f", "async": {"max_attempts": 5, "on_failure": "https://h.example/x"}})
    assert spec.async_.max_attempts == 5 and spec.async_.on_failure == "https://h.example/x"
    assert spec.model_dump(mode="json")["async"]["max_attempts"] == 5  # shown as written
    assert FunctionSpec.model_validate(spec.model_dump(mode="json")) == spec  # and read back (code stores)
    default = FunctionSpec(name="g").async_
    assert (default.max_attempts, default.max_event_age, default.on_success) == (3, 21600.0, None)


@pytest.mark.parametrize("policy", [{"max_attempts": 0}, {"on_success": "ftp://x"}, {"on_failure": "not a name!"},
                                    {"backoff": -1}, {"retries": 2}])  # fmt: skip
def test_bad_async_policies_are_refused(policy: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        FunctionSpec.model_validate({"name": "f", "async": policy})


def test_schedules_check_their_shape_and_time_zone() -> None:
    spec = FunctionSpec.model_validate({"name": "f", "schedules": [
        {"cron": "*/5  * * * * *", "timezone": "Europe/Paris", "event": {"k": 1}}, {"cron": "@hourly"}]})  # fmt: skip
    assert spec.schedules[0].cron == "*/5 * * * * *" and spec.schedules[1].timezone == "UTC"
    for bad in ({"cron": "* * *"}, {"cron": "* * * * * * *"}, {"cron": "* * * * *", "timezone": "Mars/Base"},
                {"cron": "* * * * *", "timezone": "x" * 300}, {"cron": "* * * * *", "every": 1}):  # fmt: skip
        with pytest.raises(ValidationError):
            FunctionSpec.model_validate({"name": "f", "schedules": [bad]})


def test_the_queue_section_names_exactly_one_plugin(tmp_path: Path) -> None:
    assert load_profile().queue == ("sqlite", {})
    assert "cron" in load_profile().triggers
    profile = load_profile(text="queue: {sqlite: {path: /tmp/q.db}}\n")
    assert profile.queue == ("sqlite", {"path": "/tmp/q.db"})
    with pytest.raises(ProfileError, match=r"<profile>:2: queue: name exactly one async queue"):
        load_profile(text="node: {name: a}\nqueue: {sqlite: {}, nats: {}}\n")
    controller = load_profile(text="controller: {async_max_payload: 256Ki, idempotency_window: 10m}\n").model.controller
    assert (controller.async_max_payload, controller.idempotency_window) == (256 * 1024, 600.0)


def test_async_capacity_leaves_one_instance_to_synchronous_callers() -> None:
    assert async_capacity(FunctionSpec(name="f", concurrency=1)) == 1
    assert async_capacity(FunctionSpec(name="f", concurrency=2)) == 1
    assert async_capacity(FunctionSpec(name="f", concurrency=10)) == 9
    assert async_capacity(FunctionSpec(name="f", concurrency=3, instance_concurrency=4)) == 8
    assert async_capacity(FunctionSpec(name="f", concurrency=1, instance_concurrency=4)) == 3


def test_backoff_doubles_with_equal_jitter_and_is_capped() -> None:
    policy = AsyncPolicy(backoff=2, max_backoff=5)
    for attempt, ceiling in ((1, 2), (2, 4), (3, 5), (10, 5)):
        delays = [backoff_delay(policy, attempt) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)


def _fv() -> FunctionVersion:
    return FunctionVersion(spec=FunctionSpec(name="resize"), version="3", code_dir="/x", code_sha256="", created_at=0)


def test_the_destination_event_has_lambdas_shape() -> None:
    call = QueuedCall(id="a1", function="resize", event=b'{"img": "a.png"}')
    history = [{"n": 1}, {"n": 2}]
    ok = destination_event(call, _fv(), "Success", history, InvocationResult(request_id="a1", body=b'{"w": 10}'), None)
    assert ok["requestContext"] == {"requestId": "a1", "functionArn": "arn:aws:lambda:easyfaas:000000000000:function:resize:3",
                                    "condition": "Success", "approximateInvokeCount": 2}  # fmt: skip
    assert ok["requestPayload"] == {"img": "a.png"} and ok["responsePayload"] == {"w": 10}
    assert ok["responseContext"] == {"statusCode": 200, "executedVersion": "3"} and ok["version"] == "1.0"
    error = FunctionError("boom", details={"errorType": "ValueError", "stackTrace": ["..."], "logs": "x"})
    failed = destination_event(call, _fv(), "RetriesExhausted", history, None, error)
    assert failed["responseContext"] == {"statusCode": 200, "executedVersion": "3", "functionError": "Unhandled"}
    assert failed["responsePayload"] == {"errorType": "ValueError", "errorMessage": "boom", "stackTrace": ["..."]}
    timeout = destination_event(call, _fv(), "RetriesExhausted", history, None, FunctionTimeoutError("late"))
    assert timeout["responseContext"]["statusCode"] == 504
    expired = destination_event(call, _fv(), "EventAgeExceeded", [], None, None)
    assert expired["responseContext"]["statusCode"] is None and expired["responsePayload"] is None
    assert json.loads(json.dumps(failed)) == failed  # JSON all the way
