"""The OpenAPI description: every route described, nothing described that is not a route, scopes as listed.

These tests tie ``build_spec`` to the real app's ``url_map`` both ways, so a route added or
removed without its description fails here. The answers themselves are checked against the
description by the schemathesis run (``test_schemathesis.py``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis

from edgecascade.cloud_service.enroll import ENROLL_SCHEMA
from edgecascade.cloud_service.learning import LABEL_SCHEMA
from edgecascade.cloud_service.openapi import (
    OPENAPI_VERSION,
    SCOPES,
    build_spec,
    openapi_path,
    registered_operations,
)
from tests.cloud_service.conftest import Cloud, EchoInference, bearer
from tests.cloud_service.full_cloud import FullCloud, make_full_cloud
from tests.fake_bundle import make_bundle

# a value for each path parameter that reaches its view (the resources may not exist)
PATH_VALUES = {
    "job_id": "1",
    "version": "1",
    "newest": "1",
    "file": "manifest.json",
    "example_id": "0" * 64,
    "filename": "dashboard.css",
    "group_id": "1",
    "site": "site-a",
    "run_id": "1",
}


class SwappableEcho(EchoInference):
    """The stand-in model, able to follow a promotion (it keeps answering as before)."""

    refresh = None

    def swap(self, bundle: Any) -> None:
        self.bundle = bundle


@pytest.fixture
def full(tmp_path: Path) -> FullCloud:
    """Every feature on, over a stand-in model: registry, learning loop, enrolment, fleet."""
    return make_full_cloud(tmp_path, make_bundle(tmp_path / "built"), inference=SwappableEcho())


def described(spec: dict[str, Any]) -> set[tuple[str, str]]:
    return {(path, method) for path, item in spec["paths"].items() for method in item}


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


def test_flask_rules_read_as_openapi_paths() -> None:
    assert openapi_path("/v1/jobs/<int:job_id>") == "/v1/jobs/{job_id}"
    assert openapi_path("/v1/models/<int:version>/rollback-of/<int:newest>/<file>") == (
        "/v1/models/{version}/rollback-of/{newest}/{file}"
    )
    assert openapi_path("/x/<string(maxlength=64):example_id>/label") == "/x/{example_id}/label"
    assert openapi_path("/healthz") == "/healthz"


def test_every_route_is_described_and_every_description_is_a_route(full: FullCloud) -> None:
    routes = registered_operations(full.app)
    spec = described(build_spec())
    assert routes - spec == set(), "routes without a description in cloud_service/openapi_paths.py"
    assert spec - routes == set(), "descriptions of routes the app does not have"
    assert ("/v1/jobs/{job_id}", "get") in routes and len(routes) >= 20


def test_the_document_is_served_without_a_token_and_is_valid_openapi_3_1(full: FullCloud) -> None:
    response = full.app.test_client().get("/openapi.json")
    assert response.status_code == 200 and response.mimetype == "application/json"
    document = response.get_json()
    assert document == build_spec()  # the full app registers every route: nothing left out
    assert document["openapi"] == OPENAPI_VERSION == "3.1.0"
    schemathesis.openapi.from_dict(document).validate()  # the OpenAPI 3.1 meta-schema
    components = document["components"]
    for target in set(refs(document)):
        kind, name = re.fullmatch(r"#/components/(schemas|responses)/(\w+)", target).groups()  # type: ignore[union-attr]
        assert name in components[kind], target


def test_a_cloud_without_the_registry_describes_only_its_own_routes(cloud: Cloud) -> None:
    document = cloud.client.get("/openapi.json").get_json()
    assert described(document) == registered_operations(cloud.app)
    assert "/v1/infer" in document["paths"]
    assert not any(path.startswith("/v1/models") for path in document["paths"])


def test_request_bodies_are_the_schemas_the_routes_check() -> None:
    schemas = build_spec()["components"]["schemas"]
    assert schemas["EnrollRequest"] == ENROLL_SCHEMA
    assert schemas["LabelRequest"] == LABEL_SCHEMA


def test_each_operation_admits_exactly_the_scopes_it_lists(full: FullCloud) -> None:
    """A token of each scope on every operation: refused for its scope exactly when it is not listed."""
    client = full.app.test_client()
    tokens = {scope: full.token(scope) for scope in SCOPES}
    checked = 0
    for path, item in build_spec()["paths"].items():
        url = re.sub(r"\{(\w+)\}", lambda m: PATH_VALUES[m.group(1)], path)
        for method, operation in item.items():
            listed = {scope for requirement in operation["security"] for scope in requirement["bearer"]}
            anonymous = client.open(url, method=method.upper())
            if not listed:
                assert anonymous.status_code < 400, (method, path, anonymous.status_code)
                continue
            assert anonymous.status_code == 401, (method, path)
            assert anonymous.headers["WWW-Authenticate"] == 'Bearer realm="edgecascade"'
            for scope, token in tokens.items():
                answer = client.open(url, method=method.upper(), headers=bearer(token))
                refused = answer.status_code == 403 and "cannot use" in answer.get_json()["message"]
                assert refused == (scope not in listed), (method, path, scope, answer.status_code)
                checked += 1
    assert checked >= 4 * 20
