"""The path items of the cloud API's OpenAPI description: one operation per route the app can register.

An operation's ``security`` lists the token scopes it accepts as OpenAPI 3.1 role names,
one alternative each; a scoped operation also answers 401 (with ``WWW-Authenticate``) and
403. Path and query bounds are the ones the routes enforce.
"""

from __future__ import annotations

from typing import Any

from edgecascade.cloud_service.dashboard import PAGE as DASHBOARD
from edgecascade.cloud_service.dashboard import ROUTE_FLEET
from edgecascade.cloud_service.dashboard.fleet import HISTORY
from edgecascade.cloud_service.drift_events import MAX_LIST as MAX_DRIFT_EVENTS
from edgecascade.cloud_service.drift_events import ROUTE_DRIFT_EVENTS
from edgecascade.cloud_service.federation_api import MAX_RUNS, ROUTE_FEDERATED_RUNS
from edgecascade.cloud_service.learning import LOG_LINES, MAX_LIST, ROUTE_JOBS, ROUTE_RETRAIN
from edgecascade.cloud_service.openapi_schemas import JSON, MAX_ID, MAX_VERSION, int_range, ref
from edgecascade.cloud_service.site_examples import MAX_EXAMPLES
from edgecascade.cloud_service.sites import DEFAULT_EXAMPLES, ROUTE_SITES
from edgecascade.cloud_service.unknown_api import GRID_IMAGES, ROUTE_UNKNOWN_GROUPS
from edgecascade.device_sdk import wire
from edgecascade.device_sdk.wire.envelope import ROUTE_HEARTBEAT

ROUTE_OPENAPI = "/openapi.json"
MODEL_READERS = ("device", "gateway", "admin")
EXAMPLE_ID = {
    "name": "example_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "maxLength": 64, "pattern": "^[^/]+$"},
    "description": "content id: sha256 hex",
}
CURSOR = {"type": "string", "maxLength": 512, "pattern": "^[A-Za-z0-9_=-]*$"}  # opaque, urlsafe base64
DEVICE_ID_FILTER = {"type": "string", "maxLength": 64, "pattern": "^[A-Za-z0-9_.-]*$"}  # empty: no filter


# ------------------------------------------------------------------------ building blocks
def _answer(description: str, schema: str | dict[str, Any]) -> dict[str, Any]:
    """A JSON response whose body is the named component schema (or ``schema`` itself)."""
    body = ref(schema) if isinstance(schema, str) else schema
    return {"description": description, "content": {JSON: {"schema": body}}}


def _content(description: str, media_type: str, schema: dict[str, Any]) -> dict[str, Any]:
    """A response in one media type other than JSON."""
    return {"description": description, "content": {media_type: {"schema": schema}}}


def _refused(description: str) -> dict[str, Any]:
    return _answer(description, "Error")


