"""Engine profile loading: defaults, and errors that name file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from easyfaas.errors import ProfileError
from easyfaas.profile import load_profile, parse_duration, parse_size


def test_embedded_default_is_valid_and_complete() -> None:
    profile = load_profile()
    assert profile.source == "<default profile>"
    assert profile.sandbox == ("auto", {})
    assert profile.storage == ("stubs", {})
    assert profile.runtimes == {"python": {}}
    assert profile.model.controller.keep_alive == 120.0
    assert profile.model.funclet.limits.memory_total == 4 * 2**30


def test_file_values_override_defaults_and_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    path = tmp_path / "engine.yaml"
    path.write_text("node: {data_dir: ./state}\nfunclet:\n  sandbox: {process: {env: {A: b}}}\n  pool: {python: 3}\n")
    profile = load_profile(path)
    assert profile.data_dir == tmp_path / "state"
    assert profile.sandbox == ("process", {"env": {"A": "b"}})
    assert profile.model.funclet.pool == {"python": 3}
    assert profile.funclet_socket == tmp_path / "state" / "funclet.sock"


def problems(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "engine.yaml"
    path.write_text(text)
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    return info.value.problems


def test_unknown_key_names_file_line_key_and_the_allowed_keys(tmp_path: Path) -> None:
    [message] = problems(tmp_path, "node: {name: a}\ncontroller:\n  api: 127.0.0.1:1\n  keepalive: 3s\n")
    assert message.startswith(f"{tmp_path / 'engine.yaml'}:4: controller.keepalive: unknown key")
    assert "keep_alive" in message


def test_wrong_type_names_line_key_and_value(tmp_path: Path) -> None:
    [message] = problems(tmp_path, "funclet:\n  pool:\n    python: lots\n")
    assert ":3: funclet.pool.python:" in message
    assert "integer" in message and "'lots'" in message


def test_bad_values_are_all_reported_at_once(tmp_path: Path) -> None:
    found = problems(tmp_path, "controller:\n  api: localhost\n  keep_alive: forever\n")
    assert len(found) == 2
    assert ":2: controller.api: expected host:port" in found[0]
    assert ":3: controller.keep_alive: expected a duration" in found[1]


def test_duplicate_keys_are_errors_not_silently_overwritten(tmp_path: Path) -> None:
    [message] = problems(tmp_path, "funclet:\n  sandbox: process\n  sandbox: namespace\n")
    assert ":3: funclet.sandbox: duplicate key" in message


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    [message] = problems(tmp_path, "node:\n  name: [unclosed\n")
    assert "not valid YAML" in message and "engine.yaml:" in message


def test_exactly_one_code_store(tmp_path: Path) -> None:
    [message] = problems(tmp_path, "storage: {stubs: {}, nats: {}}\n")
    assert ":1: storage: name exactly one code store" in message


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="cannot read the profile"):
        load_profile(tmp_path / "absent.yaml")


def test_plugin_options_are_checked_against_the_constructor(tmp_path: Path) -> None:
    class Driver:
        def __init__(self, *, state_dir: Path, size: int = 1, mode: str) -> None: ...

    path = tmp_path / "engine.yaml"
    path.write_text("funclet:\n  sandbox:\n    demo:\n      size: 2\n      colour: red\n")
    profile = load_profile(path)
    with pytest.raises(ProfileError) as info:
        profile.check_plugin_options(("funclet", "sandbox", "demo"), Driver, {"size": 2, "colour": "red"})
    text = str(info.value)
    assert ":5: funclet.sandbox.demo.colour: unknown option (the 'demo' plugin accepts: mode, size)" in text
    assert "missing required option 'mode'" in text


@pytest.mark.parametrize(("text", "seconds"), [(30, 30.0), ("2m", 120.0), ("500ms", 0.5), ("1.5h", 5400.0)])
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(("text", "size"), [("4Gi", 4 * 2**30), ("512Mi", 512 * 2**20), ("1G", 10**9), (42, 42)])
def test_sizes(text: object, size: int) -> None:
    assert parse_size(text) == size


def test_auth_can_be_off_only_on_loopback(tmp_path: Path) -> None:
    [message] = problems(tmp_path, "controller:\n  api: 0.0.0.0:9090\n  auth: false\n")
    assert "auth can be turned off only when the API listens on loopback" in message
    path = tmp_path / "ok.yaml"
    path.write_text("controller: {api: 127.0.0.1:9090, auth: false}\n")
    assert load_profile(path).model.controller.auth is False
