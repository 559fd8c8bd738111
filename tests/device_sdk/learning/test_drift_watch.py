"""The device client's drift watch on the real tiny bundle: alarm, raised audit, a ``drift`` example."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np

from edgecascade.device_sdk.client import DeviceClient
from edgecascade.device_sdk.core.drift import DriftSettings
from edgecascade.device_sdk.learning.outbox import Outbox
from edgecascade.device_sdk.learning.selection import AuditSample, HardExampleSelector
from edgecascade.device_sdk.model.bundle import DriftSpec, load_bundle, write_manifest
from edgecascade.training.data import Dataset

# a reference no real input meets: every answer is far less sure than this
SURE = DriftSpec(
    confidence_mean=0.999, confidence_std=0.001, device_share=1.0, unknown_share=0.0, samples=100
)


def with_reference(src: Path, dst: Path, spec: DriftSpec | None, version: int = 1) -> Path:
    shutil.copytree(src, dst)
    manifest = load_bundle(dst).manifest
    device = dataclasses.replace(manifest.partition("device"), drift=spec)
    write_manifest(
        dst, dataclasses.replace(manifest, version=version, partitions=(device, *manifest.partitions[1:]))
    )
    return dst


def test_an_alarm_raises_the_audit_rate_and_keeps_a_drift_example(
    tmp_path: Path, tiny_bundle: Path, fmnist: Dataset
) -> None:
    bundle = load_bundle(with_reference(tiny_bundle, tmp_path / "b1", SURE), tiers=("device",))
    outbox = Outbox(tmp_path / "outbox.db")
    settings = DriftSettings(threshold=5.0, audit_rate=1.0, cooldown=10_000)
    client = DeviceClient(bundle, "cam-01", outbox=outbox, selector=HardExampleSelector([]), drift=settings)
    first = client.predict_batch(fmnist.x_test[:8])
    assert client.counters.snapshot()["drift_alarms"] == 1  # the cooldown holds the others back
    assert first[0].hard_example is not None  # the first input already raised it (threshold 5 sd)
    records = [r.record for r in outbox.pending(100)]
    assert [r["reasons"] for r in records if "drift" in r["reasons"]] == [["audit", "drift"]]
    assert client.drift.raised_on == 1

    after = client.predict_batch(fmnist.x_test[8:16])
    assert all(p.hard_example is not None for p in after)  # the audit sample is now every input
    assert {tuple(r.record["reasons"]) for r in outbox.pending(100)[1:]} == {("audit",)}
    assert len(outbox.pending(100)) == 16

    lenient = DriftSpec(confidence_mean=0.0, confidence_std=1.0, device_share=0.0, unknown_share=1.0)
    client.swap_bundle(
        load_bundle(with_reference(tiny_bundle, tmp_path / "b2", lenient, 2), tiers=("device",))
    )
    client.predict_batch(fmnist.x_test[16:17])  # a new version: a fresh detector, the audit rate back
    assert client.drift.raised_on is None
    assert client.drift.selector(client.selector, 2) is client.selector


def test_without_a_reference_or_when_disabled_nothing_is_watched(
    tmp_path: Path, tiny_bundle: Path, fmnist: Dataset
) -> None:
    plain = load_bundle(with_reference(tiny_bundle, tmp_path / "plain", None), tiers=("device",))
    sure = load_bundle(with_reference(tiny_bundle, tmp_path / "sure", SURE), tiers=("device",))
    for bundle, settings in ((plain, DriftSettings(threshold=1.0)), (sure, DriftSettings(enabled=False))):
        client = DeviceClient(bundle, "cam-01", drift=settings)
        client.predict_batch(fmnist.x_test[:20])
        assert "drift_alarms" not in client.counters.snapshot()


def test_the_raised_audit_sample_keeps_a_higher_configured_rate() -> None:
    base = HardExampleSelector([AuditSample(0.5)])
    assert base.with_audit_rate(0.2) is base
    raised = base.with_audit_rate(0.9).filters
    assert [f.rate for f in raised if isinstance(f, AuditSample)] == [0.9]
    assert np.isclose(len(raised), 1)
