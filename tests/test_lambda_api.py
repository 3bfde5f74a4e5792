"""The Lambda-compatible API driven by the real AWS SDK (boto3), SigV4-signed with engine-issued keys."""

from __future__ import annotations

import base64
import io
import json
import uuid
import zipfile
from collections.abc import Iterator
from typing import Any

import boto3
import botocore.exceptions
import httpx
import pytest
from botocore.config import Config

from easyfaas.testing import RunningEngine

CODE = '''
import json, os

def lambda_handler(event, context):
    if event.get("fail"):
        raise ValueError("asked to fail")
    print("log line for", context.aws_request_id)
    return {"got": event, "fn": context.function_name, "ver": context.function_version,
            "arn": context.invoked_function_arn, "mem": context.memory_limit_in_mb,
            "env": os.environ.get("STAGE"), "log_group": context.log_group_name,
            "remaining": context.get_remaining_time_in_millis() > 0}
'''


def zipped(source: str, name: str = "lambda_function.py") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(name, source)
    return buf.getvalue()


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningEngine]:
    with RunningEngine(tmp_path_factory.mktemp("lambda-api")) as eng:
        yield eng


def client_for(engine: RunningEngine, **override: str) -> Any:
    keys = json.loads((engine.data_dir / "data" / "access-key.json").read_text())
    return boto3.client(
        "lambda",
        endpoint_url=engine.endpoint,
        region_name="us-east-1",
        aws_access_key_id=override.get("key", keys["access_key_id"]),
        aws_secret_access_key=override.get("secret", keys["secret_access_key"]),
        config=Config(retries={"max_attempts": 1}),
    )


@pytest.fixture(scope="module")
def lam(engine: RunningEngine) -> Any:
    return client_for(engine)


@pytest.fixture
def fn(lam: Any) -> str:
    name = f"lam-{uuid.uuid4().hex[:8]}"
    created = lam.create_function(
        FunctionName=name, Runtime="python3.11", Role="arn:aws:iam::123456789012:role/x",
        Handler="lambda_function.lambda_handler", Code={"ZipFile": zipped(CODE)}, MemorySize=256, Timeout=5,
        Environment={"Variables": {"STAGE": "test"}},
    )  # fmt: skip
    assert created["FunctionName"] == name and created["Runtime"] == "python3.11"
    return name


def test_create_get_list_and_invoke(lam: Any, fn: str) -> None:
    config = lam.get_function(FunctionName=fn)["Configuration"]
    assert (config["MemorySize"], config["Timeout"], config["Handler"]) == (256, 5, "lambda_function.lambda_handler")
    assert config["Environment"]["Variables"] == {"STAGE": "test"}
    assert fn in [f["FunctionName"] for f in lam.list_functions()["Functions"]]
    response = lam.invoke(FunctionName=fn, Payload=json.dumps({"k": "v"}), LogType="Tail")
    assert response["StatusCode"] == 200 and "FunctionError" not in response
    result = json.loads(response["Payload"].read())
    assert result["got"] == {"k": "v"} and result["fn"] == fn and result["mem"] == 256 and result["env"] == "test"
    assert result["arn"].endswith(f":function:{fn}:1") and result["log_group"] and result["remaining"]
    assert "log line for" in base64.b64decode(response["LogResult"]).decode()
    assert response["ExecutedVersion"] == "1"


def test_function_error_is_reported_like_lambda(lam: Any, fn: str) -> None:
    response = lam.invoke(FunctionName=fn, Payload=json.dumps({"fail": True}))
    assert response["StatusCode"] == 200 and response["FunctionError"] == "Unhandled"
    error = json.loads(response["Payload"].read())
    assert error["errorType"] == "ValueError" and error["errorMessage"] == "asked to fail"
    assert error["stackTrace"]


def test_update_code_configuration_versions_and_aliases(lam: Any, fn: str) -> None:
    lam.update_function_code(FunctionName=fn, ZipFile=zipped("def lambda_handler(e, c):\n    return 'v2'\n"))
    assert json.loads(lam.invoke(FunctionName=fn)["Payload"].read()) == "v2"
    updated = lam.update_function_configuration(FunctionName=fn, MemorySize=512, Timeout=9)
    assert (updated["MemorySize"], updated["Timeout"]) == (512, 9)
    published = lam.publish_version(FunctionName=fn)
    assert published["Version"] == "3"
    alias = lam.create_alias(FunctionName=fn, Name="live", FunctionVersion="1")
    assert alias["FunctionVersion"] == "1" and alias["AliasArn"].endswith(f"{fn}:live")
    assert json.loads(lam.invoke(FunctionName=fn, Qualifier="live", Payload=b"{}")["Payload"].read())["got"] == {}
    lam.update_alias(FunctionName=fn, Name="live", FunctionVersion="2",
                     RoutingConfig={"AdditionalVersionWeights": {"3": 0.25}})  # fmt: skip
    got = lam.get_alias(FunctionName=fn, Name="live")
    assert got["FunctionVersion"] == "2" and got["RoutingConfig"]["AdditionalVersionWeights"] == {"3": 0.25}
    with pytest.raises(lam.exceptions.ResourceConflictException):
        lam.create_alias(FunctionName=fn, Name="live", FunctionVersion="1")


