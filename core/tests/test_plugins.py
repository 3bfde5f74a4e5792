"""Plugin discovery and registration: named, missing, broken and conflicting plugins."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from easyfaas.errors import PluginError, PluginNotFoundError
from easyfaas.interfaces import Runtime
from easyfaas.plugin import hookimpl
from easyfaas.plugin.manager import Plugins, Registry


def make_distribution(root: Path) -> None:
    """A real installed distribution on a path: one working trigger, one that fails to import."""
    (root / "demo_ok.py").write_text(textwrap.dedent("""
        from easyfaas.interfaces import Trigger
        from easyfaas.plugin import hookimpl

        class Tick(Trigger):
            PLUGIN_NAME = "tick"
            def __init__(self, *, every: float = 1.0): self.every = every
            async def start(self, invoker): pass
            async def stop(self): pass

        @hookimpl
        def easyfaas_register_triggers(register):
            register.add_trigger(Tick)
    """))
    (root / "demo_broken.py").write_text("raise ImportError('this plugin is broken on purpose')\n")
    info = root / "easyfaas_demo-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: easyfaas-demo\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text("[easyfaas.triggers]\ntick = demo_ok\nbroken = demo_broken\n")


def run_host(root: Path, script: str) -> dict:
    """Run the plugin host in a fresh interpreter that also sees ``root`` (as an installed path)."""
    code = f"import sys, json; sys.path.insert(0, {str(root)!r})\n" + textwrap.dedent(script)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    out["stderr"] = result.stderr
    return out


def test_discovery_lists_installed_plugins_with_distribution_and_version(tmp_path: Path) -> None:
    make_distribution(tmp_path)
    out = run_host(tmp_path, """
        from easyfaas.plugin.manager import Plugins
        infos = Plugins().discover(["triggers"])
        print(json.dumps({"infos": [i.__dict__ for i in infos]}))
    """)
    by_name = {info["name"]: info for info in out["infos"]}
    assert by_name["tick"]["distribution"] == "easyfaas-demo"
    assert by_name["tick"]["version"] == "1.2.3"
    assert by_name["tick"]["error"] is None
    assert by_name["http"]["distribution"] == "easyfaas-trigger-http"


def test_a_broken_plugin_is_logged_and_skipped_and_others_still_load(tmp_path: Path) -> None:
    make_distribution(tmp_path)
    out = run_host(tmp_path, """
        from easyfaas.plugin.manager import Plugins
        from easyfaas.interfaces import Trigger
        host = Plugins()
        host.load({"triggers": ["tick"]})
        tick = host.create_trigger("tick", every=2.5)
        broken = [i.error for i in host.discover(["triggers"]) if i.name == "broken"]
        print(json.dumps({"every": tick.every, "broken": broken}))
    """)
    assert out["every"] == 2.5
    assert out["broken"] == ["ImportError: this plugin is broken on purpose"]
    assert "plugin 'broken' in group 'easyfaas.triggers' failed to import and is skipped" in out["stderr"]


def test_naming_the_broken_plugin_is_a_hard_error_with_the_cause(tmp_path: Path) -> None:
    make_distribution(tmp_path)
    out = run_host(tmp_path, """
        from easyfaas.plugin.manager import Plugins
        try:
            Plugins().load({"triggers": ["broken"]})
        except Exception as exc:
            print(json.dumps({"type": type(exc).__name__, "message": str(exc)}))
    """)
    assert out["type"] == "PluginNotFoundError"
    assert "installed but failed to import" in out["message"] and "broken on purpose" in out["message"]


def test_a_missing_plugin_names_the_distribution_to_install() -> None:
    # A sandbox no distribution provides ('docker' exists now: easyfaas-sandbox-docker).
    with pytest.raises(PluginNotFoundError) as info:
        Plugins().load({"sandboxes": ["firecracker"]})
    assert str(info.value) == (
        "sandbox plugin 'firecracker' not found in group 'easyfaas.sandboxes'. Install easyfaas-sandbox-firecracker"
    )


def test_the_first_party_plugins_load_by_name() -> None:
    host = Plugins()
    host.load({"runtimes": ["python"], "storage": ["stubs"], "triggers": ["http"], "sandboxes": ["process"]})
    assert host.get("runtimes", "python").PLUGIN_NAME == "python"
    assert host.get("triggers", "http").__name__ == "HttpTrigger"


class _Echo(Runtime):
    PLUGIN_NAME = "echo"

    def runner_files(self) -> dict[str, Path]:
        return {}

    def runner_command(self, runner_dir: str, socket_path: str) -> list[str]:
        return ["true"]


def test_registry_refuses_a_second_class_with_the_same_name_naming_both() -> None:
    registry = Registry()
    registry.add_runtime(_Echo)
    other = type("OtherEcho", (_Echo,), {"__module__": "somewhere.else"})
    with pytest.raises(PluginError) as info:
        registry.add_runtime(other)
    assert "two runtime plugins are named 'echo'" in str(info.value)
    assert "test_plugins._Echo" in str(info.value) and "somewhere.else.OtherEcho" in str(info.value)


def test_registry_refuses_a_class_of_the_wrong_kind() -> None:
    with pytest.raises(PluginError, match="not a subclass of SandboxDriver"):
        Registry().add_sandbox(_Echo)  # type: ignore[arg-type]


def test_after_invoke_hook_reaches_a_registered_observer() -> None:
    seen: list[dict] = []

    class Observer:
        @hookimpl
        def easyfaas_after_invoke(self, activation: dict) -> None:
            seen.append(activation)

    host = Plugins()
    host.after_invoke({"id": "before"})  # no observer yet: nothing happens
    host.register_object(Observer(), "observer")
    host.after_invoke({"id": "a1"})
    assert seen == [{"id": "a1"}]


def test_constructor_rejection_becomes_a_plugin_error() -> None:
    host = Plugins()
    host.load({"runtimes": ["python"]})
    with pytest.raises(PluginError, match="rejected its options"):
        host.create_runtime("python", colour="blue")
