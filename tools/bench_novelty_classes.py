"""``bench novelty``'s new classes: from unknown uploads to a model that knows them, through the cloud.

The cloud is the real app (:func:`~edgecascade.cloud_service.app.create_app`: registry, token
store, hard-example store on SQLite, retraining jobs as their own processes), called
in-process through Flask's test client; the device side is the bundle's device partition
and its shipped unknown-input rule:

1. **uploads**: the first half of the stream goes through the device partition; every input
   its rule flags is uploaded (``POST /v1/hard-examples``, reason ``unknown``, raw input
   kept) until ``LABELS_PER_CLASS`` inputs of each held-out class have been, the operator's
   labelling budget (the known-class inputs the rule also flags are uploaded alongside);
2. **groups**: ``POST /v1/unknown-groups/refresh``; the operator looks at each group (here:
   the true classes of its members) and names it after its majority class when that is a
   held-out one (``PUT /v1/unknown-groups/<id>``), which labels every member;
3. **one retrain**: ``POST /v1/retrain``; the job widens the model to the named classes,
   fine-tunes it on the labelled examples and a replay of the original training data, gates
   and exports it (``GET /v1/jobs/<id>`` followed until it ends);
4. **after**: the candidate bundle and the served one run the second half of the stream
   (never uploaded) as a cascade (:func:`offline_cascade`): accuracy on the held-out
   classes' inputs (``new_classes_accuracy``) and the change of accuracy on the known
   classes' inputs (``old_classes_change``, points).
"""

from __future__ import annotations

import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edgecascade.device_sdk import wire
from edgecascade.device_sdk.core.policy import softmax
from edgecascade.device_sdk.learning.records import MAX_BATCH, HardExample
from edgecascade.device_sdk.model.bundle import load_bundle, sign_bundle
from edgecascade.device_sdk.model.signing import generate_signing_key
from edgecascade.device_sdk.wire import codec
from edgecascade.tools.bench_drift_report import offline_cascade
from edgecascade.tools.bench_novelty_drift import device_pass
from edgecascade.training.data import Dataset

LABELS_PER_CLASS = 50
"""Most unknown uploads of each held-out class the operator is shown and labels."""
DEVICE = "cam-01"
JOB_TIMEOUT = 1800.0


@dataclass(frozen=True)
class JobOptions:
    """The retraining job's settings the bench chooses (the rest are the cloud's defaults)."""

    epochs: int = 5
    replay_size: int = 12_000
    hard_weight: float = 10.0  # a few dozen examples of each added class against 1,500 replayed per old one


@dataclass(frozen=True)
class Stream:
    """The streamed inputs, their true class names, and which are of a held-out class."""

    x: np.ndarray
    names: np.ndarray
    is_new: np.ndarray

    def part(self, index: slice) -> Stream:
        return Stream(self.x[index], self.names[index], self.is_new[index])


