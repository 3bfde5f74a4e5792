"""The engine end to end: both processes, real sockets, deploy, call over HTTP and the API."""

from __future__ import annotations

import base64
import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from easyfaas.client import ApiError
from easyfaas.testing import RunningEngine, write_function

REPO = Path(__file__).resolve().parent.parent

ECHO = '''
import base64, json, os, time

def handler(event, context):
    path = event.get("rawPath", "")
    if path == "/shaped":
        return {"statusCode": 201, "headers": {"X-Custom": "yes", "Content-Type": "text/plain"},
                "body": "made", "cookies": ["a=1", "b=2"]}
    if path == "/binary":
        return {"statusCode": 200, "isBase64Encoded": True, "body": base64.b64encode(bytes(range(256))).decode(),
                "headers": {"Content-Type": "application/octet-stream"}}
    if path == "/raw":
        return b"\\x00raw bytes\\xff"
    if path == "/fail":
        raise KeyError("missing thing")
    if path == "/sleep":
        time.sleep(float(event["queryStringParameters"]["s"]))
        return {"slept": True}
    if path == "/crash":
        os._exit(9)
    return {"event": event, "fn": context.function_name, "remaining": context.get_remaining_time_in_millis()}
'''


@pytest.fixture(scope="module")
def echo(engine: RunningEngine, tmp_path_factory: pytest.TempPathFactory) -> str:
    name = "echo"
    engine.deploy(write_function(tmp_path_factory.mktemp("echo"), ECHO, timeout=2), name)
    return name


def test_readme_example_hello(engine: RunningEngine) -> None:
    fv = engine.deploy(REPO / "examples" / "hello")
    assert fv["name"] == "hello" and fv["runtime"] == "python"
    response = engine.call("hello", "?name=you", method="GET")
    assert response.status_code == 200
    body = response.json()
    assert body["hello"] == "you" and body["function"] == "hello"
    assert response.headers["X-Easyfaas-Request-Id"] == body["request_id"]


def test_http_event_has_the_function_url_shape(engine: RunningEngine, echo: str) -> None:
    response = engine.call(echo, "/a/b?x=1&x=2&y=z", content=b'{"k": "v"}', headers={"Content-Type": "application/json", "Cookie": "c=1; d=2"})
    assert response.status_code == 200
    event = response.json()["event"]
    assert event["version"] == "2.0"
    assert event["rawPath"] == "/a/b" and event["rawQueryString"] == "x=1&x=2&y=z"
    assert event["queryStringParameters"] == {"x": "1,2", "y": "z"}
    assert event["requestContext"]["http"]["method"] == "POST"
    assert event["headers"]["content-type"] == "application/json"
    assert event["cookies"] == ["c=1", "d=2"]
    assert event["body"] == '{"k": "v"}' and event["isBase64Encoded"] is False


def test_binary_request_body_arrives_base64_encoded(engine: RunningEngine, echo: str) -> None:
    payload = bytes(range(256))
    event = engine.call(echo, "/bin", content=payload, headers={"Content-Type": "application/octet-stream"}).json()["event"]
    assert event["isBase64Encoded"] is True and base64.b64decode(event["body"]) == payload


def test_shaped_response_sets_status_headers_and_cookies(engine: RunningEngine, echo: str) -> None:
    response = engine.call(echo, "/shaped", method="GET")
    assert response.status_code == 201
    assert response.text == "made"
    assert response.headers["X-Custom"] == "yes"
    assert response.headers.get_list("set-cookie") == ["a=1", "b=2"]


def test_binary_responses(engine: RunningEngine, echo: str) -> None:
    assert engine.call(echo, "/binary", method="GET").content == bytes(range(256))
    raw = engine.call(echo, "/raw", method="GET")
    assert raw.content == b"\x00raw bytes\xff" and raw.headers["content-type"] == "application/octet-stream"


def test_function_error_is_502_with_type_and_message_and_the_next_call_works(engine: RunningEngine, echo: str) -> None:
    response = engine.call(echo, "/fail", method="GET")
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["errorType"] == "KeyError" and "missing thing" in error["errorMessage"]
    assert error["status"] == "application_error"
    assert any("handler.py" in line for line in error["stackTrace"])
    assert engine.call(echo, "/ok", method="GET").status_code == 200


def test_unknown_function_is_404_json(engine: RunningEngine) -> None:
    response = engine.call("no-such-function", method="GET")
    assert response.status_code == 404
    assert response.json()["error"]["errorType"] == "FunctionNotFound"