def test_dry_run_and_not_found(lam: Any, fn: str) -> None:
    assert lam.invoke(FunctionName=fn, InvocationType="DryRun")["StatusCode"] == 204
    with pytest.raises(lam.exceptions.ResourceNotFoundException):
        lam.invoke(FunctionName="does-not-exist")
    with pytest.raises(lam.exceptions.ResourceNotFoundException):
        lam.get_function(FunctionName="does-not-exist")


def test_create_twice_is_a_conflict(lam: Any, fn: str) -> None:
    with pytest.raises(lam.exceptions.ResourceConflictException):
        lam.create_function(FunctionName=fn, Runtime="python3.11", Role="r", Handler="lambda_function.lambda_handler",
                            Code={"ZipFile": zipped(CODE)})  # fmt: skip


def test_bad_handler_is_refused_at_create(lam: Any) -> None:
    with pytest.raises(lam.exceptions.InvalidParameterValueException) as info:
        lam.create_function(FunctionName=f"bad-{uuid.uuid4().hex[:6]}", Runtime="python3.11", Role="r",
                            Handler="lambda_function.lambda_handler", Code={"ZipFile": zipped("import nope_nope\n")})  # fmt: skip
    assert "nope_nope" in str(info.value)


def test_payload_over_the_limit_is_413(lam: Any, fn: str) -> None:
    with pytest.raises(lam.exceptions.RequestTooLargeException):
        lam.invoke(FunctionName=fn, Payload=json.dumps({"x": "a" * (7 * 2**20)}))


def test_delete(lam: Any, fn: str) -> None:
    lam.delete_function(FunctionName=fn)
    with pytest.raises(lam.exceptions.ResourceNotFoundException):
        lam.get_function(FunctionName=fn)


def test_wrong_secret_or_key_or_no_signature_is_refused(engine: RunningEngine, fn: str) -> None:
    with pytest.raises(botocore.exceptions.ClientError) as info:
        client_for(engine, secret="not-the-secret").list_functions()
    assert info.value.response["Error"]["Code"] == "InvalidSignatureException"
    with pytest.raises(botocore.exceptions.ClientError) as info:
        client_for(engine, key="AKIAUNKNOWN").list_functions()
    assert info.value.response["Error"]["Code"] == "UnrecognizedClientException"
    unsigned = httpx.post(f"{engine.endpoint}/2015-03-31/functions/{fn}/invocations", content=b"{}")
    assert unsigned.status_code == 403


def test_tampered_body_is_refused(engine: RunningEngine, lam: Any, fn: str) -> None:
    # Sign one payload, send another: the signature covers the body.
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    keys = json.loads((engine.data_dir / "data" / "access-key.json").read_text())
    url = f"{engine.endpoint}/2015-03-31/functions/{fn}/invocations"
    request = AWSRequest(method="POST", url=url, data=b'{"a": 1}')
    SigV4Auth(Credentials(keys["access_key_id"], keys["secret_access_key"]), "lambda", "us-east-1").add_auth(request)
    headers = dict(request.headers.items())
    assert httpx.post(url, content=b'{"a": 1}', headers=headers).status_code == 200
    assert httpx.post(url, content=b'{"a": 2}', headers=headers).status_code == 403


def test_event_invocation_is_accepted_and_runs(engine: RunningEngine, lam: Any, fn: str) -> None:
    import time

    response = lam.invoke(FunctionName=fn, InvocationType="Event", Payload=json.dumps({"async": True}))
    assert response["StatusCode"] == 202
    activation = response["ResponseMetadata"]["HTTPHeaders"]["x-amzn-requestid"]
    deadline = time.monotonic() + 30
    while True:
        record = engine.client.activation(activation)
        if record["status"] not in ("queued", "running"):
            break
        assert time.monotonic() < deadline, record
        time.sleep(0.1)
    assert record["status"] == "success" and json.loads(record["result"])["got"] == {"async": True}
    with pytest.raises(lam.exceptions.ResourceNotFoundException):
        lam.invoke(FunctionName="does-not-exist", InvocationType="Event", Payload=b"{}")
