"""Components of the cloud API's OpenAPI description: body schemas and shared error responses.

Request bodies are the very schemas the routes validate with (``ENROLL_SCHEMA``,
``LABEL_SCHEMA``), and enums and bounds come from the modules that define them, so this
description cannot disagree with the checks. Response objects are closed
(``additionalProperties: false``): a field added to an answer must be added here too, or
the schemathesis run fails.
"""

from __future__ import annotations

import copy
from typing import Any

from edgecascade.cloud_service.enroll import ENROLL_SCHEMA
from edgecascade.cloud_service.federation_store import ROUND_STATES, RUN_STATES
from edgecascade.cloud_service.jobs import STATES, TRIGGERS
from edgecascade.cloud_service.learning import LABEL_SCHEMA
from edgecascade.cloud_service.sites import THRESHOLDS_SCHEMA
from edgecascade.cloud_service.unknown_api import NAME_SCHEMA
from edgecascade.device_sdk.learning.records import CUTS, MAX_BATCH, MAX_TENSOR_BYTES, REASONS
from edgecascade.device_sdk.wire.codec import Encoding
from edgecascade.device_sdk.wire.heartbeat import HEARTBEAT_SCHEMA, MAX_ANSWER_KINDS, MAX_DEVICES

JSON = "application/json"
MAX_ID = 2**63 - 1  # largest row id SQLite stores
MAX_VERSION = 2**32 - 1  # model versions are unsigned 32-bit on the wire


