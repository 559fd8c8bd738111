"""Schemathesis against the live cloud app: no 5xx, and every answer is one ``/openapi.json`` describes.

The app is the real one (LiteRT cloud partition of the tiny model, registry, learning loop,
enrolment, fleet, SQLite stores) served over HTTP on a loopback port; the description is
:func:`~edgecascade.cloud_service.openapi.build_spec`, which is what that app serves at
``/openapi.json`` (``test_openapi.py``). First every operation's success is requested the
way a real client makes it, then schemathesis generates requests (valid and invalid) for
each operation. Each request carries a live token of a scope its operation accepts, cycling
through them, so the fuzzer gets past authentication; ``ignored_auth`` checks that a 2xx
really needed that token. The run is derandomised and bounded (``MAX_EXAMPLES`` per
operation and phase) so the suite stays a fast, repeatable gate; fuzz a deployment longer
with the ``schemathesis run`` command (docs/http-api.md).
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import schemathesis
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)
from werkzeug.serving import make_server

from edgecascade.cloud_service.federation_store import FederationStore
from edgecascade.cloud_service.keyring import raw_base64
from edgecascade.cloud_service.openapi import build_spec
from edgecascade.device_sdk import wire
from edgecascade.device_sdk.model.bundle import load_bundle
from edgecascade.device_sdk.wire import codec
from edgecascade.device_sdk.wire.heartbeat import Heartbeat, Latency, SeenDevice
from tests.cloud_service.full_cloud import DEVICE, FullCloud, make_full_cloud
from tests.federation_kit import make_tally
from tests.learning_kit import device_examples, with_raw

MAX_EXAMPLES = 20
CONFORMANCE = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
CHECKS = [*CONFORMANCE, negative_data_rejection, ignored_auth, unsupported_method]
REFUSALS = [400, 401, 403, 404, 405, 406, 409, 413, 415, 422]  # how a request off the description is refused
schema = schemathesis.openapi.from_dict(  # what the full app serves (test_openapi.py)
    build_spec(),
    config=schemathesis.Config.from_dict(
        {
            "checks": {"negative_data_rejection": {"expected-statuses": REFUSALS}},
            "generation": {"with-security-parameters": False},  # every request carries a live token
        }
    ),
)
RUN: Counter[tuple[str, int]] = Counter()  # (operation, status) -> generated cases


@st.composite
def envelopes(draw: st.DrawFn) -> bytes:
    """Envelope bytes: well-framed ones with random bodies (device, version, flags vary) or junk."""
    header = wire.Header(
        draw(st.sampled_from(list(wire.MessageType))),
        draw(st.sampled_from([DEVICE, "cam-02", "gw"])),
        draw(st.integers(0, 3)),
        draw(st.integers(0, 2**64 - 1)),
        flags=draw(st.sampled_from([0, wire.FLAG_ENCRYPTED])),
    )
    framed = wire.envelope_to_bytes(wire.Envelope(header, draw(st.binary(max_size=256))))
    cut = draw(st.integers(0, len(framed)))
    return draw(st.sampled_from([framed, framed[:cut], draw(st.binary(max_size=64))]))


schemathesis.openapi.media_type(wire.CONTENT_TYPE, envelopes())


class Tokens:
    """A live token per scope; an operation's requests cycle through the scopes it accepts."""

    def __init__(self, cloud: FullCloud) -> None:
        self.cloud = cloud
        self.by_scope = {scope: cloud.token(scope) for scope in ("device", "gateway", "admin")}
        self.renew_enrolment()
        self._cycles: dict[str, Iterator[str]] = {}

    def headers(self, operation: schemathesis.APIOperation) -> dict[str, str]:
        security = operation.definition.raw.get("security", [])
        scopes = [scope for requirement in security for scope in requirement.get("bearer", [])]
        if not scopes:
            return {}
        cycle = self._cycles.setdefault(operation.label, itertools.cycle(scopes))
        return bearer(self.by_scope[next(cycle)])

    def renew_enrolment(self) -> None:
        """A successful enrolment spends its token: the next request gets a fresh one.

        It is named for another device than the device token, which a re-enrolment would revoke.
        """
        self.by_scope["enroll"] = self.cloud.token("enroll", "cam-09")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def full_cloud(tmp_path_factory: pytest.TempPathFactory, tiny_bundle: Path) -> FullCloud:
    return make_full_cloud(tmp_path_factory.mktemp("schemathesis"), tiny_bundle)


