"""Upload batches of hard examples and the receipts that answer them: the JSON every hop speaks.

A batch is ``{"examples": [record, ...]}`` with at most
:data:`~.records.MAX_BATCH` records (:class:`~.records.HardExample`
JSON). A receipt is ``{"accepted": [id, ...], "duplicates": [id, ...], "rejected":
[{"id": id, "reason": text}, ...]}``. A sender marks an id done only when the receipt lists it
as accepted or duplicate (both mean the receiver holds it durably) and gives up on an id
only when it is rejected; an id the receipt does not mention stays pending and is sent
again later, which is what makes uploads safe to repeat.

The same JSON is the body of the ``HARD_EXAMPLES`` / ``HARD_EXAMPLES_ACK`` envelopes between
device and gateway (encrypted like any other body) and of ``POST /v1/hard-examples``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from edgecascade.device_sdk.errors import BatchError, WireError
from edgecascade.device_sdk.learning.records import MAX_BATCH, HardExample, HardExampleError

MAX_ID = 64
"""Length of a content id (sha256 hex); longer claimed ids are not echoed back."""

MAX_REASON = 200
"""Longest rejection reason kept; longer ones are cut (a receiver must not echo unbounded text)."""


@dataclass(frozen=True)
class Rejection:
    """One record the receiver will never accept, and why. ``id`` is None when the record had none."""

    id: str | None
    reason: str


@dataclass(frozen=True)
class Receipt:
    """What a receiver did with one batch."""

    accepted: tuple[str, ...] = ()
    duplicates: tuple[str, ...] = ()
    rejected: tuple[Rejection, ...] = ()

    @property
    def acknowledged(self) -> frozenset[str]:
        """Ids the receiver holds durably (new or already held): done for the sender."""
        return frozenset(self.accepted) | frozenset(self.duplicates)

    def to_json(self) -> dict[str, Any]:
        return {
            "accepted": list(self.accepted),
            "duplicates": list(self.duplicates),
            "rejected": [{"id": r.id, "reason": r.reason} for r in self.rejected],
        }

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_json(), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: Any) -> Receipt:
        """Parse a receipt; a malformed one is a :class:`~edgecascade.device_sdk.errors.WireError`."""
        if not isinstance(data, dict):
            raise WireError("a receipt must be a JSON object")
        ids: dict[str, tuple[str, ...]] = {}
        for key in ("accepted", "duplicates"):
            value = data.get(key, [])
            if not isinstance(value, list) or not all(isinstance(i, str) for i in value):
                raise WireError(f"receipt {key} must be a list of ids")
            ids[key] = tuple(value)
        rejected = data.get("rejected", [])
        if not isinstance(rejected, list):
            raise WireError("receipt rejected must be a list")
        items = []
        for item in rejected:
            if (
                not isinstance(item, dict)
                or not isinstance(item.get("id"), str | None)
                or not isinstance(item.get("reason"), str)
            ):
                raise WireError('receipt rejected items must be {"id": id, "reason": text}')
            items.append(Rejection(item["id"], item["reason"][:MAX_REASON]))
        return cls(ids["accepted"], ids["duplicates"], tuple(items))

    @classmethod
    def from_bytes(cls, body: bytes) -> Receipt:
        try:
            data = json.loads(body)
        except (UnicodeDecodeError, ValueError):
            raise WireError("receipt is not JSON") from None
        return cls.from_json(data)


def encode_batch(records: Sequence[Mapping[str, Any]]) -> bytes:
    """The JSON body of an upload of ``records`` (HardExample JSON)."""
    if len(records) > MAX_BATCH:
        raise BatchError("too_many", f"a batch holds at most {MAX_BATCH} records, not {len(records)}")
    return json.dumps({"examples": list(records)}, separators=(",", ":")).encode()


def parse_batch(body: bytes | str | Any) -> tuple[list[HardExample], list[Rejection]]:
    """The valid examples of an upload and a rejection for every record that is not.

    ``body`` is the raw JSON (bytes or str) or already-parsed JSON. A batch that cannot be
    read as a whole (not JSON, not ``{"examples": [...]}``, more than ``MAX_BATCH`` records)
    raises :class:`~edgecascade.device_sdk.errors.BatchError`; one bad record never spoils the others.
    """
    if isinstance(body, bytes | bytearray | str):
        try:
            body = json.loads(body)
        except (UnicodeDecodeError, ValueError):
            raise BatchError("malformed_json", "the batch is not valid JSON") from None
    if not isinstance(body, dict) or not isinstance(body.get("examples"), list):
        raise BatchError("not_a_batch", 'a batch must be a JSON object {"examples": [...]}')
    records = body["examples"]
    if len(records) > MAX_BATCH:
        raise BatchError("too_many", f"a batch holds at most {MAX_BATCH} records, not {len(records)}")
    examples: list[HardExample] = []
    rejected: list[Rejection] = []
    for record in records:
        try:
            examples.append(HardExample.from_json(record))
        except HardExampleError as exc:
            claimed = record.get("id") if isinstance(record, dict) else None
            if not isinstance(claimed, str) or len(claimed) > MAX_ID:
                claimed = None  # nothing the sender could match, or too long to echo
            rejected.append(Rejection(claimed, str(exc)[:MAX_REASON]))
    return examples, rejected
