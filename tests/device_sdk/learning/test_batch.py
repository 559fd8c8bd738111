"""Upload batches and receipts: round trips, and typed rejections of bad input."""

from __future__ import annotations

import json

import pytest

from edgecascade.device_sdk.errors import BatchError, WireError
from edgecascade.device_sdk.learning.batch import Receipt, Rejection, encode_batch, parse_batch
from edgecascade.device_sdk.learning.records import MAX_BATCH
from tests.hard_example_fakes import example


def test_batch_round_trip() -> None:
    examples = [example(i) for i in range(3)]
    parsed, rejected = parse_batch(encode_batch([e.to_json() for e in examples]))
    assert parsed == examples
    assert rejected == []


def test_receipt_round_trip() -> None:
    receipt = Receipt(("a",), ("b", "c"), (Rejection("d", "bad"), Rejection(None, "no id")))
    assert Receipt.from_bytes(receipt.to_bytes()) == receipt
    assert receipt.acknowledged == {"a", "b", "c"}
    assert Receipt.from_json({}) == Receipt()  # every list is optional


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "malformed_json"),
        (b"\xff\xfe", "malformed_json"),
        (b"[]", "not_a_batch"),
        (b'{"examples": {}}', "not_a_batch"),
        (b'{"records": []}', "not_a_batch"),
        (json.dumps({"examples": [{}] * (MAX_BATCH + 1)}).encode(), "too_many"),
    ],
)
def test_whole_batch_rejections_are_typed(body: bytes, reason: str) -> None:
    with pytest.raises(BatchError) as err:
        parse_batch(body)
    assert err.value.reason == reason
    assert isinstance(err.value, WireError)


def test_bad_records_are_rejected_one_by_one() -> None:
    good = example(1).to_json()
    wrong_id = {**example(2).to_json(), "id": example(3).example_id}
    wrong_type = {**example(4).to_json(), "model_version": "1"}
    bad_base64 = {**example(5).to_json(), "features": "***"}
    long_id = {**example(6).to_json(), "id": "x" * 5000, "confidence": 2.0}
    parsed, rejected = parse_batch(
        {"examples": [good, wrong_id, wrong_type, "a string", bad_base64, long_id, {"id": 7}]}
    )
    assert [e.example_id for e in parsed] == [good["id"]]
    assert [r.id for r in rejected] == [
        example(3).example_id,
        example(4).example_id,
        None,
        example(5).example_id,
        None,
        None,
    ]
    reasons = [r.reason for r in rejected]
    assert "content id" in reasons[0]
    assert "model_version" in reasons[1]
    assert "JSON object" in reasons[2]
    assert "base64" in reasons[3]
    assert "confidence" in reasons[4]
    assert "missing field" in reasons[5]


def test_malformed_receipts_are_wire_errors() -> None:
    for bad in (b"nope", b"[]", b'{"accepted": "x"}', b'{"accepted": [1]}', b'{"rejected": [{"id": 1}]}'):
        with pytest.raises(WireError):
            Receipt.from_bytes(bad)
    with pytest.raises(BatchError):
        encode_batch([{}] * (MAX_BATCH + 1))
