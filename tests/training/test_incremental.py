"""Class-incremental retraining: widening keeps the old answers, fine-tuning teaches the added classes.

The model here is the tiny network trained on the first eight Fashion-MNIST classes only
(cached like the other tiny fixtures); "Bag" and "Ankle boot" are the classes operators add.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgecascade.device_sdk.core.chain import run_partitions
from edgecascade.device_sdk.errors import ClassListError
from edgecascade.device_sdk.model.bundle import check_classes_grow, load_bundle
from edgecascade.training.data import Dataset
from tests.conftest import _cached_entry, _publish

KNOWN = 8


def _subset(data: Dataset, known: int) -> Dataset:
    train, test = data.y_train < known, data.y_test < known
    return Dataset(
        data.x_train[train], data.y_train[train], data.x_test[test], data.y_test[test], data.classes[:known]
    )


@pytest.fixture(scope="module")
def tiny8_dir(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, fmnist: Dataset
) -> Path:
    """``trained/`` and ``bundle/`` (float32, version 1) of the tiny model trained on eight classes."""
    from edgecascade.training.config import TrainConfig
    from edgecascade.training.export import export_bundle
    from edgecascade.training.train import train

    config = TrainConfig.tiny()
    entry, staging = _cached_entry(request, tmp_path_factory, "tiny8", ("first 8 classes", config))
    if staging is None:
        return entry
    start = time.monotonic()
    trained = train(config, _subset(fmnist, KNOWN), progress=False)
    trained.save(staging / "trained")
    export_bundle(trained, staging / "bundle", name="fashion-mnist-tiny8", version=1)
    return _publish(staging, entry, start)


def _added(data: Dataset, n: int, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` training images of the added classes, with their labels (8 and 9)."""
    pick = np.flatnonzero(data.y_train >= KNOWN)[offset : offset + n]
    return data.x_train[pick], data.y_train[pick]


def test_widening_keeps_every_old_logit_and_answer_in_keras_and_after_export(
    tiny8_dir: Path, fmnist: Dataset, tmp_path: Path
) -> None:
    from edgecascade.training.export import export_bundle
    from edgecascade.training.finetune import exit_logits
    from edgecascade.training.incremental import widen
    from edgecascade.training.train import load_trained

    trained = load_trained(tiny8_dir / "trained")
    wide = widen(trained, fmnist.classes)
    assert (
        wide.classes == fmnist.classes and trained.classes == fmnist.classes[:KNOWN]
    )  # the old one untouched
    assert wide.config.model.num_classes == 10 and wide.device is not trained.device
    assert [layer.name for layer in wide.gateway.layers] == [layer.name for layer in trained.gateway.layers]
    x = fmnist.x_test[:300]
    for old, new in zip(exit_logits(trained, x), exit_logits(wide, x), strict=True):
        assert new.shape == (300, 10)
        np.testing.assert_array_equal(new[:, :KNOWN], old)  # bit for bit before fine-tuning
        np.testing.assert_allclose(new[:, KNOWN:], np.repeat(old.mean(1, keepdims=True), 2, 1), atol=1e-5)
        assert (new.argmax(1) == old.argmax(1)).all()  # the added classes start below the best old one

    export_bundle(wide, tmp_path / "wide", name="fashion-mnist-tiny8", version=2)
    exported = load_bundle(tmp_path / "wide")
    assert check_classes_grow(
        load_bundle(tiny8_dir / "bundle").manifest.classes, exported.manifest.classes
    ) == (
        "Bag",
        "Ankle boot",
    )
    before = run_partitions(load_bundle(tiny8_dir / "bundle"), x).logits
    after = run_partitions(exported, x).logits
    for old, new in zip(before, after, strict=True):
        np.testing.assert_allclose(new[:, :KNOWN], old, atol=1e-4)  # LiteRT, float32 partitions
    assert widen(trained, trained.classes) is trained
    with pytest.raises(ClassListError):
        widen(trained, fmnist.classes[1:])


@pytest.mark.parametrize("raw", [True, False], ids=["raw-inputs", "cut1-features"])
def test_fine_tuning_a_widened_model_learns_the_added_classes_and_keeps_the_old(
    tiny8_dir: Path, fmnist: Dataset, raw: bool
) -> None:
    from edgecascade.training.finetune import FinetuneConfig, exit_logits, finetune
    from edgecascade.training.hard_examples import HardSet
    from edgecascade.training.incremental import widen
    from edgecascade.training.train import load_trained

    trained = load_trained(tiny8_dir / "trained")
    wide = widen(load_trained(tiny8_dir / "trained"), fmnist.classes)
    x_new, y_new = _added(fmnist, 200)
    shapes = {"raw": (28, 28, 1), "cut1": tuple(wide.device.outputs[1].shape[1:]), "cut2": (4, 4, 16)}
    if raw:
        items: list[Any] = [
            ("cut1", np.zeros(shapes["cut1"]), img, int(y)) for img, y in zip(x_new, y_new, strict=True)
        ]
    else:  # what a device sends by default: cut-1 features in their wire encoding, no raw input
        from edgecascade.training.finetune import _cut1

        items = [("cut1", f, None, int(y)) for f, y in zip(_cut1(wide, x_new), y_new, strict=True)]
    hard = HardSet.build(items, shapes)
    replay = np.random.default_rng(0).permutation(np.flatnonzero(fmnist.y_train < KNOWN))[:1000]
    summary = finetune(
        wide,
        hard,
        (fmnist.x_train[replay], fmnist.y_train[replay]),
        FinetuneConfig(epochs=3, learning_rate=1e-3),
    )
    assert summary["stages"] == ("device+gateway+cloud" if raw else "gateway+cloud")

    x, y = fmnist.x_test[:3000], fmnist.y_test[:3000]
    added, old = y >= KNOWN, y < KNOWN
    new_logits, old_logits = exit_logits(wide, x), exit_logits(trained, x)
    right = [z.argmax(1) == y for z in new_logits]
    learned = [float(r[added].mean()) for r in right]
    print(f"\n[incremental {'raw' if raw else 'cut1'}] added-class accuracy per exit {np.round(learned, 3)}")
    trainable = learned if raw else learned[1:]
    assert min(trainable) > 0.5  # chance is 0.1 over ten classes
    if not raw:  # the frozen device exit never answers an added class (see finetune's docstring)
        assert learned[0] == 0.0 and (new_logits[0].argmax(1) < KNOWN).all()
    for before, after in zip(old_logits, right, strict=True):
        assert float(after[old].mean()) > float((before.argmax(1) == y)[old].mean()) - 0.05


