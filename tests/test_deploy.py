"""The Kubernetes manifests in deploy/ validate offline against the API schemas (kubernetes-validate
bundles them), and the engine profile they ship is one the engine accepts."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from easyfaas.plugin.manager import Plugins
from easyfaas.profile import load_profile

kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="kubernetes-validate is not installed (pip install -r requirements-dev.txt)"
)

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
MANIFESTS = sorted((DEPLOY / "kubernetes").glob("*.yaml"))
#: The oldest Kubernetes the manifests are meant for (policy/v1 PDBs, networking.k8s.io/v1 Ingress).
KUBERNETES = "1.27.0"


def documents() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") != "Kustomization":  # kustomize's own file, not an API object
                found.append((f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc))
    return found


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Any attempt to connect anywhere fails: the validation must work offline."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("no network in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    yield


@pytest.mark.parametrize(("where", "doc"), documents(), ids=[where for where, _ in documents()])
def test_each_manifest_is_valid_kubernetes(where: str, doc: dict[str, Any], no_network: None) -> None:
    kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def test_the_validator_rejects_a_broken_manifest(no_network: None) -> None:
    [deployment] = [doc for where, doc in documents() if doc["kind"] == "Deployment"]
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["replicas"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES, strict=True)
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["privilegd"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES, strict=True)


def test_the_setup_is_complete_and_consistent() -> None:
    kinds = {(doc["kind"], doc["metadata"]["name"]) for _, doc in documents()}
    assert {("Deployment", "easyfaas-node"), ("Service", "easyfaas"), ("Ingress", "easyfaas-functions"),
            ("StatefulSet", "nats"), ("Service", "nats"), ("ConfigMap", "easyfaas-engine")} <= kinds  # fmt: skip
    assert all(doc["metadata"].get("namespace", "easyfaas") == "easyfaas" for _, doc in documents())
    kustomization = yaml.safe_load((DEPLOY / "kubernetes" / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(p.name for p in MANIFESTS if p.name != "kustomization.yaml")
    [statefulset] = [doc for _, doc in documents() if doc["kind"] == "StatefulSet"]
    [node] = [doc for _, doc in documents() if doc["kind"] == "Deployment"]
    assert node["spec"]["template"]["spec"]["containers"][0]["securityContext"]["privileged"] is True
    # The engine's server list names exactly the StatefulSet's pods.
    profile = load_profile(text=engine_profile())
    pods = {f"nats://nats-{i}.nats:4222" for i in range(statefulset["spec"]["replicas"])}
    assert set(profile.storage[1]["servers"]) == set(profile.queue[1]["servers"]) == pods


def engine_profile() -> str:
    [config] = [doc for _, doc in documents() if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == "easyfaas-engine"]
    return str(config["data"]["engine.yaml"])


def test_the_shipped_engine_profile_is_accepted_with_its_plugins() -> None:
    profile = load_profile(text=engine_profile())
    assert profile.storage[0] == "nats" and profile.queue[0] == "nats"
    host = Plugins()
    host.load({"storage": [profile.storage[0]], "queues": [profile.queue[0]], "triggers": list(profile.triggers)})
    profile.check_plugin_options(("storage", "nats"), host.get("storage", "nats"), profile.storage[1])
    profile.check_plugin_options(("queue", "nats"), host.get("queues", "nats"), profile.queue[1])
    # The image installs every plugin the profile names.
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    for folder in ("storage/nats", "queues/nats", "sandboxes/namespace", "triggers/http", "triggers/cron", "runtimes/python"):
        assert f"./plugins/{folder}" in dockerfile
