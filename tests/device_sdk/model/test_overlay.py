"""Site overlays: signed round trip, refusals (unsigned, forged, tampered, wrong model, unknown tier),
and the pure application to a manifest."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pytest

from edgecascade.device_sdk.counters import Counters
from edgecascade.device_sdk.errors import BundleError, ConfigError, SignatureError
from edgecascade.device_sdk.model.bundle import MANIFEST, ExitSpec, Manifest, load_bundle, sign_bundle
from edgecascade.device_sdk.model.overlay import (
    OverlayFile,
    SiteOverlay,
    apply_overlay,
    load_overlay,
    read_overlay,
    signature_path,
    write_overlay,
)
from edgecascade.device_sdk.model.signing import SIGNATURE, generate_signing_key
from tests.fake_bundle import make_bundle


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    return generate_signing_key(tmp_path / "keys")


@pytest.fixture
def manifest(tmp_path: Path) -> Manifest:
    return load_bundle(make_bundle(tmp_path / "bundle")).manifest


def overlay_for(manifest: Manifest, **changes: object) -> SiteOverlay:
    fields: dict[str, object] = {
        "model": manifest.name,
        "version": manifest.version,
        "site": "site-a",
        "exits": {"device": ExitSpec(0.42, manifest.partition("device").exit.temperature)},
        "examples": 250,
        "fitted_at": 1_700_000_000.0,
        "metrics": {"site_device_share": 0.9},
    }
    return SiteOverlay(**(fields | changes))  # type: ignore[arg-type]


def test_a_signed_overlay_round_trips_byte_for_byte(
    tmp_path: Path, keys: tuple[Path, Path], manifest: Manifest
) -> None:
    private, public = keys
    overlay = overlay_for(manifest)
    path = write_overlay(tmp_path / "overlay.json", overlay, private)
    assert signature_path(path).is_file()
    assert load_overlay(path, public, manifest) == overlay
    assert path.read_text() == overlay.to_json()  # canonical: what is signed is what is written
    assert SiteOverlay.from_dict(json.loads(overlay.to_json())).to_json() == overlay.to_json()


def test_applying_an_overlay_replaces_only_its_exits_and_leaves_the_manifest_alone(
    manifest: Manifest,
) -> None:
    overlay = overlay_for(manifest)
    applied = apply_overlay(manifest, overlay)
    assert applied.partition("device").exit == ExitSpec(0.42, manifest.partition("device").exit.temperature)
    assert applied.partition("gateway") == manifest.partition("gateway")
    assert manifest.partition("device").exit.threshold != 0.42  # pure: the original is unchanged
    assert dataclasses.replace(applied, partitions=manifest.partitions) == manifest
    assert apply_overlay(manifest, None) is manifest


def test_an_unsigned_overlay_is_refused(tmp_path: Path, keys: tuple[Path, Path], manifest: Manifest) -> None:
    private, public = keys
    path = write_overlay(tmp_path / "overlay.json", overlay_for(manifest), private)
    signature_path(path).unlink()
    with pytest.raises(SignatureError, match="not signed"):
        load_overlay(path, public, manifest)


def test_an_overlay_signed_by_another_key_is_refused(
    tmp_path: Path, keys: tuple[Path, Path], manifest: Manifest
) -> None:
    _, public = keys
    forger, _ = generate_signing_key(tmp_path / "forger")
    path = write_overlay(tmp_path / "overlay.json", overlay_for(manifest), forger)
    with pytest.raises(SignatureError, match="signed with key"):
        load_overlay(path, public, manifest)


def test_a_tampered_overlay_is_refused(tmp_path: Path, keys: tuple[Path, Path], manifest: Manifest) -> None:
    private, public = keys
    path = write_overlay(tmp_path / "overlay.json", overlay_for(manifest), private)
    path.write_text(path.read_text().replace("0.42", "0.05"))  # a lower threshold: more answers on the device
    with pytest.raises(SignatureError, match="changed after signing"):
        load_overlay(path, public, manifest)


def test_a_bundle_signature_does_not_pass_for_an_overlay(
    tmp_path: Path, keys: tuple[Path, Path], manifest: Manifest
) -> None:
    """One key signs both; the contexts differ, so a signed manifest is no signed overlay."""
    private, public = keys
    bundle = make_bundle(tmp_path / "signed")
    sign_bundle(bundle, private)
    path = tmp_path / "overlay.json"
    path.write_bytes((bundle / MANIFEST).read_bytes())
    signature_path(path).write_bytes((bundle / SIGNATURE).read_bytes())
    with pytest.raises(SignatureError, match="changed after signing"):
        read_overlay(path, public)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"version": 7}, "v7, not"),
        ({"model": "another-model"}, "another-model"),
        ({"exits": {"device": ExitSpec(0.5, score="margin")}}, "thresholds 'margin'"),
    ],
)
def test_an_overlay_for_another_model_version_or_score_is_refused(
    tmp_path: Path, keys: tuple[Path, Path], manifest: Manifest, changes: dict[str, object], message: str
) -> None:
    private, public = keys
    path = write_overlay(tmp_path / "overlay.json", overlay_for(manifest, **changes), private)
    with pytest.raises(BundleError, match=message):
        load_overlay(path, public, manifest)
    with pytest.raises(BundleError, match=message):
        apply_overlay(manifest, read_overlay(path, public))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda d: d["exits"].update(edge={"threshold": 0.5, "temperature": 1.0, "score": "max_prob"}),
            "tier",
        ),
        (lambda d: d["exits"]["device"].update(threshold=float("nan")), "finite threshold"),
        (lambda d: d["exits"]["device"].update(temperature=0), "temperature > 0"),
        (lambda d: d.update(site="a/b"), "site"),
        (lambda d: d.update(format=2), "format"),
        (lambda d: d.update(version="1"), "malformed"),
        (lambda d: d.pop("exits"), "malformed"),
    ],
)
def test_a_malformed_overlay_is_a_bundle_error(manifest: Manifest, edit: object, message: str) -> None:
    data = json.loads(overlay_for(manifest).to_json())
    edit(data)  # type: ignore[operator]
    with pytest.raises(BundleError, match=message):
        SiteOverlay.from_dict(data)


def test_a_node_keeps_the_manifest_when_its_overlay_is_refused(
    tmp_path: Path, keys: tuple[Path, Path], manifest: Manifest, caplog: pytest.LogCaptureFixture
) -> None:
    private, public = keys
    path = tmp_path / "overlay.json"
    source = OverlayFile(path, public)
    counters = Counters()
    with caplog.at_level(logging.WARNING, logger="edgecascade.device_sdk.model.overlay"):
        assert source.load(manifest, counters) is None  # no file yet
    assert counters["overlay_refused"] == 1 and "refused" in caplog.text
    write_overlay(path, overlay_for(manifest, version=manifest.version + 1), private)
    assert source.load(manifest, counters) is None  # made for another version
    assert counters["overlay_refused"] == 2
    write_overlay(path, overlay_for(manifest), private)
    assert source.load(manifest, counters) == overlay_for(manifest)
    assert counters["overlay_applied"] == 1


def test_an_overlay_file_needs_a_verify_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="verify key"):
        OverlayFile(tmp_path / "overlay.json", None)