def test_a_retrain_job_with_named_classes_publishes_a_manifest_with_them(
    tiny8_dir: Path, fmnist: Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgecascade.cloud_service import retrain_job
    from edgecascade.cloud_service.config import RetrainSettings
    from edgecascade.cloud_service.intake import Checked, VersionSpec
    from edgecascade.cloud_service.jobs import JobSpec, JobStore
    from edgecascade.cloud_service.store import open_example_store
    from edgecascade.device_sdk.wire import codec
    from tests.learning_kit import device_examples, with_raw

    served = tiny8_dir / "bundle"
    manifest = load_bundle(served).manifest
    database = f"sqlite:///{tmp_path / 'cloud.db'}"
    store = open_example_store(database, tmp_path / "blobs")
    store.record_version(VersionSpec.from_manifest(manifest))
    x_new, y_new = _added(fmnist, 160, offset=500)
    examples = [with_raw(e, img) for e, img in zip(device_examples(served, x_new), x_new, strict=True)]
    checked = [Checked(e, codec.decode_features(e.features, e.encoding)) for e in examples]
    store.add(checked, [e.predicted for e in examples])  # the teacher can only name an old class
    for example, label in zip(examples, y_new, strict=True):  # the operators' naming sets the human label
        store.set_human_label(example.example_id, int(label))
    named: list[tuple[str, ...]] = []

    def class_list(examples_store: Any, served_manifest: Any) -> tuple[str, ...]:
        named.append(served_manifest.classes)
        return (*served_manifest.classes, "Bag", "Ankle boot")

    monkeypatch.setattr(retrain_job, "class_list", class_list)
    settings = RetrainSettings(
        checkpoint=tiny8_dir / "trained",
        models_dir=tmp_path / "models",
        jobs_dir=tmp_path / "jobs",
        replay_size=1000,
        epochs=3,
        learning_rate=1e-3,
        test_size=1000,
        val_size=500,
        min_holdout=10,
        min_gain=0.0,
        tolerance=5.0,
    )
    job = JobStore(store.engine).create("cli")
    assert job is not None
    spec = JobSpec(
        job.id,
        database,
        tmp_path / "blobs",
        served,
        None,
        tmp_path / "jobs" / "job.log",
        time.time() + 60,
        settings,
    )
    assert retrain_job.run_job(spec) == "succeeded", JobStore(store.engine).get(job.id)
    row = JobStore(store.engine).get(job.id)
    assert row is not None and row.metrics is not None and named == [manifest.classes]
    metrics = row.metrics
    print(
        f"\n[incremental job] { ({k: metrics[k] for k in ('new_classes_accuracy', 'old_classes_change')}) }"
    )
    assert metrics["new_classes"] == ["Bag", "Ankle boot"]
    assert metrics["new_classes_accuracy"] > 0.35 and metrics["old_classes_change"] > -5.0
    gate = metrics["gate"]
    assert gate["candidate"]["n_new_classes"] == gate["current"]["n_new_classes"] > 0
    assert gate["current"]["n_new"] == 0 and gate["current"]["new_classes"] is None  # never compared
    assert gate["candidate"]["new_classes"] == metrics["new_classes_accuracy"]
    assert "added classes" in gate["reason"]
    published = load_bundle(tmp_path / "models" / "v2").manifest
    assert published.classes == fmnist.classes and published.version == 2
    assert all(p.logits.shape == (10,) for p in published.partitions)
    assert load_bundle(served).manifest == manifest  # the served bundle is only read


def test_the_replay_images_keep_the_old_answers_and_the_labelled_ones_teach_their_label() -> None:
    from edgecascade.training.finetune import keep_old_answers

    rng = np.random.default_rng(0)
    logits = [rng.normal(0, 3, (6, 10)).astype(np.float32) for _ in range(3)]  # 4 replay rows, 2 labelled
    y = np.array([0, 3, 5, 7, 8, 9])
    targets = keep_old_answers(logits, y, replay_rows=4, known=KNOWN)
    for z, target in zip(logits, targets, strict=True):
        assert target.shape == (6, 20)
        np.testing.assert_array_equal(target[:, :10], np.eye(10)[y])  # the labels, as always
        teacher = target[:, 10:]
        np.testing.assert_array_equal(teacher[:4, :KNOWN], z[:4, :KNOWN])  # the model's own old answers
        soft = np.exp(teacher[:4] / 2) / np.exp(teacher[:4] / 2).sum(axis=1, keepdims=True)
        assert soft[:, KNOWN:].max() < 1e-4  # replay images are of no added class
        assert (teacher[4:].argmax(axis=1) == y[4:]).all()  # a labelled example: its label
        assert (teacher[4:].max(axis=1) - np.sort(teacher[4:], axis=1)[:, -2] >= 20).all()
