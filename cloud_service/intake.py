"""Checking an uploaded batch of hard examples, item by item, without any I/O.

A batch is judged per record: each one is accepted, reported as a duplicate (its id was
seen earlier in the batch or is already stored), or rejected with a reason, so one bad
record never costs a device the rest of its upload. A reason reads ``<code>: <detail>``;
the codes are stable for clients (an outbox drops what can never be accepted):

``malformed``              not a valid record (:meth:`HardExample.from_json` says why)
``wrong_device``           a device token uploading another device's example
``unknown_model_version``  a version this cloud neither serves nor has served
``bad_tensor``             features (or raw input) in the wrong encoding, shape or not decodable
``bad_label``              ``predicted`` is not an index into the model's classes

A model version is known when the cloud serves it or has served it (the versions table of
:mod:`edgecascade.cloud_service.store`); each known version keeps the shape and encoding of its two
cuts, so examples from a previous version are checked against that version's cuts. This
does not depend on how versions get promoted: whatever bundle the cloud answers with is
recorded the first time it is seen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgecascade.device_sdk import wire
from edgecascade.device_sdk.errors import WireError
from edgecascade.device_sdk.learning.records import HardExample, HardExampleError
from edgecascade.device_sdk.model.bundle import Manifest
from edgecascade.device_sdk.wire import codec

CUT_TIERS = {"cut1": "device", "cut2": "gateway"}
"""The partition whose features each cut is."""


@dataclass(frozen=True)
class CutSpec:
    """What features at one cut look like: shape without batch, and wire encoding."""

    shape: tuple[int, ...]
    encoding: str


@dataclass(frozen=True)
class VersionSpec:
    """What intake needs to know about one model version."""

    version: int
    name: str
    num_classes: int
    input_shape: tuple[int, ...]
    cuts: dict[str, CutSpec]

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> VersionSpec:
        cuts = {}
        for cut, tier in CUT_TIERS.items():
            sent = manifest.sent_up(tier)  # cut features, or the raw input in the models mode
            assert sent is not None  # Manifest.from_dict guarantees it below the last tier
            cuts[cut] = CutSpec(sent.shape, manifest.partition(tier).encoding)
        return cls(manifest.version, manifest.name, len(manifest.classes), manifest.input.shape, cuts)

    def to_json(self) -> dict[str, Any]:
        return {
            "input_shape": list(self.input_shape),
            "cuts": {c: {"shape": list(s.shape), "encoding": s.encoding} for c, s in self.cuts.items()},
        }

    @classmethod
    def from_json(cls, version: int, name: str, num_classes: int, data: dict[str, Any]) -> VersionSpec:
        cuts = {c: CutSpec(tuple(s["shape"]), str(s["encoding"])) for c, s in data["cuts"].items()}
        return cls(version, name, num_classes, tuple(data["input_shape"]), cuts)


@dataclass(frozen=True)
class Checked:
    """A record that passed every check, with its features decoded (float32)."""

    example: HardExample
    features: np.ndarray


@dataclass
class BatchCheck:
    """The verdict on a batch: valid records (in order), duplicates and rejections."""

    valid: list[Checked]
    duplicates: list[str]
    rejected: list[dict[str, Any]]


class Rejected(HardExampleError):
    """One record is refused; ``code`` is one of the module's reason codes."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code


def check_record(record: Any, versions: dict[int, VersionSpec], device_name: str | None) -> Checked:
    """Parse and check one record, or raise :class:`Rejected`.

    ``device_name`` is the device a device token speaks for (None for a gateway token,
    which relays for every device of its site).
    """
    try:
        example = HardExample.from_json(record)
    except WireError as exc:
        raise Rejected("malformed", str(exc)) from None
    if device_name is not None and example.device_id != device_name:
        raise Rejected(
            "wrong_device",
            f"the token of device {device_name!r} cannot upload examples of {example.device_id!r}",
        )
    spec = versions.get(example.model_version)
    if spec is None:
        known = ", ".join(str(v) for v in sorted(versions)) or "none"
        raise Rejected("unknown_model_version", f"model version {example.model_version} (known: {known})")
    if example.predicted >= spec.num_classes:
        raise Rejected("bad_label", f"predicted {example.predicted} is not one of {spec.num_classes} classes")
    cut = spec.cuts[example.cut]
    if example.encoding != cut.encoding:
        raise Rejected("bad_tensor", f"{example.cut} of version {spec.version} is encoded as {cut.encoding}")
    try:  # shapes are checked against the version's before any size is computed from them
        features = codec.decode_features(example.features, cut.encoding, cut.shape)
    except WireError as exc:
        raise Rejected("bad_tensor", f"{example.cut} features: {exc}") from None
    try:
        raw = wire.decode_tensor(example.raw, spec.input_shape) if example.raw is not None else None
    except WireError as exc:
        raise Rejected("bad_tensor", f"raw input: {exc}") from None
    if raw is not None and (raw.dtype != np.uint8 or raw.shape != spec.input_shape):
        raise Rejected(
            "bad_tensor", f"raw input must be uint8{list(spec.input_shape)}, got {raw.dtype}{list(raw.shape)}"
        )
    return Checked(example, features)


def check_batch(
    records: list[Any], versions: dict[int, VersionSpec], device_name: str | None, stored: set[str]
) -> BatchCheck:
    """Judge every record of a batch; ``stored`` holds the ids already in the store."""
    result = BatchCheck([], [], [])
    seen: set[str] = set()
    for index, record in enumerate(records):
        try:
            checked = check_record(record, versions, device_name)
        except Rejected as exc:
            result.rejected.append({"index": index, "id": _claimed_id(record), "reason": str(exc)})
            continue
        example_id = checked.example.example_id
        if example_id in seen or example_id in stored:
            result.duplicates.append(example_id)
        else:
            seen.add(example_id)
            result.valid.append(checked)
    return result


def claimed_ids(records: list[Any]) -> list[str]:
    """The ids the records claim (to look up duplicates in one query before checking)."""
    return [i for i in (_claimed_id(r) for r in records) if i is not None]


def _claimed_id(record: Any) -> str | None:
    value = record.get("id") if isinstance(record, dict) else None
    return value if isinstance(value, str) and len(value) <= 64 else None