def test_timeout_is_504_and_the_engine_keeps_serving(engine: RunningEngine, echo: str) -> None:
    response = engine.call(echo, "/sleep?s=30", method="GET")
    assert response.status_code == 504
    assert response.json()["error"]["errorType"] == "Timeout"
    assert engine.call(echo, "/sleep?s=0", method="GET").json() == {"slept": True}


def test_crash_is_a_developer_error_and_the_engine_keeps_serving(engine: RunningEngine, echo: str) -> None:
    response = engine.call(echo, "/crash", method="GET")
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["errorType"] == "InstanceCrashed" and error["status"] == "developer_error"
    assert "exit" in error["errorMessage"] or "code 9" in error["errorMessage"]
    assert engine.call(echo, "/ok", method="GET").status_code == 200


def test_context_remaining_time_tracks_the_timeout(engine: RunningEngine, echo: str) -> None:
    remaining = engine.call(echo, method="GET").json()["remaining"]
    assert 1500 < remaining <= 2000  # the function's timeout is 2 s


def test_parallel_calls_all_succeed(engine: RunningEngine, echo: str) -> None:
    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(lambda i: engine.call(echo, f"/p{i}", method="GET").status_code, range(200)))
    assert codes == [200] * 200


def test_warm_instances_are_reused(engine: RunningEngine, tmp_path: Path) -> None:
    src = "import os\nN = 0\ndef handler(e, c):\n    global N\n    N += 1\n    return [os.getpid(), N]\n"
    engine.deploy(write_function(tmp_path / "counter", src), "counter")
    results = [engine.call("counter", method="GET").json() for _ in range(5)]
    assert len({pid for pid, _ in results}) == 1
    assert [n for _, n in results] == [1, 2, 3, 4, 5]


def test_new_version_takes_over_at_once(engine: RunningEngine, tmp_path: Path) -> None:
    name = f"ver-{uuid.uuid4().hex[:6]}"
    engine.deploy(write_function(tmp_path / "v1", "def handler(e, c):\n    return 'one'\n"), name)
    assert engine.call(name, method="GET").json() == "one"
    fv = engine.deploy(write_function(tmp_path / "v2", "def handler(e, c):\n    return 'two'\n"), name)
    assert fv["version"] == "2"
    assert [engine.call(name, method="GET").json() for _ in range(3)] == ["two"] * 3
    versions = engine.client.versions(name)
    assert [v["version"] for v in versions] == ["1", "2"]


def test_bad_handler_is_refused_at_deploy_with_the_import_error(engine: RunningEngine, tmp_path: Path) -> None:
    directory = write_function(tmp_path / "bad", "import does_not_exist_anywhere\ndef handler(e, c):\n    return 1\n")
    with pytest.raises(ApiError) as info:
        engine.deploy(directory, "badimport")
    assert info.value.status == 400
    assert "does_not_exist_anywhere" in str(info.value)
    with pytest.raises(ApiError) as missing:
        engine.client.get("badimport")
    assert missing.value.status == 404


def test_missing_handler_module_is_refused(engine: RunningEngine, tmp_path: Path) -> None:
    directory = write_function(tmp_path / "nomod", "def handler(e, c):\n    return 1\n")
    with pytest.raises(ApiError, match="module 'elsewhere' not found"):
        engine.deploy(directory, "nomod", handler="elsewhere.handler")


def test_invalid_spec_is_refused_with_the_field(engine: RunningEngine, tmp_path: Path) -> None:
    directory = write_function(tmp_path / "spec", "def handler(e, c):\n    return 1\n")
    with pytest.raises(ApiError) as info:
        engine.deploy(directory, "badspec", memory=1)
    assert info.value.status == 400 and "memory" in str(info.value)


def test_api_invoke_function_error_is_200_with_header(engine: RunningEngine, echo: str) -> None:
    response = engine.client.invoke(echo, json.dumps({"rawPath": "/fail"}).encode())
    assert response.status_code == 200
    assert response.headers["X-Easyfaas-Function-Error"] == "Unhandled"
    assert response.json()["errorType"] == "KeyError"


def test_delete_then_404(engine: RunningEngine, tmp_path: Path) -> None:
    engine.deploy(write_function(tmp_path / "gone", "def handler(e, c):\n    return 1\n"), "gone")
    assert engine.call("gone", method="GET").status_code == 200
    engine.client.delete("gone")
    assert engine.call("gone", method="GET").status_code == 404
    assert "gone" not in [f["name"] for f in engine.client.list()]


