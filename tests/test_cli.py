"""The `easyfaas` command line against a running engine: output, JSON, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from easyfaas.testing import RunningEngine, write_function

REPO = Path(__file__).resolve().parent.parent


def cli(engine: RunningEngine | None, *args: str, endpoint: str | None = None) -> subprocess.CompletedProcess[str]:
    target = endpoint or (engine.endpoint if engine else "http://127.0.0.1:9")
    env = engine.env if engine else {**os.environ, "XDG_CONFIG_HOME": "/nonexistent"}
    return subprocess.run([sys.executable, "-m", "easyfaas.cli", "--endpoint", target, *args],
                          capture_output=True, text=True, timeout=120, env=env)  # fmt: skip


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    with RunningEngine(tmp_path_factory.mktemp("cli")) as eng:
        yield eng


def test_deploy_list_invoke_delete(engine: RunningEngine, tmp_path: Path) -> None:
    code = write_function(tmp_path / "greet", "def handler(e, c):\n    return {'hi': e.get('who')}\n")
    out = cli(engine, "deploy", "greet", str(code))
    assert out.returncode == 0, out.stderr
    assert "deployed greet version 1" in out.stdout
    listed = cli(engine, "list")
    assert "greet" in listed.stdout and "handler.handler" in listed.stdout
    invoked = cli(engine, "invoke", "greet", "--data", '{"who": "cli"}')
    assert invoked.returncode == 0 and json.loads(invoked.stdout) == {"hi": "cli"}
    assert cli(engine, "delete", "greet").returncode == 0
    missing = cli(engine, "invoke", "greet")
    assert missing.returncode == 3 and "FunctionNotFound" in missing.stderr


def test_deploy_with_flags_overrides_function_yaml(engine: RunningEngine, tmp_path: Path) -> None:
    code = write_function(tmp_path / "flags", "import os\ndef main(e, c):\n    return [os.environ['K'], c.memory_limit_in_mb]\n",
                          handler="app.main")  # fmt: skip
    out = cli(engine, "-o", "json", "deploy", "flags", str(code), "--memory", "256", "--env", "K=a=b")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["memory"] == 256
    assert json.loads(cli(engine, "invoke", "flags").stdout) == ["a=b", 256]


def test_invoke_data_from_file_and_log_tail(engine: RunningEngine, tmp_path: Path) -> None:
    code = write_function(tmp_path / "logs", "def handler(e, c):\n    print('seen', e['n'])\n    return e['n'] * 2\n")
    cli(engine, "deploy", "logs", str(code))
    (tmp_path / "event.json").write_text('{"n": 21}')
    out = cli(engine, "invoke", "logs", "--data", f"@{tmp_path / 'event.json'}", "--log-tail")
    assert out.stdout.strip() == "42" and "seen 21" in out.stderr


def test_function_error_exit_code(engine: RunningEngine, tmp_path: Path) -> None:
    code = write_function(tmp_path / "boom", "def handler(e, c):\n    raise RuntimeError('boom')\n")
    cli(engine, "deploy", "boom", str(code))
    out = cli(engine, "invoke", "boom")
    assert out.returncode == 4 and json.loads(out.stdout)["errorMessage"] == "boom"


def test_bad_data_is_a_usage_error(engine: RunningEngine) -> None:
    out = cli(engine, "invoke", "whatever", "--data", "{not json")
    assert out.returncode == 2 and "not valid JSON" in out.stderr


def test_deploy_refusal_is_explained(engine: RunningEngine, tmp_path: Path) -> None:
    code = write_function(tmp_path / "broken", "def handler(e, c) return 1\n")
    out = cli(engine, "deploy", "broken", str(code))
    assert out.returncode == 1 and "SyntaxError" in out.stderr


def test_ps_and_activations(engine: RunningEngine, tmp_path: Path) -> None:
    cli(engine, "deploy", "psfn", str(write_function(tmp_path / "ps", "def handler(e, c):\n    return 1\n")))
    cli(engine, "invoke", "psfn")
    ps = json.loads(cli(engine, "-o", "json", "ps").stdout)
    assert any(row["function"] == "psfn" and row["state"] == "idle" for row in ps)
    acts = json.loads(cli(engine, "-o", "json", "activations", "psfn").stdout)
    assert acts[0]["function"] == "psfn" and acts[0]["status"] == "success"


def test_unreachable_engine_exit_code() -> None:
    out = cli(None, "list", endpoint="http://127.0.0.1:9")
    assert out.returncode == 5 and "cannot reach the engine" in out.stderr


def test_plugins_lists_the_four_first_party_plugins() -> None:
    out = cli(None, "plugins")
    assert out.returncode == 0
    for name, dist in [("http", "easyfaas-trigger-http"), ("python", "easyfaas-runtime-python"),
                       ("process", "easyfaas-sandbox-process"), ("stubs", "easyfaas-storage-stubs")]:  # fmt: skip
        assert any(line.split()[:2] == [name, dist] for line in out.stdout.splitlines()), out.stdout


def test_up_with_a_bad_profile_names_line_and_key(tmp_path: Path) -> None:
    profile = tmp_path / "engine.yaml"
    profile.write_text("node: {name: x}\nfunclet:\n  pool: {python: -1}\n  sandbox: process\n")
    out = subprocess.run([sys.executable, "-m", "easyfaas.cli", "up", "--profile", str(profile)],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 78
    assert f"{profile}:3: funclet.pool: pool size of 'python' cannot be negative" in out.stderr


def test_up_with_an_unknown_plugin_names_the_package(tmp_path: Path) -> None:
    profile = tmp_path / "engine.yaml"
    profile.write_text(f"node: {{data_dir: {tmp_path}/d}}\ncontroller: {{api: 127.0.0.1:0}}\nfunclet: {{sandbox: firecracker}}\n")
    out = subprocess.run([sys.executable, "-m", "easyfaas.cli", "up", "--profile", str(profile)],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 78
    assert "Install easyfaas-sandbox-firecracker" in out.stdout + out.stderr


def test_the_api_requires_the_token(engine: RunningEngine) -> None:
    import httpx

    assert httpx.get(f"{engine.endpoint}/v1/functions").status_code == 401
    assert httpx.get(f"{engine.endpoint}/v1/functions", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.get(f"{engine.endpoint}/metrics").status_code == 401
    assert httpx.get(f"{engine.endpoint}/v1/health").status_code == 200
    ok = httpx.get(f"{engine.endpoint}/v1/functions", headers={"Authorization": f"Bearer {engine.token}"})
    assert ok.status_code == 200
    token_file = engine.data_dir / "data" / "token"
    assert token_file.stat().st_mode & 0o777 == 0o600


def test_cli_without_a_token_is_refused_and_login_fixes_it(engine: RunningEngine, tmp_path: Path) -> None:
    env = {**engine.env, "XDG_CONFIG_HOME": str(tmp_path / "cfg"), "EASYFAAS_TOKEN": ""}
    run = lambda *a: subprocess.run([sys.executable, "-m", "easyfaas.cli", *a], capture_output=True, text=True, env=env, timeout=60)  # noqa: E731
    refused = run("list")
    assert refused.returncode == 1 and "Unauthorized" in refused.stderr and "easyfaas login" in refused.stderr
    assert run("login", "--token", "wrong").returncode == 1
    assert run("login", "--token", engine.token).returncode == 0
    assert (tmp_path / "cfg" / "easyfaas" / "config.json").stat().st_mode & 0o777 == 0o600
    assert run("list").returncode == 0


def test_private_functions_need_the_token_on_the_http_trigger(engine: RunningEngine, tmp_path: Path) -> None:
    code = write_function(tmp_path / "priv", "def handler(e, c):\n    return 'secret'\n", public=False)
    engine.deploy(code, "private")
    assert engine.call("private", method="GET").status_code == 401
    assert engine.call("private", method="GET", headers={"Authorization": f"Bearer {engine.token}"}).json() == "secret"


def test_update_versions_alias_and_logs(engine: RunningEngine, tmp_path: Path) -> None:
    code = write_function(tmp_path / "vers", "import os\ndef handler(e, c):\n    print('hello from', c.function_version)\n    return os.environ.get('M')\n")
    assert cli(engine, "deploy", "vers", str(code)).returncode == 0
    updated = cli(engine, "update", "vers", "--env", "M=x", "--memory", "192")
    assert updated.returncode == 0 and "version 2" in updated.stdout
    rows = json.loads(cli(engine, "-o", "json", "versions", "vers").stdout)
    assert [(r["version"], r["memory"]) for r in rows] == [("1", 128), ("2", 192)]
    assert cli(engine, "alias", "set", "vers", "stable", "1").returncode == 0
    listed = json.loads(cli(engine, "-o", "json", "alias", "list", "vers").stdout)
    assert listed[0]["name"] == "stable" and listed[0]["version"] == "1"
    assert json.loads(cli(engine, "invoke", "vers").stdout) == "x"
    logs = cli(engine, "logs", "vers")
    assert "hello from 2" in logs.stdout
    assert cli(engine, "alias", "delete", "vers", "stable").returncode == 0
    assert cli(engine, "update", "vers").returncode == 2


def test_large_upload_shows_progress_and_deploys(engine: RunningEngine, tmp_path: Path) -> None:
    code = write_function(tmp_path / "big", "def handler(e, c):\n    return len(open('blob.bin', 'rb').read())\n")
    (code / "blob.bin").write_bytes(os.urandom(3 * 2**20))
    out = cli(engine, "deploy", "big", str(code))
    assert out.returncode == 0, out.stderr
    assert json.loads(cli(engine, "invoke", "big").stdout) == 3 * 2**20