def ref(name: str) -> dict[str, str]:
    """A reference to the component schema ``name``."""
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` or JSON null."""
    return {"anyOf": [schema, {"type": "null"}]}


def closed(properties: dict[str, Any], optional: tuple[str, ...] = ()) -> dict[str, Any]:
    """A closed object whose properties are all present but ``optional``."""
    return {
        "type": "object",
        "required": [name for name in properties if name not in optional],
        "properties": properties,
        "additionalProperties": False,
    }


def extensible(properties: dict[str, Any], optional: tuple[str, ...] = ()) -> dict[str, Any]:
    """Like :func:`closed`, but properties it does not name are allowed (and ignored)."""
    return closed(properties, optional) | {"additionalProperties": True}


def int_range(minimum: int, maximum: int) -> dict[str, Any]:
    """An integer in ``minimum..maximum``."""
    return {"type": "integer", "minimum": minimum, "maximum": maximum}


def schemas() -> dict[str, Any]:
    """``components.schemas``: request and response bodies by name."""
    number, text, integer = {"type": "number"}, {"type": "string"}, {"type": "integer"}
    nullable_int, nullable_time = nullable(integer), nullable(number)
    release = closed(
        {
            "version": integer,
            "name": text,
            "manifest_sha256": text,
            "rollback_of": nullable_int,
            "highest": integer,
            "history": {"type": "array", "items": integer},
            "promoted_at": number,
        }
    )
    announcement = closed(
        {
            "name": text,
            "version": integer,
            "manifest_sha256": text,
            "rollback_of": nullable_int,
            "url": text,
            "issued_at": number,
            "key_id": text,
            "signature": {"type": "string", "description": "base64 Ed25519; empty when unsigned"},
        }
    )
    job = {
        "id": integer,
        "state": {"enum": list(STATES)},
        "trigger": {"enum": list(TRIGGERS)},
        "created_at": number,
        "started_at": nullable_time,
        "finished_at": nullable_time,
        "heartbeat_at": nullable_time,
        "progress": {"type": "number", "minimum": 0, "maximum": 1},
        "stage": text,
        "base_version": nullable_int,
        "candidate_version": nullable_int,
        "examples_until": number,
        "metrics": nullable({"type": "object"}),
        "error": nullable(text),
    }
    base64_tensor = {
        "type": "string",
        "contentEncoding": "base64",
        "maxLength": (MAX_TENSOR_BYTES + 2) // 3 * 4,
    }
    record = extensible(  # fields it does not know are ignored
        {
            "id": {"type": "string", "description": "the content id: sha256 hex of what the record holds"},
            "device_id": {"type": "string", "minLength": 1, "maxLength": 64},
            "model_version": int_range(1, MAX_VERSION),
            "cut": {"enum": list(CUTS)},
            "encoding": {"enum": [e.value for e in Encoding]},
            "features": base64_tensor,
            "reasons": {"type": "array", "minItems": 1, "items": {"enum": list(REASONS)}},
            "predicted": int_range(0, 65535),
            "confidence": {"type": "number", "minimum": 0, "maximum": 1},
            "tier": {"type": "string", "minLength": 1, "maxLength": 32},
            "created_at": number,
            "raw": nullable(base64_tensor),
        },
        optional=("raw",),
    )
    return {
        "Error": closed({"error": text, "message": text}),
        "Health": closed({"status": {"const": "ok"}, "model": text, "version": integer}),
        "Counters": {"type": "object", "additionalProperties": integer},
        "EnrollRequest": copy.deepcopy(ENROLL_SCHEMA),
        "Enrolment": closed(
            {
                "device_id": text,
                "key_id": integer,
                "token": {"type": "string", "description": "the device's bearer token; shown once"},
                "token_id": text,
                "scope": {"const": "device"},
                "gateway_public_key": {"type": "string", "description": "raw X25519 key, base64"},
                "gateway_name": text,
            }
        ),
        "HardExampleRecord": record,
        "UploadBatch": closed(
            {
                "examples": {
                    "type": "array",
                    "maxItems": MAX_BATCH,
                    # the batch is judged record by record: an item that is not a valid record
                    # does not fail the request, it is listed in the receipt's `rejected`
                    "items": {"anyOf": [ref("HardExampleRecord"), {}]},
                    "description": "hard-example records; an item that is not one is listed in the "
                    "receipt's `rejected` instead of failing the batch",
                }
            }
        ),
        "UploadReceipt": closed(
            {
                "accepted": {"type": "array", "items": text},
                "duplicates": {"type": "array", "items": text},
                "rejected": {
                    "type": "array",
                    "items": closed({"index": integer, "id": nullable(text), "reason": text}),
                },
            }
        ),
        "HardExample": closed(
            {
                "id": text,
                "device_id": text,
                "model_version": integer,
                "cut": text,
                "encoding": text,
                "reasons": {"type": "array", "items": text},
                "predicted": integer,
                "confidence": number,
                "tier": text,
                "created_at": number,
                "received_at": number,
                "teacher_label": nullable_int,
                "human_label": nullable_int,
                "labelled_at": nullable_time,
                "has_raw": {"type": "boolean"},
                "site": nullable(text),
                "label": nullable_int,
                "label_source": {"enum": ["human", "teacher", None]},
            }
        ),
        "HardExamplePage": closed(
            {"examples": {"type": "array", "items": ref("HardExample")}, "next_cursor": nullable(text)}
        ),
        "LabelRequest": copy.deepcopy(LABEL_SCHEMA),
        "Job": closed(job),
        "JobStatus": closed(job | {"log": {"type": "array", "items": text}}),
        "JobList": closed({"jobs": {"type": "array", "items": ref("Job")}}),
        "Release": release,
        "Announcement": announcement,
        "ModelListing": closed(
            {
                "current": nullable(ref("Release")),
                "models": {
                    "type": "array",
                    "items": closed(
                        {
                            "version": integer,
                            "current": {"type": "boolean"},
                            "name": text,
                            "error": text,
                            "signed": {"type": "boolean"},
                            "metrics": {"type": "object"},
                            "registered_at": number,
                        },
                        optional=("name", "error"),
                    ),
                },
            }
        ),
        "CurrentRelease": closed(
            {
                "announcement": ref("Announcement"),
                "highest": integer,
                "history": {"type": "array", "items": integer},
            }
        ),
        **_fleet_schemas(),
        **_site_schemas(),
        **_unknown_schemas(),
        **_drift_schemas(),
        **_federated_schemas(),
        "Released": closed(
            {
                "current": ref("Release"),
                "announcement": ref("Announcement"),
                "announced": {"type": "boolean"},
                "error": nullable(text),
            }
        ),
    }


def _drift_schemas() -> dict[str, Any]:
    """The devices' drift alarms as the cloud recorded them."""
    number, text, integer = {"type": "number"}, {"type": "string"}, {"type": "integer"}
    event = closed(
        {
            "id": integer,
            "site": text,
            "device_id": text,
            "model_version": integer,
            "detected_at": number,
            "received_at": number,
            "example_id": text,
        }
    )
    return {"DriftEvents": closed({"events": {"type": "array", "items": event}})}


def _federated_schemas() -> dict[str, Any]:
    """Collaborative training's runs and rounds, as the server side recorded them."""
    number, text, integer = {"type": "number"}, {"type": "string"}, {"type": "integer"}
    sites = {"type": "array", "items": text}
    by_site = {"type": "object", "additionalProperties": integer}
    why = {"type": "object", "additionalProperties": text}
    tally = extensible(  # the server's RoundTally as it wrote it: it may hold more
        {
            "server_round": integer,
            "state": {"enum": list(ROUND_STATES)},
            "sampled": sites | {"description": "the sites asked to train"},
            "accepted": by_site | {"description": "site: local examples of its accepted update"},
            "refused": why | {"description": "site: why its update was refused"},
            "failed": why | {"description": "site: the error it answered with"},
            "late": sites | {"description": "sites with no answer by the round's end (dropped)"},
            "bytes_in": by_site | {"description": "site: bytes of its accepted update"},
            "bytes_out": {"type": "integer", "description": "bytes sent to each sampled site"},
            "started": number,
            "seconds": number,
        },
        optional=("started",),
    )
    run = {
        "id": integer,
        "flower_run": nullable(text),
        "state": {"enum": list(RUN_STATES)},
        "stage": text,
        "strategy": text,
        "rounds_planned": integer,
        "rounds_done": integer,
        "base_version": nullable(integer),
        "candidate_version": nullable(integer),
        "gate": nullable({"type": "object", "description": "the evaluation gate's numbers"}),
        "error": nullable(text),
        "started": number,
        "finished": nullable(number),
    }
    counts = dict.fromkeys(("sampled", "accepted", "late", "refused", "failed"), integer)
    one_round = closed(
        {"server_round": integer, "state": {"enum": list(ROUND_STATES)}}
        | counts
        | {"tally": tally, "seconds": number, "finished": number}
    )
    return {
        "FederatedRun": closed(run),
        "FederatedRuns": closed({"runs": {"type": "array", "items": ref("FederatedRun")}}),
        "FederatedRunDetail": closed(run | {"rounds": {"type": "array", "items": one_round}}),
    }


def _unknown_schemas() -> dict[str, Any]:
    """Groups of unknown uploads, a refresh's report and the body that names a group."""
    number, text, integer = {"type": "number"}, {"type": "string"}, {"type": "integer"}
    group = closed(
        {
            "id": integer,
            "cut": {"enum": list(CUTS)},
            "created_at": number,
            "size": integer,
            "class_name": nullable(text),
            "class_index": nullable(integer),
            "named_at": nullable(number),
            "examples": {"type": "array", "items": text, "description": "the first few member ids"},
            "has_images": {"type": "boolean", "description": "some member came with its raw input"},
        }
    )
    counts = ("considered", "unreadable", "joined", "grouped", "new_groups", "ungrouped")
    cut = closed({"cut": {"enum": list(CUTS)}} | dict.fromkeys(counts, integer) | {"skipped": nullable(text)})
    return {
        "UnknownGroup": group,
        "UnknownGroupList": closed(
            {"groups": {"type": "array", "items": ref("UnknownGroup")}, "ungrouped": integer}
        ),
        "UnknownGroupPage": closed(
            {
                "group": ref("UnknownGroup"),
                "examples": {"type": "array", "items": ref("HardExample")},
                "next_cursor": nullable(text),
            }
        ),
        "UnknownRefresh": closed({"cuts": {"type": "array", "items": cut}, "seconds": number}),
        "UnknownGroupName": copy.deepcopy(NAME_SCHEMA),
    }


def _site_schemas() -> dict[str, Any]:
    """A site's overlay of exit thresholds, the request that fits it and the answers that carry it."""
    number, text, integer = {"type": "number"}, {"type": "string"}, {"type": "integer"}
    exit_spec = closed({"threshold": number, "temperature": number, "score": text})
    overlay = closed(
        {
            "format": {"const": 1},
            "model": text,
            "version": integer,
            "site": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$"},
            "exits": {"type": "object", "additionalProperties": exit_spec},
            "examples": integer,
            "fitted_at": number,
            "metrics": {"type": "object", "additionalProperties": number},
        }
    )
    signed = {
        "overlay": overlay,
        "file": {"type": "string", "description": "the overlay file's exact bytes (what is signed)"},
        "signature": {"type": "string", "description": "the signature file's exact bytes (<file>.sig)"},
    }
    return {
        "SiteThresholdsRequest": copy.deepcopy(THRESHOLDS_SCHEMA),
        "SiteOverlay": closed(signed),
        "FittedSiteOverlay": closed(
            signed | {"skipped": {"type": "integer", "description": "audited examples left out"}}
        ),
    }


def _fleet_schemas() -> dict[str, Any]:
    """A gateway's heartbeat and the fleet views made of them."""
    number, text, integer = {"type": "number"}, {"type": "string"}, {"type": "integer"}
    count = int_range(0, MAX_ID)
    name = {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$"}
    counts = {
        "type": "object",
        "propertyNames": {"pattern": "^[a-z][a-z0-9_]{0,39}$"},
        "additionalProperties": count,
    }
    percentile = nullable({"type": "number", "minimum": 0})
    model = closed({"name": text, "version": integer})
    # a newer gateway may send more: fields the cloud does not know are ignored, at every level
    heartbeat = extensible(
        {
            "schema": {"const": HEARTBEAT_SCHEMA},
            "gateway_id": name,
            "sent_at": number,
            "started_at": number,
            "interval": {"type": "number", "exclusiveMinimum": 0},
            "model": extensible(
                {
                    "name": {"type": "string", "minLength": 1, "maxLength": 200},
                    "version": int_range(1, MAX_VERSION),
                }
            ),
            "requests": count,
            "answers": {**counts, "maxProperties": MAX_ANSWER_KINDS},
            "latency_ms": extensible(
                {"count": count, "p50": percentile, "p90": percentile, "p99": percentile},
                optional=("p50", "p90", "p99"),
            ),
            "devices": {
                "type": "array",
                "maxItems": MAX_DEVICES,
                "items": extensible({"id": name, "last_seen": number, "requests": count}),
            },
            "devices_seen": count,
            "outbox": nullable({**counts, "maxProperties": 16}),
        },
        optional=("outbox",),
    )
    nullable_number = nullable(number)
    gateway = closed(
        {
            "gateway_id": text,
            "token": text,
            "model": model,
            "last_seen": number,
            "age": number,
            "stale": {"type": "boolean"},
            "interval": number,
            "started_at": number,
            "requests": integer,
            "answers": {"type": "object", "additionalProperties": integer},
            "latency_ms": closed({"count": integer, "p50": nullable_number, "p99": nullable_number}),
            "devices_seen": integer,
            "outbox": nullable({"type": "object", "additionalProperties": integer}),
        }
    )
    device = closed(
        {
            "device_id": text,
            "last_seen": number,
            "seen_by": {"type": "array", "items": text},
            "gateways": {"type": "array", "items": text},
            "gateway_requests": integer,
            "cloud_requests": integer,
            "hard_examples": integer,
        }
    )
    shares = {"type": "object", "additionalProperties": number}
    return {
        "Heartbeat": heartbeat,
        "HeartbeatReceipt": closed({"received_at": number}),
        "Fleet": closed(
            {
                "now": number,
                "cloud": closed({"model": model, "classes": {"type": "array", "items": text}}),
                "gateways": {"type": "array", "items": gateway},
                "devices": {"type": "array", "items": device},
            }
        ),
        "Traffic": closed(
            {
                "since": number,
                "until": number,
                "bucket_seconds": number,
                "tiers": {"type": "array", "items": text},
                "mix": {
                    "type": "array",
                    "items": closed(
                        {
                            "t": number,
                            "total": integer,
                            "answers": {"type": "object", "additionalProperties": integer},
                            "shares": shares,
                        }
                    ),
                },
                "latency": {
                    "type": "array",
                    "items": closed(
                        {"t": number, "count": integer, "p50": number, "p90": number, "p99": number}
                    ),
                },
            }
        ),
    }


def responses() -> dict[str, Any]:
    """``components.responses``: the JSON error answers many routes share."""

    def error(description: str) -> dict[str, Any]:
        return {"description": description, "content": {JSON: {"schema": ref("Error")}}}

    unauthorized = error("missing, unknown, wrong, expired, used or revoked bearer token")
    unauthorized["headers"] = {
        "WWW-Authenticate": {"required": True, "schema": {"const": 'Bearer realm="edgecascade"'}}
    }
    return {
        "BadRequest": error("the request does not fit this description; the message names every problem"),
        "Unauthorized": unauthorized,
        "Forbidden": error("the token's scope does not allow this"),
        "NotFound": error("no such resource"),
        "Conflict": error("the request conflicts with the current state"),
        "TooLarge": error("the body is larger than this route accepts"),
        "UnsupportedMediaType": error("the body is not application/json"),
    }