def test_activation_records_are_kept(engine: RunningEngine, echo: str) -> None:
    rid = uuid.uuid4().hex
    engine.call(echo, "/recorded", method="GET", headers={"X-Easyfaas-Request-Id": rid})
    records = {r["id"]: r for r in engine.client.activations(echo, limit=500)}
    assert records[rid]["status"] == "success" and records[rid]["function"] == echo
    assert records[rid]["duration_ms"] > 0
    # The runner reports its own time; the engine's overhead is what remains.
    assert 0 < records[rid]["handler_ms"] < records[rid]["duration_ms"]


def test_instances_are_listed_with_states(engine: RunningEngine, echo: str) -> None:
    engine.call(echo, method="GET")
    rows = [r for r in engine.client.instances() if r["function"] == echo]
    assert rows and all(r["state"] in ("idle", "busy") for r in rows)


def test_metrics_count_calls(engine: RunningEngine, echo: str) -> None:
    import httpx

    engine.call(echo, method="GET")
    text = httpx.get(f"{engine.endpoint}/metrics", headers={"Authorization": f"Bearer {engine.token}"}).text
    assert f'easyfaas_calls_total{{function="{echo}",status="success"}}' in text
    assert f'easyfaas_cold_starts_total{{function="{echo}"}}' in text


def test_aliases_route_calls_and_split_traffic(engine: RunningEngine, tmp_path: Path) -> None:
    name = f"aliased-{uuid.uuid4().hex[:6]}"
    for n in (1, 2):
        engine.deploy(write_function(tmp_path / f"v{n}", f"def handler(e, c):\n    return {n}\n"), name)
    api = engine.client._http
    assert api.put(f"/v1/functions/{name}/aliases/stable", json={"version": "1"}).status_code == 200
    assert engine.client.invoke(name, b"{}").json() == 2
    assert api.post(f"/v1/functions/{name}/invoke", params={"qualifier": "stable"}, content=b"{}").json() == 1
    assert api.post(f"/v1/functions/{name}/invoke", params={"qualifier": "1"}, content=b"{}").json() == 1
    api.put(f"/v1/functions/{name}/aliases/canary", json={"version": "1", "additional_version": "2", "weight": 0.5})
    seen = {api.post(f"/v1/functions/{name}/invoke", params={"qualifier": "canary"}, content=b"{}").json() for _ in range(40)}
    assert seen == {1, 2}  # 40 draws at 50 %: both versions (odds of missing one: 2 in 10^12)
    bad = api.put(f"/v1/functions/{name}/aliases/broken", json={"version": "9"})
    assert bad.status_code == 404
    assert api.put(f"/v1/functions/{name}/aliases/w", json={"version": "1", "weight": 2}).status_code == 400
    assert api.delete(f"/v1/functions/{name}/aliases/stable").status_code == 204
    assert api.post(f"/v1/functions/{name}/invoke", params={"qualifier": "stable"}, content=b"{}").status_code == 404


def test_update_config_makes_a_new_version_with_the_same_code(engine: RunningEngine, tmp_path: Path) -> None:
    name = f"conf-{uuid.uuid4().hex[:6]}"
    engine.deploy(write_function(tmp_path / "c", "import os\ndef handler(e, c):\n    return [os.environ.get('MODE'), c.memory_limit_in_mb]\n"), name)
    api = engine.client._http
    response = api.patch(f"/v1/functions/{name}", json={"env": {"MODE": "fast"}, "memory": 256})
    assert response.status_code == 200 and response.json()["version"] == "2"
    assert engine.client.invoke(name, b"{}").json() == ["fast", 256]
    assert api.patch(f"/v1/functions/{name}", json={"memory": 1}).status_code == 400


def test_out_of_memory_is_a_developer_error_naming_the_limit(engine: RunningEngine, tmp_path: Path) -> None:
    if engine.sandbox == "process":
        pytest.skip("the process sandbox enforces no memory limit (development only)")
    src = "def handler(e, c):\n    hog = [bytearray(1 << 20) for _ in range(400)]\n    return len(hog)\n"
    engine.deploy(write_function(tmp_path / "hog", src, memory=64), "hog")
    response = engine.call("hog", method="GET")
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["errorType"] == "InstanceCrashed" and error["status"] == "developer_error"
    assert "64 MB" in error["errorMessage"] and error["cause"] == "OutOfMemory"
    assert engine.call(echo_name(engine, tmp_path), method="GET").status_code == 200


def echo_name(engine: RunningEngine, tmp_path: Path) -> str:
    engine.deploy(write_function(tmp_path / "after", "def handler(e, c):\n    return 'alive'\n"), "after-oom")
    return "after-oom"