def _common(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/responses/{name}"}


def _param(name: str, where: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": where,
        "required": where == "path",
        "schema": schema,
        "description": description,
    }


def _optional(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    """A query parameter the route reads as absent when it is empty (``?since=``)."""
    return _param(name, "query", schema, description) | {"allowEmptyValue": True}


def _op(
    summary: str,
    scopes: tuple[str, ...],
    answers: dict[str, Any],
    *,
    tag: str,
    parameters: tuple[dict[str, Any], ...] = (),
    body: str | None = None,
) -> dict[str, Any]:
    """One operation; a scoped one also answers 401 and 403 (``answers`` may describe them itself)."""
    op: dict[str, Any] = {
        "summary": summary,
        "tags": [tag],
        "security": [{"bearer": [scope]} for scope in scopes],
        "responses": answers,
    }
    if scopes:
        op["responses"] = {"401": _common("Unauthorized"), "403": _common("Forbidden")} | answers
    if parameters:
        op["parameters"] = list(parameters)
    if body is not None:
        op["requestBody"] = {"required": True, "content": {JSON: {"schema": ref(body)}}}
    return op


# ---------------------------------------------------------------------------------- paths
def paths() -> dict[str, Any]:
    """``paths``: every route the app can register."""
    return {
        ROUTE_OPENAPI: {
            "get": _op("this document", (), {"200": _answer("OpenAPI 3.1", {"type": "object"})}, tag="meta")
        },
        wire.ROUTE_HEALTH: {
            "get": _op("liveness and the served model", (), {"200": _answer("alive", "Health")}, tag="meta")
        },
        wire.ROUTE_METRICS: {
            "get": _op(
                "the cloud's counters", ("admin",), {"200": _answer("counters", "Counters")}, tag="meta"
            )
        },
        wire.ROUTE_PROMETHEUS: {
            "get": _op(
                "the cloud's metrics for Prometheus",
                ("admin",),
                {"200": _content("Prometheus text exposition format", "text/plain", {"type": "string"})},
                tag="meta",
            )
        },
        wire.ROUTE_INFER: {"post": _infer()},
        wire.ROUTE_ENROLL: {
            "post": _op(
                "register a device's X25519 key; returns its device token",
                ("enroll",),
                {
                    "201": _answer("enrolled", "Enrolment"),
                    **_body_errors(),
                    "503": _refused("enrolment is not configured"),
                },
                tag="enrolment",
                body="EnrollRequest",
            )
        },
        **_learning_paths(),
        **_model_paths(),
        **_fleet_paths(),
        **_site_paths(),
        **_unknown_paths(),
        **_drift_paths(),
        **_federated_paths(),
    }


def _body_errors() -> dict[str, Any]:
    return {"400": _common("BadRequest"), "413": _common("TooLarge"), "415": _common("UnsupportedMediaType")}


def _infer() -> dict[str, Any]:
    envelope = {wire.CONTENT_TYPE: {"schema": {"type": "string", "format": "binary"}}}
    op = _op(
        "run partition 3 on forwarded cut-2 features: an envelope in, an envelope out",
        ("gateway", "device"),
        {
            "200": {"description": "a RESULT envelope", "content": envelope},
            "400": _refused("not an envelope"),
            "401": _refused(
                "a refused token (with WWW-Authenticate), or a payload not encrypted, not "
                "decryptable or replayed (without)"
            ),
            "409": _refused("a model version this cloud does not serve"),
            "413": _common("TooLarge"),
            "422": _refused("features of the wrong shape or encoding"),
            "426": _refused("an envelope schema version this cloud does not speak"),
            "503": _refused("the model cannot answer now"),
        },
        tag="inference",
    )
    # the body is read as an envelope whatever its Content-Type; generic clients send octet-stream
    body = envelope | {"application/octet-stream": envelope[wire.CONTENT_TYPE]}
    op["requestBody"] = {"required": True, "content": body}
    return op


def _learning_paths() -> dict[str, Any]:
    return {
        wire.ROUTE_HARD_EXAMPLES: {
            "post": _op(
                "upload a batch of hard examples",
                ("device", "gateway"),
                {"200": _answer("the receipt, record by record", "UploadReceipt"), **_body_errors()},
                tag="learning",
                body="UploadBatch",
            ),
            "get": _op(
                "list stored hard examples, oldest first",
                ("admin",),
                {"200": _answer("one page", "HardExamplePage"), "400": _common("BadRequest")},
                tag="learning",
                parameters=(
                    _optional("device_id", DEVICE_ID_FILTER, "only this device's"),
                    _optional("model_version", int_range(0, MAX_VERSION), "only this version's"),
                    _optional(
                        "labelled", {"type": "boolean"}, "only with (true) or without (false) a human label"
                    ),
                    _optional("since", {"type": "number"}, "received at or after this unix time"),
                    _optional("limit", int_range(1, MAX_LIST), "page size (default 100)"),
                    _optional("cursor", CURSOR, "`next_cursor` of the page before (no other value is read)"),
                ),
            ),
        },
        f"{wire.ROUTE_HARD_EXAMPLES}/{{example_id}}/label": {
            "put": _op(
                "set a human label",
                ("admin",),
                {
                    "200": _answer("the example, relabelled", "HardExample"),
                    "404": _common("NotFound"),
                    **_body_errors(),
                },
                tag="learning",
                parameters=(EXAMPLE_ID,),
                body="LabelRequest",
            )
        },
        ROUTE_RETRAIN: {
            "post": _op(
                "start a retraining job now",
                ("admin",),
                {"202": _answer("queued", "Job"), "409": _common("Conflict")},
                tag="learning",
            )
        },
        ROUTE_JOBS: {
            "get": _op(
                "retraining jobs, newest first",
                ("admin",),
                {"200": _answer("jobs", "JobList")},
                tag="learning",
            )
        },
        f"{ROUTE_JOBS}/{{job_id}}": {
            "get": _op(
                "a job's state, progress, stage, numbers and last log lines",
                ("admin",),
                {
                    "200": _answer("the job", "JobStatus"),
                    "400": _common("BadRequest"),
                    "404": _common("NotFound"),
                },
                tag="learning",
                parameters=(
                    _param("job_id", "path", int_range(1, MAX_ID), "job id"),
                    _optional("log_lines", int_range(0, 1000), f"log lines to show (default {LOG_LINES})"),
                ),
            )
        },
    }


def _drift_paths() -> dict[str, Any]:
    return {
        ROUTE_DRIFT_EVENTS: {
            "get": _op(
                "the devices' drift alarms, newest first",
                ("admin",),
                {"200": _answer("the events", "DriftEvents"), "400": _common("BadRequest")},
                tag="learning",
                parameters=(
                    _optional(
                        "site",
                        {"type": "string", "maxLength": 64, "pattern": "^[A-Za-z0-9_.-]+$"},
                        "only this site's (the name of the token that uploaded them)",
                    ),
                    _optional("since", {"type": "number"}, "received at or after this unix time"),
                    _optional("limit", int_range(1, MAX_DRIFT_EVENTS), "most events (default 100)"),
                ),
            )
        }
    }


def _federated_paths() -> dict[str, Any]:
    return {
        ROUTE_FEDERATED_RUNS: {
            "get": _op(
                "collaborative training runs, newest first",
                ("admin",),
                {"200": _answer("the runs", "FederatedRuns"), "400": _common("BadRequest")},
                tag="learning",
                parameters=(_optional("limit", int_range(1, MAX_RUNS), "most runs (default 20)"),),
            )
        },
        f"{ROUTE_FEDERATED_RUNS}/{{run_id}}": {
            "get": _op(
                "a collaborative training run and its rounds, each with its whole tally",
                ("admin",),
                {"200": _answer("the run", "FederatedRunDetail"), "404": _common("NotFound")},
                tag="learning",
                parameters=(_param("run_id", "path", int_range(1, MAX_ID), "run id"),),
            )
        },
    }


def _unknown_paths() -> dict[str, Any]:
    group = _param("group_id", "path", int_range(1, MAX_ID), "group id")
    return {
        ROUTE_UNKNOWN_GROUPS: {
            "get": _op(
                "groups of unknown uploads, and how many unknown examples are in none",
                ("admin",),
                {"200": _answer("the groups, oldest first", "UnknownGroupList")},
                tag="learning",
            )
        },
        f"{ROUTE_UNKNOWN_GROUPS}/refresh": {
            "post": _op(
                "group the unknown examples in no group yet: join the nearest group or form new ones",
                ("admin",),
                {
                    "200": _answer("what the run did, cut by cut", "UnknownRefresh"),
                    "409": _common("Conflict"),
                },
                tag="learning",
            )
        },
        f"{ROUTE_UNKNOWN_GROUPS}/{{group_id}}": {
            "get": _op(
                "a group and one page of its members, oldest first",
                ("admin",),
                {
                    "200": _answer("the group and the page", "UnknownGroupPage"),
                    "400": _common("BadRequest"),
                    "404": _common("NotFound"),
                },
                tag="learning",
                parameters=(
                    group,
                    _optional("limit", int_range(1, MAX_LIST), "page size (default 100)"),
                    _optional("cursor", CURSOR, "`next_cursor` of the page before (no other value is read)"),
                ),
            ),
            "put": _op(
                "name the group as a class: its members get the class's index as their human label",
                ("admin",),
                {
                    "200": _answer("the named group (the same answer when named so before)", "UnknownGroup"),
                    "404": _common("NotFound"),
                    "409": _refused("the group already has another name"),
                    **_body_errors(),
                },
                tag="learning",
                parameters=(group,),
                body="UnknownGroupName",
            ),
        },
        f"{ROUTE_UNKNOWN_GROUPS}/{{group_id}}/examples.png": {
            "get": _op(
                f"up to {GRID_IMAGES} members' raw inputs as one PNG grid",
                ("admin",),
                {
                    "200": _content("the grid", "image/png", {"type": "string", "format": "binary"}),
                    "404": _refused("no such group, or no member was uploaded with its raw input"),
                    "422": _refused("the kept raw inputs are not images"),
                },
                tag="learning",
                parameters=(group,),
            )
        },
    }


def _site_paths() -> dict[str, Any]:
    site = _param(
        "site",
        "path",
        {"type": "string", "maxLength": 64, "pattern": "^[^/]+$"},
        "the site: the name of the token its examples were uploaded with ([A-Za-z0-9_.-], else 400)",
    )
    fit = _op(
        "fit the site's exit thresholds on its labelled audited examples; sign and keep the overlay",
        ("admin",),
        {
            "200": _answer("the signed overlay for the served model version", "FittedSiteOverlay"),
            **_body_errors(),
            "400": _refused("a bad site name or body, or too few examples (the message says how many)"),
            "404": _common("NotFound"),  # a site name longer than 64 characters matches no route
            "409": _common("Conflict"),
        },
        tag="sites",
        parameters=(site,),
    )
    fit["requestBody"] = {"required": False, "content": {JSON: {"schema": ref("SiteThresholdsRequest")}}}
    return {
        f"{ROUTE_SITES}/{{site}}/thresholds": {"post": fit},
        f"{ROUTE_SITES}/{{site}}/overlay": {
            "get": _op(
                "the site's signed overlay of exit thresholds",
                MODEL_READERS,
                {
                    "200": _answer("the overlay, its file and its signature", "SiteOverlay"),
                    "400": _common("BadRequest"),
                    "404": _common("NotFound"),
                },
                tag="sites",
                parameters=(
                    site,
                    _optional("version", int_range(1, MAX_VERSION), "model version (default: the served)"),
                ),
            )
        },
        f"{ROUTE_SITES}/{{site}}/examples.npz": {
            "get": _op(
                "the examples a person labelled for the site, newest first, with their raw inputs",
                MODEL_READERS,
                {
                    "200": _content(
                        "an .npz: x (uint8 images), y (labels), ids, classes; no pickled arrays",
                        "application/octet-stream",
                        {"type": "string", "format": "binary"},
                    ),
                    "400": _common("BadRequest"),
                    "403": _refused("a device or gateway token named after another site"),
                    "404": _common("NotFound"),  # a site name longer than 64 characters matches no route
                },
                tag="sites",
                parameters=(
                    site,
                    _optional(
                        "limit", int_range(1, MAX_EXAMPLES), f"at most this many (default {DEFAULT_EXAMPLES})"
                    ),
                ),
            )
        },
    }


def _model_paths() -> dict[str, Any]:
    version = _param("version", "path", int_range(1, MAX_VERSION), "model version")
    newest = _param(
        "newest", "path", int_range(1, MAX_VERSION), "the highest version promoted before the rollback"
    )
    file = _param(
        "file", "path", {"type": "string", "pattern": "^[^/]+$"}, "manifest.json, manifest.sig or a partition"
    )
    model_file = {
        "200": {
            "description": "the file: manifest.json as JSON, anything else as bytes",
            "content": {JSON: {"schema": {"type": "object"}}, "application/octet-stream": {"schema": {}}},
        },
        "404": _common("NotFound"),
    }
    released = {
        "200": _answer("promoted, swapped to and announced (`announced`, else `error`)", "Released"),
        "409": _common("Conflict"),
        "500": _refused("this cloud cannot serve the release; nothing was announced"),
    }
    return {
        wire.ROUTE_MODELS: {
            "get": _op(
                "versions, metrics, current",
                MODEL_READERS,
                {"200": _answer("the registry", "ModelListing")},
                tag="models",
            )
        },
        f"{wire.ROUTE_MODELS}/current": {
            "get": _op(
                "the current release's (signed) announcement",
                MODEL_READERS,
                {"200": _answer("current", "CurrentRelease"), "404": _common("NotFound")},
                tag="models",
            )
        },
        f"{wire.ROUTE_MODELS}/{{version}}/{{file}}": {
            "get": _op(
                "a file of a version; a partition only for a scope that runs it",
                MODEL_READERS,
                model_file,
                tag="models",
                parameters=(version, file),
            )
        },
        f"{wire.ROUTE_MODELS}/{{version}}/rollback-of/{{newest}}/{{file}}": {
            "get": _op(
                "a file of a signed rollback release",
                MODEL_READERS,
                model_file,
                tag="models",
                parameters=(version, newest, file),
            )
        },
        f"{wire.ROUTE_MODELS}/{{version}}/promote": {
            "post": _op(
                "serve and announce a version",
                ("admin",),
                {**released, "404": _common("NotFound")},
                tag="models",
                parameters=(version,),
            )
        },
        f"{wire.ROUTE_MODELS}/rollback": {
            "post": _op(
                "release the previous version as a signed rollback", ("admin",), released, tag="models"
            )
        },
    }


def _fleet_paths() -> dict[str, Any]:
    page_types = ("text/html", "text/css", "text/javascript", "application/javascript")
    return {
        DASHBOARD: {
            "get": _op(
                "the operator's dashboard page (it asks for an admin token itself)",
                (),
                {"200": _content("the page", "text/html", {"type": "string"})},
                tag="fleet",
            )
        },
        f"{DASHBOARD}static/{{filename}}": {
            "get": _op(
                "the dashboard's script and style sheet",
                (),
                {
                    "200": {
                        "description": "the file",
                        "content": {media: {"schema": {"type": "string"}} for media in page_types},
                    },
                    "404": _common("NotFound"),
                },
                tag="fleet",
                parameters=(_param("filename", "path", {"type": "string"}, "dashboard.js or dashboard.css"),),
            )
        },
        ROUTE_HEARTBEAT: {
            "post": _op(
                "a gateway's status",
                ("gateway",),
                {"200": _answer("stored", "HeartbeatReceipt"), **_body_errors()},
                tag="fleet",
                body="Heartbeat",
            )
        },
        ROUTE_FLEET: {
            "get": _op(
                "gateways, devices and the model version of every node",
                ("admin",),
                {"200": _answer("the fleet", "Fleet")},
                tag="fleet",
            )
        },
        f"{ROUTE_FLEET}/traffic": {
            "get": _op(
                "exit mix and latency over time, from the gateways' heartbeats",
                ("admin",),
                {"200": _answer("the series", "Traffic"), "400": _common("BadRequest")},
                tag="fleet",
                parameters=(
                    _param(
                        "minutes",
                        "query",
                        {"type": "number", "exclusiveMinimum": 0, "maximum": HISTORY / 60},
                        "how far back (default 15)",
                    ),
                ),
            )
        },
        f"{wire.ROUTE_HARD_EXAMPLES}/{{example_id}}/raw.png": {
            "get": _op(
                "a hard example's raw input as a PNG image",
                ("admin",),
                {
                    "200": _content("the image", "image/png", {"type": "string", "format": "binary"}),
                    "404": _common("NotFound"),
                    "422": _refused("the raw input is not an image"),
                },
                tag="fleet",
                parameters=(EXAMPLE_ID,),
            )
        },
    }