@pytest.fixture(scope="module")
def base_url(full_cloud: FullCloud) -> Iterator[str]:
    """The app served over HTTP on a free loopback port."""
    server = make_server("127.0.0.1", 0, full_cloud.app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def tokens(full_cloud: FullCloud) -> Tokens:
    return Tokens(full_cloud)


class Client:
    """Requests built as schemathesis cases of the described operations, each answer validated."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    def __call__(
        self, method: str, path: str, token: str | None = None, expect: int = 200, **case: Any
    ) -> schemathesis.Response:
        made = schema[path][method].Case(headers=bearer(token) if token else None, **case)
        response = made.call_and_validate(self.base_url, checks=CONFORMANCE)
        assert response.status_code == expect, (method, path, response.status_code, response.text)
        return response


@pytest.fixture(scope="module")
def client(base_url: str) -> Client:
    return Client(base_url)


def test_the_learning_loop_answers_as_described(
    client: Client, full_cloud: FullCloud, tiny_bundle: Path
) -> None:
    version = client("GET", "/healthz").json()["version"]
    enrolled = client(
        "POST",
        "/v1/devices/enroll",
        full_cloud.token("enroll", "cam-07"),
        expect=201,
        body={"device_id": "cam-07", "public_key": raw_base64(X25519PrivateKey.generate().public_key())},
        media_type="application/json",
    ).json()
    device = enrolled["token"]

    manifest = load_bundle(tiny_bundle).manifest
    cut2 = np.zeros(manifest.partition("cloud").input.shape, np.float32)
    request = wire.Envelope(
        wire.Header(wire.MessageType.INFER_REQUEST, "cam-07", version),
        codec.encode_features(cut2, manifest.partition("gateway").encoding),
    )
    answer = client(
        "POST", "/v1/infer", device, body=wire.envelope_to_bytes(request), media_type=wire.CONTENT_TYPE
    )
    assert wire.envelope_from_bytes(answer.content).header.msg_type is wire.MessageType.RESULT

    images = np.random.default_rng(7).integers(0, 256, (3, *manifest.input.shape), dtype=np.uint8)
    examples = device_examples(tiny_bundle, images, device_id="cam-07", version=version)
    examples[0] = with_raw(examples[0], images[0])
    batch = {"examples": [e.to_json() for e in examples]}
    receipt = client("POST", "/v1/hard-examples", device, body=batch, media_type="application/json").json()
    assert len(receipt["accepted"]) == 3 and receipt["rejected"] == []

    admin = full_cloud.token("admin")
    page = client("GET", "/v1/hard-examples", admin, query={"device_id": "cam-07", "limit": 2}).json()
    assert len(page["examples"]) == 2 and page["next_cursor"]
    rest = client("GET", "/v1/hard-examples", admin, query={"cursor": page["next_cursor"]}).json()
    assert len(rest["examples"]) == 1
    first = examples[0].example_id
    labelled = client(
        "PUT",
        "/v1/hard-examples/{example_id}/label",
        admin,
        path_parameters={"example_id": first},
        body={"label": 3},
        media_type="application/json",
    ).json()
    assert (labelled["label"], labelled["label_source"], labelled["has_raw"]) == (3, "human", True)
    image = client(
        "GET", "/v1/hard-examples/{example_id}/raw.png", admin, path_parameters={"example_id": first}
    )
    assert image.content.startswith(b"\x89PNG")

    job = client("POST", "/v1/retrain", admin, expect=202).json()
    status = client("GET", "/v1/jobs/{job_id}", admin, path_parameters={"job_id": job["id"]}).json()
    assert status["state"] == "queued" and status["log"] == ["job queued by a test launcher"]
    assert [j["id"] for j in client("GET", "/v1/jobs", admin).json()["jobs"]] == [job["id"]]


def test_the_model_registry_answers_as_described(client: Client, full_cloud: FullCloud) -> None:
    admin, device = full_cloud.token("admin"), full_cloud.token("device")
    listing = client("GET", "/v1/models", device).json()
    assert [m["version"] for m in listing["models"]] == [1, 2]
    current = client("GET", "/v1/models/current", device).json()
    assert current["announcement"]["version"] == 1 and current["announcement"]["signature"]
    files = {"version": 1, "file": "manifest.json"}
    manifest = client("GET", "/v1/models/{version}/{file}", device, path_parameters=files).json()
    partition = next(p["file"] for p in manifest["partitions"] if p["tier"] == "device")
    for name in ("manifest.sig", partition):
        got = client("GET", "/v1/models/{version}/{file}", device, path_parameters=files | {"file": name})
        assert got.headers["content-type"] == ["application/octet-stream"] and got.content

    promoted = client("POST", "/v1/models/{version}/promote", admin, path_parameters={"version": 2}).json()
    assert promoted["current"]["version"] == 2 and promoted["announced"] is False  # no broker configured
    rolled = client("POST", "/v1/models/rollback", admin).json()
    assert (rolled["current"]["version"], rolled["current"]["rollback_of"]) == (1, 2)
    release = {"version": 1, "newest": 2, "file": "manifest.json"}
    again = client("GET", "/v1/models/{version}/rollback-of/{newest}/{file}", device, path_parameters=release)
    assert again.json()["rollback_of"] == 2


def test_the_fleet_and_the_operator_routes_answer_as_described(client: Client, full_cloud: FullCloud) -> None:
    admin, gateway = full_cloud.token("admin"), full_cloud.token("gateway")
    now = time.time()
    beat = Heartbeat(
        "gw-1",
        "fashion-mnist-tiny",
        1,
        sent_at=now,
        started_at=now - 60,
        interval=5.0,
        requests=10,
        answers={"gateway": 6, "cloud": 4},
        latency=Latency(10, 1.5, 3.0, 9.0),
        devices=(SeenDevice(DEVICE, now, 10),),
        devices_seen=1,
    )
    client("POST", "/v1/heartbeats", gateway, body=beat.to_json(), media_type="application/json")
    fleet = client("GET", "/v1/fleet", admin).json()
    assert [g["gateway_id"] for g in fleet["gateways"]] == ["gw-1"]
    assert "tiers" in client("GET", "/v1/fleet/traffic", admin, query={"minutes": 5}).json()
    assert client("GET", "/v1/metrics", admin).json()["heartbeats"] == 1
    assert b"edgecascade_cloud" in client("GET", "/metrics", admin).content
    assert b"<html" in client("GET", "/dashboard/").content.lower()
    client("GET", "/dashboard/static/{filename}", path_parameters={"filename": "dashboard.js"})
    served = client("GET", "/openapi.json").json()
    assert json.dumps(served, sort_keys=True) == json.dumps(build_spec(), sort_keys=True)


def test_the_federated_runs_answer_as_described(client: Client, full_cloud: FullCloud) -> None:
    store = FederationStore(full_cloud.app.extensions["edgecascade.learning"].store.engine)
    run_id = store.start_run(strategy="fedavg", rounds=2, base_version=1, flower_run=12345)
    store.record_round(run_id, make_tally(1, refused={"site-c": "signature"}, late=["site-d"]), state="short")
    store.finish_run(run_id, state="rejected", gate={"accuracy": 0.5, "passed": False})
    store.start_run(strategy="median", rounds=3, base_version=1)
    admin = full_cloud.token("admin")
    runs = client("GET", "/v1/federated/runs", admin, query={"limit": 5}).json()["runs"]
    assert [r["strategy"] for r in runs] == ["median", "fedavg"]
    run = client("GET", "/v1/federated/runs/{run_id}", admin, path_parameters={"run_id": run_id}).json()
    assert run["state"] == "rejected" and [r["server_round"] for r in run["rounds"]] == [1]
    client("GET", "/v1/federated/runs/{run_id}", admin, path_parameters={"run_id": 10**6}, expect=404)


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_generated_requests_get_described_answers_and_no_server_error(
    case: schemathesis.Case, base_url: str, tokens: Tokens
) -> None:
    response = case.call_and_validate(base_url, headers=tokens.headers(case.operation), checks=CHECKS)
    RUN[case.operation.label, response.status_code] += 1
    if case.operation.path == wire.ROUTE_ENROLL and response.status_code == 201:
        tokens.renew_enrolment()


def test_the_generated_requests_got_past_authentication_on_every_operation() -> None:
    """Every operation saw answers other than 401/403: the tokens worked, the requests reached the views."""
    if not RUN:
        pytest.skip("runs after the generated requests (run the whole module)")
    labels = {f"{method.upper()} {path}" for path, item in build_spec()["paths"].items() for method in item}
    reached = {label for (label, status) in RUN if status not in (401, 403)}
    assert reached == labels
    statuses = Counter({status: 0 for _, status in RUN})
    for (_, status), n in RUN.items():
        statuses[status] += n
    print(f"\nschemathesis: {sum(RUN.values())} cases, {len(labels)} operations, statuses {dict(statuses)}")
