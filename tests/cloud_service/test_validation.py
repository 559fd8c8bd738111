"""The small JSON-schema subset that checks request bodies."""

from __future__ import annotations

from edgecascade.cloud_service.validation import problems

SCHEMA = {
    "type": "object",
    "required": ["name", "count"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "minLength": 2, "maxLength": 4, "pattern": "^[a-z]+$"},
        "count": {"type": "integer", "minimum": 1, "maximum": 3},
        "ratio": {"type": "number"},
        "inner": {"type": "object", "required": ["x"], "properties": {"x": {"type": "boolean"}}},
    },
}


def test_a_conforming_value_has_no_problems() -> None:
    assert problems({"name": "abc", "count": 2, "ratio": 1, "inner": {"x": False}}, SCHEMA) == []
    assert problems({"name": "ab", "count": 3, "ratio": 0.5}, SCHEMA) == []


def test_every_problem_is_reported_with_its_path() -> None:
    found = problems({"name": "ABCDE", "count": 0, "ratio": True, "inner": {}, "extra": None}, SCHEMA)
    assert found == [
        "$.name: longer than 4 characters",
        "$.name: does not match ^[a-z]+$",
        "$.count: less than 1",
        "$.ratio: expected number, got boolean",
        "$.inner.x: required",
        "$.extra: unknown field",
    ]


def test_wrong_types_and_missing_fields() -> None:
    assert problems([], SCHEMA) == ["$: expected object, got array"]
    assert problems({"count": True}, SCHEMA) == ["$.name: required", "$.count: expected integer, got boolean"]
    assert problems({"name": "a", "count": 1.5}, SCHEMA) == [
        "$.name: shorter than 2 characters",
        "$.count: expected integer, got number",
    ]
