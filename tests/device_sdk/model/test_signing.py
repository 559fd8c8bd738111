"""Signed bundles: tampering, foreign keys, missing signatures, rollbacks and verified updates.

The bundles here hold random bytes in place of LiteRT partitions (:mod:`tests.fake_bundle`):
signing and verifying only read bytes and hashes, so these tests need neither TensorFlow
nor a trained model.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edgecascade.device_sdk.errors import BundleError, ConfigError, RollbackError, SignatureError
from edgecascade.device_sdk.model.bundle import (
    MANIFEST,
    Manifest,
    load_bundle,
    load_verified_update,
    sign_bundle,
)
from edgecascade.device_sdk.model.signing import (
    SIGNATURE,
    SIGNING_KEY_FILE,
    SIGNING_PUB_FILE,
    generate_signing_key,
    key_id,
    load_public_key,
)
from tests.fake_bundle import make_bundle


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return generate_signing_key(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def other_keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return generate_signing_key(tmp_path_factory.mktemp("other-keys"))


@pytest.fixture
def signed(tmp_path: Path, keys: tuple[Path, Path]) -> Path:
    bundle = make_bundle(tmp_path / "v1")
    sign_bundle(bundle, keys[0])
    return bundle


def test_signed_bundle_verifies_with_the_key_file_or_object(signed: Path, keys: tuple[Path, Path]) -> None:
    record = json.loads((signed / SIGNATURE).read_text())
    assert record["algorithm"] == "ed25519"
    assert record["key_id"] == key_id(load_public_key(keys[1]))
    assert len(base64.b64decode(record["signature"])) == 64
    by_path = load_bundle(signed, public_key=keys[1])
    by_key = load_bundle(signed, public_key=load_public_key(keys[1]))
    assert by_path.manifest == by_key.manifest and by_path.manifest.version == 1


def test_key_files_have_the_agreed_names_and_modes_and_are_not_replaced(keys: tuple[Path, Path]) -> None:
    private, public = keys
    assert (private.name, public.name) == (SIGNING_KEY_FILE, SIGNING_PUB_FILE)
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert b"BEGIN PRIVATE KEY" in private.read_bytes() and b"BEGIN PUBLIC KEY" in public.read_bytes()
    before = private.read_bytes()
    with pytest.raises(ConfigError, match="refusing to replace"):
        generate_signing_key(private.parent)
    assert private.read_bytes() == before


def test_one_byte_changed_in_a_partition_is_refused(signed: Path, keys: tuple[Path, Path]) -> None:
    path = signed / "gateway.tflite"
    data = bytearray(path.read_bytes())
    data[10] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"gateway\.tflite does not match its sha256"):
        load_bundle(signed, public_key=keys[1])


def test_one_byte_changed_in_the_manifest_is_refused(signed: Path, keys: tuple[Path, Path]) -> None:
    text = (signed / MANIFEST).read_text()
    assert '"threshold": 0.8' in text
    (signed / MANIFEST).write_text(text.replace('"threshold": 0.8', '"threshold": 0.1', 1))
    load_bundle(signed)  # still a well-formed manifest: only the signature can tell
    with pytest.raises(SignatureError, match="changed after signing"):
        load_bundle(signed, public_key=keys[1])


def test_signature_by_another_key_is_refused(
    signed: Path, keys: tuple[Path, Path], other_keys: tuple[Path, Path]
) -> None:
    sign_bundle(signed, other_keys[0])
    with pytest.raises(SignatureError, match="signed with key"):
        load_bundle(signed, public_key=keys[1])
    # a forged key id does not help: the signature itself is checked with the trusted key
    record = json.loads((signed / SIGNATURE).read_text())
    record["key_id"] = key_id(load_public_key(keys[1]))
    (signed / SIGNATURE).write_text(json.dumps(record))
    with pytest.raises(SignatureError, match="does not match"):
        load_bundle(signed, public_key=keys[1])


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "not signed"),
        (b"not json", "malformed"),
        (b'{"algorithm": "ed25519", "key_id": "x"}', "malformed"),
        (b'{"algorithm": "rsa", "key_id": "x", "signature": "AAAA"}', "unsupported"),
        (b" " * 5000, "larger than"),
    ],
)
def test_missing_or_malformed_signature_file_is_refused(
    signed: Path, keys: tuple[Path, Path], content: bytes | None, message: str
) -> None:
    if content is None:
        (signed / SIGNATURE).unlink()
    else:
        (signed / SIGNATURE).write_bytes(content)
    with pytest.raises(SignatureError, match=message):
        load_bundle(signed, public_key=keys[1])
    load_bundle(signed)  # without a trusted key nothing is checked: verification is opt-in per node


def test_a_wrong_kind_of_key_file_is_a_config_error(tmp_path: Path, signed: Path) -> None:
    x25519 = X25519PrivateKey.generate().public_key()
    pem = tmp_path / "x25519.pub"
    pem.write_bytes(
        x25519.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(ConfigError, match="expected an Ed25519 public key"):
        load_bundle(signed, public_key=pem)
    with pytest.raises(ConfigError, match="cannot read verify key"):
        load_bundle(signed, public_key=tmp_path / "missing.pub")


def test_version_rules(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    v2 = make_bundle(tmp_path / "v2", version=2)
    sign_bundle(v2, keys[0])
    assert load_bundle(v2, public_key=keys[1], min_version=1).manifest.version == 2  # upgrade
    assert load_bundle(v2, public_key=keys[1], min_version=2).manifest.version == 2  # same version
    with pytest.raises(RollbackError, match="older than the running version 3"):
        load_bundle(v2, public_key=keys[1], min_version=3)


def test_a_signed_rollback_is_accepted_only_up_to_the_version_it_names(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    rollback = make_bundle(tmp_path / "rb", version=2, rollback_of=4)
    sign_bundle(rollback, keys[0])
    assert '"rollback_of": 4' in (rollback / MANIFEST).read_text()
    for running in (3, 4):
        assert load_verified_update(rollback, keys[1], running).manifest.version == 2
    with pytest.raises(RollbackError):  # an old rollback replayed after v5 shipped
        load_verified_update(rollback, keys[1], 5)


def test_rollback_permission_cannot_be_added_after_signing(signed: Path, keys: tuple[Path, Path]) -> None:
    data = json.loads((signed / MANIFEST).read_text())
    data["rollback_of"] = 9
    (signed / MANIFEST).write_text(json.dumps(data, sort_keys=True, indent=2) + "\n")
    with pytest.raises(SignatureError):
        load_verified_update(signed, keys[1], 5)


def test_failed_update_leaves_the_running_bundle_untouched(
    tmp_path: Path, signed: Path, keys: tuple[Path, Path], other_keys: tuple[Path, Path]
) -> None:
    running = load_verified_update(signed, keys[1], 0)
    files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in signed.iterdir()}
    update = make_bundle(tmp_path / "v2", version=2, seed=1)
    sign_bundle(update, other_keys[0])
    with pytest.raises(SignatureError):
        load_verified_update(update, keys[1], running.manifest.version)
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in signed.iterdir()} == files
    assert load_verified_update(signed, keys[1], running.manifest.version) == running
    sign_bundle(update, keys[0])
    new = load_verified_update(update, keys[1], running.manifest.version)
    assert new.manifest.version == 2 and running.manifest.version == 1


def test_manifest_json_is_canonical_and_signing_canonicalises(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    bundle = make_bundle(tmp_path / "b")
    manifest = load_bundle(bundle).manifest
    text = manifest.to_json()
    assert "rollback_of" not in text  # unset: manifests written before the field keep their bytes
    assert Manifest.from_dict(json.loads(text)).to_json() == text
    assert dataclasses.replace(manifest).to_json() == text
    (bundle / MANIFEST).write_text(json.dumps(json.loads(text)))  # same content, other whitespace
    sign_bundle(bundle, keys[0])
    assert (bundle / MANIFEST).read_text() == text
    assert load_bundle(bundle, public_key=keys[1]).manifest == manifest


def test_signing_refuses_a_bundle_whose_files_do_not_match(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    bundle = make_bundle(tmp_path / "b")
    (bundle / "cloud.tflite").write_bytes(b"swapped")
    with pytest.raises(BundleError, match="sha256"):
        sign_bundle(bundle, keys[0])
    assert not (bundle / SIGNATURE).exists()


def test_manifest_rejects_paths_and_inconsistent_rollbacks(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "b")
    data = json.loads((bundle / MANIFEST).read_text())
    data["partitions"][2]["file"] = "../../elsewhere.tflite"
    with pytest.raises(BundleError, match="plain file name"):
        Manifest.from_dict(data)
    data = json.loads((bundle / MANIFEST).read_text())
    data["rollback_of"] = 1
    with pytest.raises(BundleError, match="rollback_of"):
        Manifest.from_dict(data)
