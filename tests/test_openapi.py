"""The OpenAPI document matches the implementation, and generated requests never get a 5xx."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from easyfaas.controller.api import build_app
from easyfaas.controller.engine import Controller
from easyfaas.controller.openapi import openapi_document
from easyfaas.profile import load_profile
from easyfaas.testing import RunningEngine, write_function


async def test_every_v1_route_is_documented_and_every_documented_route_exists(tmp_path: Path) -> None:
    profile = load_profile(text=f"node: {{data_dir: {tmp_path}}}\n")
    controller = Controller(profile)
    try:
        app = build_app(controller)
        implemented = {
            (route.method.lower(), route.resource.canonical)
            for route in app.router.routes()
            if route.resource is not None and route.resource.canonical.startswith("/v1/") and route.method != "HEAD"
        }
    finally:
        await controller.funclet.close()
    documented = {
        (method, path)
        for path, item in openapi_document()["paths"].items()
        for method in item
        if method in {"get", "put", "post", "patch", "delete"}
    }
    assert implemented == documented


def test_the_served_document_is_the_same(engine: RunningEngine) -> None:
    import httpx

    assert httpx.get(f"{engine.endpoint}/v1/openapi.json").json() == openapi_document()


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningEngine]:
    with RunningEngine(tmp_path_factory.mktemp("openapi")) as eng:
        eng.deploy(write_function(tmp_path_factory.mktemp("fn"), "def handler(e, c):\n    return e\n"), "known")
        yield eng


@pytest.mark.slow
def test_generated_requests_get_no_server_error(engine: RunningEngine) -> None:
    """Every documented operation, with requests generated from the document (schemathesis)."""
    schema = schemathesis.openapi.from_dict(openapi_document())
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15
    for operation in operations:

        @settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(case=operation.as_strategy())
        def check(case: schemathesis.Case) -> None:
            case.call_and_validate(
                base_url=engine.endpoint,
                headers={"Authorization": f"Bearer {engine.token}"},
                checks=[not_a_server_error],
                timeout=30,
            )

        check()
