"""No input reaches a 500: every route of the full app, with hostile path and query values.

The routes are read from ``app.url_map``, so a route added later is covered without
editing this file. Each is called with a token of every scope (so the view itself runs,
not only the authentication in front of it), with hostile values in each path parameter
and in every query parameter the API reads; the answer must be a 4xx with the project's
JSON error body (or a success), never a 500.
"""

from __future__ import annotations

import base64
import itertools
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from flask import Flask
from werkzeug.routing import IntegerConverter, Rule

from tests.cloud_service.full_cloud import FullCloud, make_full_cloud

INTS = ("999999999999999999999", "9223372036854775808", "9223372036854775807", "-1", "0", "9" * 5000, "1e3")
TEXTS = (
    "x" * 5000,
    "x" * 256,
    "..",
    ".",
    "%00",
    "%ff%fe",
    "%2e%2e",
    "a b",
    "é" * 80,
    "manifest.json",
    "%0d%0aX:1",
)
QUERY_VALUES = (*INTS, *TEXTS, "nan", "inf", "-inf", "1e400", "", "true", "W10=", "WzEsImEiXQ==")
#: every query parameter a route reads, and a few no route reads
QUERY_NAMES = (
    "limit",
    "cursor",
    "since",
    "model_version",
    "device_id",
    "labelled",
    "log_lines",
    "state",
    "x",
)
BENIGN = {"int": "1", "text": "manifest.json"}
BODY_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


@pytest.fixture(scope="module")
def full(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> FullCloud:
    return make_full_cloud(tmp_path_factory.mktemp("routes"), tiny_bundle)


def _kind(rule: Rule, argument: str) -> str:
    return "int" if isinstance(rule._converters[argument], IntegerConverter) else "text"


def _path(rule: Rule, values: dict[str, str]) -> str:
    """The rule's path with ``values`` (already URL-quoted) in its parameters."""
    path = rule.rule
    for argument, converter in rule._converters.items():
        start = path.index("<")
        end = path.index(">", start)
        assert path[start + 1 : end].endswith(argument), (rule.rule, converter)
        path = path[:start] + values[argument] + path[end + 1 :]
    return path


def _requests(rule: Rule) -> Iterator[str]:
    """URLs of ``rule`` with hostile values: in each path parameter, then in every query parameter."""
    benign = {a: BENIGN[_kind(rule, a)] for a in rule.arguments}
    for argument in rule.arguments:
        for value in INTS if _kind(rule, argument) == "int" else (*TEXTS, *INTS):
            yield _path(rule, {**benign, argument: quote(value, safe="%")})
    base = _path(rule, benign)
    for value in QUERY_VALUES:
        yield base + "?" + "&".join(f"{name}={quote(value, safe='%')}" for name in QUERY_NAMES)


def _rules(app: Flask) -> list[Rule]:
    return sorted(app.url_map.iter_rules(), key=lambda r: r.rule)


def test_every_route_answers_hostile_path_and_query_values_without_a_500(
    full: FullCloud, caplog: pytest.LogCaptureFixture
) -> None:
    app = full.app
    client = app.test_client()
    tokens: dict[str, str | None] = {s: full.token(s) for s in ("admin", "gateway", "device", "enroll")}
    tokens["none"] = None
    counters = app.extensions["edgecascade"].counters
    seen: list[tuple[int, str, str]] = []
    with caplog.at_level(logging.ERROR):
        for rule in _rules(app):
            methods = sorted((rule.methods or set()) - {"HEAD", "OPTIONS"})
            for method, url, scope in itertools.product(methods, list(_requests(rule)), tokens):
                token = tokens[scope]
                kwargs: dict[str, Any] = {"headers": {"Authorization": f"Bearer {token}"} if token else {}}
                if method in BODY_METHODS:
                    kwargs["json"] = {}
                response = client.open(url, method=method, **kwargs)
                seen.append((response.status_code, method, url[:120]))
                assert response.status_code < 500 or response.status_code == 503, (
                    method,
                    url[:200],
                    scope,
                    response.get_data()[:300],
                )
                if response.status_code >= 400:
                    body = response.get_json(silent=True)
                    assert isinstance(body, dict) and body.get("error") and "message" in body, (
                        method,
                        url[:200],
                    )
    assert counters["http_500"] == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text[:2000]
    # the enumeration reached the views, not only the router: each kind of refusal occurred
    statuses = {status for status, _, _ in seen}
    assert {400, 401, 403, 404} <= statuses


def test_a_number_beyond_the_database_is_no_job_not_a_500(full: FullCloud) -> None:
    client = full.app.test_client()
    admin = {"Authorization": f"Bearer {full.token('admin')}"}
    for job_id in ("999999999999999999999", "9223372036854775808"):
        response = client.get(f"/v1/jobs/{job_id}", headers=admin)
        assert response.status_code == 404 and response.get_json()["error"] == "not_found"
    response = client.get("/v1/jobs/9223372036854775807", headers=admin)  # the largest one that could exist
    assert response.status_code == 404 and "no job" in response.get_json()["message"]
    bad_queries = {
        "model_version=999999999999999999999": "model_version",
        "since=nan": "since",
        "since=1e400": "since",
        "device_id=" + "x" * 65: "device_id",
        "cursor=" + "WzE" + "x" * 600: "cursor",
        "cursor="
        + base64.urlsafe_b64encode(b"[1" + b"0" * 400 + b', "a"]').decode(): "cursor",  # not a float
    }
    for query, name in bad_queries.items():
        response = client.get(f"/v1/hard-examples?{query}", headers=admin)
        assert response.status_code == 400, (query, response.get_data())
        assert name in response.get_json()["message"]


def test_an_unexpected_exception_is_a_json_500_logged_and_counted(
    tiny_bundle: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    full = make_full_cloud(tmp_path, tiny_bundle)

    def broken() -> Any:
        raise KeyError("a bug")

    full.app.add_url_rule("/v1/broken", view_func=broken)
    with caplog.at_level(logging.ERROR, logger="edgecascade.cloud_service.app"):
        response = full.app.test_client().get("/v1/broken")
    assert response.status_code == 500
    assert response.get_json() == {"error": "internal", "message": "internal error"}  # no traceback, no text
    assert full.app.extensions["edgecascade"].counters["http_500"] == 1
    (record,) = [r for r in caplog.records if "unexpected error" in r.getMessage()]
    assert "GET /v1/broken" in record.getMessage() and record.exc_info is not None
