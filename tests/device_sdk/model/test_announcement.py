"""Model announcements: canonical, signed under their own context, strictly parsed."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from edgecascade.device_sdk.errors import SignatureError, WireError
from edgecascade.device_sdk.model.announcement import Announcement, release_name, release_path
from edgecascade.device_sdk.model.signing import generate_signing_key, key_id, load_public_key, sign_manifest

SHA = "ab" * 32


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return generate_signing_key(tmp_path_factory.mktemp("keys"))


def test_signed_announcement_round_trips_and_verifies(keys: tuple[Path, Path]) -> None:
    a = Announcement("m", 3, SHA, rollback_of=5, url="https://c/v1/models/3/rollback-of/5", issued_at=1.5)
    signed = a.sign(keys[0])
    assert signed.key_id == key_id(load_public_key(keys[1]))
    parsed = Announcement.from_bytes(signed.to_bytes())
    assert parsed == signed
    parsed.verify(keys[1])
    assert parsed.release == "v3-rollback-of-5" == release_name(3, 5)
    assert release_path(3, 5) == "/v1/models/3/rollback-of/5" and release_path(2) == "/v1/models/2"


def test_changed_fields_foreign_keys_and_bundle_signatures_do_not_verify(
    keys: tuple[Path, Path], tmp_path: Path
) -> None:
    signed = Announcement("m", 2, SHA, issued_at=1.0).sign(keys[0])
    for changed in (
        dataclasses.replace(signed, version=3),
        dataclasses.replace(signed, manifest_sha256="cd" * 32),
        dataclasses.replace(signed, rollback_of=9),
        dataclasses.replace(signed, url="https://elsewhere/"),
    ):
        with pytest.raises(SignatureError, match="does not verify"):
            changed.verify(keys[1])
    other = generate_signing_key(tmp_path / "other")
    with pytest.raises(SignatureError, match="signed with key"):
        Announcement("m", 2, SHA).sign(other[0]).verify(keys[1])
    # a bundle signature by the same key over the same bytes is no announcement signature
    record = json.loads(sign_manifest(signed.signed_bytes(), keys[0]))
    with pytest.raises(SignatureError):
        dataclasses.replace(signed, signature=record["signature"]).verify(keys[1])


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        (b"not json", "not JSON"),
        (b"[1]", "JSON object"),
        (b"{}", "missing field"),
        (b"x" * 9000, "larger than"),
    ],
)
def test_malformed_payloads_are_wire_errors(payload: bytes, problem: str) -> None:
    with pytest.raises(WireError, match=problem):
        Announcement.from_bytes(payload)


def test_every_bad_field_is_reported() -> None:
    raw = json.loads(Announcement("m", 2, SHA).to_bytes())
    raw.update(version=True, rollback_of=1, manifest_sha256="XYZ", issued_at="now", key_id="k", extra=1)
    with pytest.raises(WireError) as caught:
        Announcement.from_bytes(json.dumps(raw).encode())
    assert "unknown field 'extra'" in str(caught.value)
    del raw["extra"]
    with pytest.raises(WireError) as caught:
        Announcement.from_bytes(json.dumps(raw).encode())
    for field in ("version", "rollback_of", "manifest_sha256", "issued_at", "key_id"):
        assert field in str(caught.value)