class BenchCloud:
    """The cloud app on a signed copy of the bundle, with an admin and a device token."""

    def __init__(
        self, workdir: Path, bundle_dir: Path, checkpoint: Path, known: Dataset, job: JobOptions
    ) -> None:
        from edgecascade.cloud_service.app import create_app
        from edgecascade.cloud_service.config import (
            CloudConfig,
            CloudSettings,
            RegistrySettings,
            RetrainSettings,
        )

        signing_key, verify_key = generate_signing_key(workdir / "keys")
        served = workdir / "served"
        shutil.copytree(bundle_dir, served)
        sign_bundle(served, signing_key)
        gateway_key = workdir / "keys" / "gateway-x25519.pub"
        gateway_key.write_bytes(
            X25519PrivateKey.generate()
            .public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
        data = workdir / "known.npz"  # the original data the job replays: the taught classes only
        np.savez(
            data,
            x=known.x_train,
            y=known.y_train,
            x_test=known.x_test,
            y_test=known.y_test,
            classes=np.array(known.classes),
        )
        state = workdir / "state"
        config = CloudConfig(
            CloudSettings(
                bundle=served,
                verify_key=verify_key,
                token_store=state / "tokens.db",
                device_keyring=state / "device-keys",
                gateway_public_key=gateway_key,
                database_url=f"sqlite:///{state / 'cloud.db'}",
                blob_dir=state / "blobs",
            ),
            RegistrySettings(models_dir=workdir / "models", signing_key=signing_key),
            retrain=RetrainSettings(  # as bench drift's job, but a gate that allows the target's loss
                checkpoint=checkpoint,
                jobs_dir=state / "jobs",
                data=data,
                count_threshold=0,
                signing_key=signing_key,
                epochs=job.epochs,
                replay_size=job.replay_size,
                hard_weight=job.hard_weight,
                tolerance=1.0,  # points an exit may lose on the original test data: the target's budget
                min_holdout=10,  # 20 % of a 100-label budget is held out for the gate
            ),
        )
        self.app = create_app(config)
        self.models_dir = workdir / "models"
        self.client = self.app.test_client()
        tokens = self.app.extensions["edgecascade.tokens"]
        self.admin = {"Authorization": f"Bearer {tokens.create('admin', 'operator')[0]}"}
        self.device = {"Authorization": f"Bearer {tokens.create('device', DEVICE)[0]}"}

    def call(self, method: str, route: str, body: Any = None, *, device: bool = False) -> Any:
        """One JSON call; a RuntimeError with the cloud's message on anything but 2xx."""
        headers = self.device if device else self.admin
        answer = self.client.open(route, method=method, json=body, headers=headers)
        if answer.status_code >= 300:
            raise RuntimeError(f"{method} {route}: {answer.status_code} {answer.get_data(as_text=True)}")
        return answer.json


def flagged_uploads(bundle_dir: Path, stream: Stream, per_class: int) -> tuple[list[HardExample], np.ndarray]:
    """The device's ``unknown`` uploads of ``stream`` until ``per_class`` of each held-out class;
    and the true class name of each."""
    bundle = load_bundle(bundle_dir)
    manifest = bundle.manifest
    spec = manifest.partition("device")
    done = device_pass(bundle, stream.x)
    if done.unknown is None:
        raise ValueError(f"{bundle_dir}: the device exit has no unknown-input rule")
    counts: Counter[str] = Counter()
    new_names = set(stream.names[stream.is_new].tolist())
    examples, names = [], []
    for i in np.flatnonzero(done.unknown):
        if all(counts[c] >= per_class for c in new_names):
            break
        name = str(stream.names[i])
        if name in new_names and counts[name] >= per_class:
            continue
        counts[name] += 1
        examples.append(
            HardExample.answered(
                device_id=DEVICE,
                model_version=manifest.version,
                encoding=spec.encoding,
                features=codec.encode_features(done.sent[i], spec.encoding),
                reasons=("unknown",),
                label=int(done.logits[i].argmax()),
                probabilities=softmax(done.logits[i], spec.exit.temperature),
                tier="device",
                created_at=time.time(),
                raw=wire.encode_tensor(np.asarray(stream.x[i], dtype=np.uint8)),
            )
        )
        names.append(name)
    return examples, np.array(names)


def name_groups(cloud: BenchCloud, true_name: dict[str, str], new_names: set[str]) -> list[dict[str, Any]]:
    """Group the unknown uploads; name each group whose majority is a held-out class after it."""
    cloud.call("POST", "/v1/unknown-groups/refresh")
    seen = []
    for group in cloud.call("GET", "/v1/unknown-groups")["groups"]:
        members: list[str] = []
        cursor = ""
        while True:
            page = cloud.call("GET", f"/v1/unknown-groups/{group['id']}?limit=500&cursor={cursor}")
            members += [e["id"] for e in page["examples"]]
            cursor = page.get("next_cursor") or ""
            if not cursor:
                break
        classes = Counter(true_name[m] for m in members)
        majority, count = classes.most_common(1)[0]
        named = majority in new_names
        if named:
            cloud.call("PUT", f"/v1/unknown-groups/{group['id']}", {"class_name": majority})
        seen.append(
            {"size": len(members), "majority": majority, "purity": count / len(members), "named": named}
        )
    return seen


def follow_job(cloud: BenchCloud, progress: bool) -> dict[str, Any]:
    """Start one retraining job and follow it to its end; its last status."""
    job = cloud.call("POST", "/v1/retrain")
    deadline, stage = time.monotonic() + JOB_TIMEOUT, ""
    while True:
        status: dict[str, Any] = cloud.call("GET", f"/v1/jobs/{job['id']}")
        if progress and status.get("stage") != stage:
            stage = status.get("stage") or ""
            print(f"  retraining: {stage}", file=sys.stderr, flush=True)
        if status["state"] not in ("queued", "running"):
            return status
        if time.monotonic() > deadline:
            raise RuntimeError(f"the retraining job did not end within {JOB_TIMEOUT:.0f} s")
        time.sleep(1.0)


def learn_new_classes(
    workdir: Path,
    bundle_dir: Path,
    checkpoint: Path,
    known: Dataset,
    stream: Stream,
    job_options: JobOptions = JobOptions(),
    progress: bool = True,
) -> dict[str, Any]:
    """The ``new_classes`` section of the report (see the module docstring)."""
    first, second = stream.part(slice(0, len(stream.x) // 2)), stream.part(slice(len(stream.x) // 2, None))
    new_names = set(stream.names[stream.is_new].tolist())
    cloud = BenchCloud(workdir / "cloud", bundle_dir, checkpoint, known, job_options)
    examples, names = flagged_uploads(bundle_dir, first, LABELS_PER_CLASS)
    for i in range(0, len(examples), MAX_BATCH):
        batch = [e.to_json() for e in examples[i : i + MAX_BATCH]]
        cloud.call("POST", wire.ROUTE_HARD_EXAMPLES, {"examples": batch}, device=True)
    true_name = {e.example_id: str(n) for e, n in zip(examples, names, strict=True)}
    groups = name_groups(cloud, true_name, new_names)
    job = follow_job(cloud, progress)
    report: dict[str, Any] = {
        "uploads": {"total": len(examples), "by_class": dict(Counter(names.tolist()))},
        "groups": groups,
        "labelled": sum(g["size"] for g in groups if g["named"]),
        "job": {k: job.get(k) for k in ("state", "candidate_version", "metrics", "error")},
        "new_classes_accuracy": None,
        "old_classes_change": None,
    }
    if job.get("candidate_version") is None:
        return report
    before = load_bundle(bundle_dir)
    after = load_bundle(cloud.models_dir / f"v{job['candidate_version']}")
    old = ~second.is_new
    old_y = np.array([before.manifest.classes.index(n) for n in second.names[old]])
    new_y = np.array([after.manifest.classes.index(n) for n in second.names[~old]])
    old_before = offline_cascade(before, second.x[old], old_y)
    old_after = offline_cascade(after, second.x[old], old_y)
    new_after = offline_cascade(after, second.x[~old], new_y)
    report |= {
        "classes": list(after.manifest.classes),
        "evaluated": {"old": int(old.sum()), "new": int((~old).sum())},
        "new_classes_accuracy": new_after["accuracy"],
        "new_classes_device_share": new_after["device_share"],
        "old_classes_accuracy": {"before": old_before["accuracy"], "after": old_after["accuracy"]},
        "old_classes_change": 100 * (old_after["accuracy"] - old_before["accuracy"]),
    }
    return report
