"""One retraining job, in its own process: ``python -m edgecascade.training.retrain_job <spec.json>``.

Steps (each one reported as the job's stage and progress):

1. load the served bundle and the Keras checkpoint it came from (twice: the current model
   and the one to fine-tune);
2. load the labelled hard examples received up to the job's watermark, split by id hash
   into training, the gate's held-out slice and a calibration slice, and a replay sample of
   the original data;
3. fine-tune (:mod:`edgecascade.training.finetune`), then fit temperatures and thresholds again
   (:func:`edgecascade.training.train.calibrate`, the same accuracy rule) on the original validation
   split plus the calibration slice: thresholds must hold on what the nodes see now, not
   only on what they saw before. Only *audited* examples with their raw input go there: the
   audit sample is uniform over the node's inputs, while the other hard examples are by
   construction where the exits struggled and would bias every threshold upwards;
4. run the evaluation gate (:mod:`edgecascade.training.gate`); a rejected candidate ends the job
   ``rejected`` with the numbers;
5. export the candidate as version ``current + 1`` (or above any published version), the
   served device partition reused byte for byte when the device stage was frozen, signed
   when a signing key is configured, and publish it into the registry's directory, where
   it is a registered candidate (:func:`edgecascade.cloud_service.candidates.publish_candidate`);
   promoting it is the registry's business (``retrain.auto_promote`` or an operator).

Everything is built in the job's own directory; the served bundle and its checkpoint are
only read. Any exception ends the job ``failed`` with the error, SIGTERM included; a hard
crash is caught by the watcher in the cloud (:mod:`edgecascade.cloud_service.scheduler`). Exit status:
0 when the job succeeded or was rejected, 1 when it failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgecascade.cloud_service.blobs import BlobStore
from edgecascade.cloud_service.candidates import checkpoint_for, next_version, publish_candidate
from edgecascade.cloud_service.config import DEFAULT_MODELS_DIR
from edgecascade.cloud_service.intake import VersionSpec
from edgecascade.cloud_service.jobs import JobSpec, JobStore
from edgecascade.cloud_service.store import ExampleStore, open_engine
from edgecascade.device_sdk import wire
from edgecascade.device_sdk.errors import ModelError, WireError
from edgecascade.device_sdk.model.bundle import Bundle, Manifest, load_bundle, write_manifest
from edgecascade.device_sdk.wire import codec
from edgecascade.training.gate import GateRule, decide, id_position

if TYPE_CHECKING:  # TensorFlow is imported once the job has reported itself running
    from edgecascade.training.data import Dataset
    from edgecascade.training.finetune import HardSet

logger = logging.getLogger(__name__)

Progress = Callable[[float, str], None]
HEARTBEAT_SECONDS = 5.0
LOGGERS = ("edgecascade.training", "edgecascade.cloud_service")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@dataclass
class Outcome:
    """How a job ended (short of failing) and its numbers."""

    state: str  # succeeded or rejected
    metrics: dict[str, Any] = field(default_factory=dict)
    base_version: int | None = None
    candidate_version: int | None = None


class _Heartbeat(threading.Thread):
    """Tells the database every few seconds that the job is alive (long Keras calls report nothing)."""

    def __init__(self, jobs: JobStore, job_id: int) -> None:
        super().__init__(name="retrain-heartbeat", daemon=True)
        self._jobs, self._job_id = jobs, job_id
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(HEARTBEAT_SECONDS):
            try:
                self._jobs.heartbeat(self._job_id)
            except Exception:
                logger.warning("heartbeat failed", exc_info=True)

    def stop(self) -> None:
        self._stop_event.set()


def run_job(spec: JobSpec, *, log_file: bool = False) -> str:
    """Run the job ``spec`` describes in this process; returns its final state.

    ``log_file``: also write the job's log (the ``training`` and ``edgecascade.cloud_service`` loggers, at
    INFO) to its log file, for callers whose output does not already go there, such as the
    ``edgecascade retrain`` command.
    """
    engine = open_engine(spec.database_url)
    jobs = JobStore(engine)
    handler: logging.Handler | None = None
    if log_file:
        spec.log_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        handler = logging.FileHandler(spec.log_path)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        for name in LOGGERS:
            logging.getLogger(name).addHandler(handler)
            logging.getLogger(name).setLevel(logging.INFO)
    if not jobs.start(spec.job_id, os.getpid()):
        logger.error("job %d is not queued (any more); not running it", spec.job_id)
        return "failed"

    def report(progress: float, stage: str) -> None:
        logger.info("[%3.0f%%] %s", 100 * progress, stage)
        jobs.report(spec.job_id, progress, stage)

    heartbeat = _Heartbeat(jobs, spec.job_id)
    heartbeat.start()
    workdir = spec.log_path.parent / "candidate"
    try:
        outcome = _Retrain(spec, ExampleStore(engine, BlobStore(spec.blob_dir)), report, workdir).run()
    except BaseException as exc:
        logger.exception("retraining job %d failed", spec.job_id)
        jobs.finish(spec.job_id, "failed", error=f"{type(exc).__name__}: {exc}")
        if not isinstance(exc, Exception):
            raise
        return "failed"
    finally:
        heartbeat.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        if handler is not None:
            for name in LOGGERS:
                logging.getLogger(name).removeHandler(handler)
            handler.close()
    jobs.finish(
        spec.job_id,
        outcome.state,
        metrics=outcome.metrics,
        candidate_version=outcome.candidate_version,
        base_version=outcome.base_version,
    )
    logger.info("retraining job %d %s", spec.job_id, outcome.state)
    return outcome.state


class _Retrain:
    """The steps of one job (see the module docstring)."""

    def __init__(self, spec: JobSpec, examples: ExampleStore, report: Progress, workdir: Path) -> None:
        self.spec = spec
        self.settings = spec.retrain
        self.models_dir = spec.retrain.models_dir or DEFAULT_MODELS_DIR  # the registry's directory
        self.examples = examples
        self.report = report
        self.workdir = workdir
        self.seconds: dict[str, float] = {}

    def run(self) -> Outcome:
        start = time.monotonic()
        self.report(0.01, "importing TensorFlow")
        from edgecascade.training.data import load_fashion_mnist, load_npz
        from edgecascade.training.export import export_bundle
        from edgecascade.training.finetune import FinetuneConfig, finetune, gate_scores, trains_device
        from edgecascade.training.train import calibrate, load_trained

        self.report(0.02, "loading the served model")
        bundle = load_bundle(self.spec.bundle, public_key=self.spec.verify_key)
        manifest = bundle.manifest
        checkpoint = checkpoint_for(self.models_dir, manifest.version, self.settings.checkpoint)
        logger.info("served %s v%d; fine-tuning from %s", manifest.name, manifest.version, checkpoint)
        current, candidate = load_trained(checkpoint), load_trained(checkpoint)
        if len(current.classes) != len(manifest.classes):
            raise ModelError(
                f"checkpoint {checkpoint} has {len(current.classes)} classes, "
                f"the served bundle {len(manifest.classes)}"
            )

        self.report(0.06, "loading hard examples")
        train_set, holdout, calibration, counts = self._hard_examples(manifest)
        metrics: dict[str, Any] = {"examples": counts}
        outcome = Outcome("rejected", metrics, base_version=manifest.version)
        if not len(train_set):
            metrics["gate"] = {"promote": False, "reason": "no labelled hard examples to train on"}
            return outcome

        self.report(0.1, "loading the original data")
        data = load_npz(self.settings.data) if self.settings.data else load_fashion_mnist()
        replay, validation, test = self._original_data(data, current.config)

        self.report(0.15, "fine-tuning")
        config = FinetuneConfig(
            epochs=self.settings.epochs,
            batch_size=self.settings.batch_size,
            learning_rate=self.settings.learning_rate,
            hard_weight=self.settings.hard_weight,
            train_device=self.settings.train_device,
            seed=self.settings.seed,
        )

        def on_epoch(epoch: int, epochs: int, loss: float) -> None:
            self.report(0.15 + 0.55 * epoch / epochs, f"fine-tuning: epoch {epoch}/{epochs}, loss {loss:.4f}")

        tic = time.monotonic()
        metrics["finetune"] = finetune(candidate, train_set, replay, config, on_epoch)
        self.seconds["finetune"] = time.monotonic() - tic

        self.report(0.72, "calibrating temperatures and thresholds")
        x_val, y_val = validation
        candidate.metrics = calibrate(
            candidate, np.concatenate([x_val, calibration.raw]), np.concatenate([y_val, calibration.raw_y])
        )

        self.report(0.78, "evaluating: current vs candidate")
        decision = decide(
            gate_scores(current, test, holdout),
            gate_scores(candidate, test, holdout),
            GateRule(self.settings.min_gain, self.settings.tolerance, self.settings.min_holdout),
        )
        metrics["gate"] = decision.to_json()
        logger.info("gate: %s", decision.reason)
        candidate.metrics |= {
            f"test_accuracy_exit{i}": a for i, a in enumerate(decision.candidate.original, 1)
        }
        if not decision.promote:
            return self._done(outcome, start)

        version = next_version(self.models_dir, manifest.version)
        self.report(0.82, f"exporting candidate v{version}")
        tic = time.monotonic()
        out = self.workdir / "bundle"
        export_bundle(
            candidate,
            out,
            name=manifest.name,
            version=version,
            classes=manifest.classes,
            representative=replay[0],
            precisions={p.tier: p.precision for p in manifest.partitions},
        )
        if not trains_device(train_set, config):
            _reuse_device_partition(out, bundle)
        if any(p.cache is not None for p in manifest.partitions):
            from edgecascade.training.cache_calibration import calibrate_cache

            calibrate_cache(out, *validation, fit_images=replay[0])
        if self.settings.signing_key is not None:
            from edgecascade.device_sdk.model.bundle import sign_bundle

            sign_bundle(out, self.settings.signing_key)
        candidate.save(self.workdir / "checkpoint")
        self.seconds["export"] = time.monotonic() - tic

        self.report(0.95, f"publishing candidate v{version}")
        self._done(outcome, start)
        outcome.state, outcome.candidate_version = "succeeded", version
        publish_candidate(
            out,
            version,
            metrics,
            models_dir=self.models_dir,
            checkpoint_dir=self.workdir / "checkpoint",
            extra={"job_id": self.spec.job_id, "base_version": manifest.version},
        )
        return outcome

    def _done(self, outcome: Outcome, start: float) -> Outcome:
        self.seconds["total"] = time.monotonic() - start
        outcome.metrics["seconds"] = {k: round(v, 2) for k, v in self.seconds.items()}
        return outcome

    def _hard_examples(self, manifest: Manifest) -> tuple[HardSet, HardSet, HardSet, dict[str, int]]:
        """Training, held-out and calibration examples the served model can read, with counts.

        By the id's position: below ``holdout_fraction`` the gate's slice; the next
        ``calibration_fraction`` is the calibration slice when the example was audited and
        carries its raw input (otherwise it trains).
        """
        from edgecascade.training.finetune import HardSet

        served = VersionSpec.from_manifest(manifest)
        versions = self.examples.versions()
        train: list[tuple[str, np.ndarray, np.ndarray | None, int]] = []
        held: list[tuple[str, np.ndarray, np.ndarray | None, int]] = []
        calibrate: list[tuple[str, np.ndarray, np.ndarray | None, int]] = []
        holdout_end = self.settings.holdout_fraction
        calibration_end = holdout_end + self.settings.calibration_fraction
        skipped = 0
        for row in self.examples.for_training(self.spec.examples_until, self.settings.max_examples):
            spec = versions.get(row.model_version)
            try:
                features_body, raw_body = self.examples.tensors(row)
                raw = wire.decode_tensor(raw_body) if raw_body is not None else None
                if raw is not None and raw.shape != served.input_shape:
                    raw = None
                if raw is None and (spec is None or spec.cuts[row.cut] != served.cuts[row.cut]):
                    skipped += 1  # features the served partitions cannot read
                    continue
                features = codec.decode_features(features_body, row.encoding)
            except (OSError, WireError) as exc:
                logger.warning("skipping hard example %s: %s", row.id, exc)
                skipped += 1
                continue
            assert row.label is not None  # for_training returns labelled rows only
            item = (row.cut, features, raw, row.label)
            position = id_position(row.id)
            if position < holdout_end:
                held.append(item)
            elif position < calibration_end and raw is not None and "audit" in row.reasons:
                calibrate.append(item)
            else:
                train.append(item)
        shapes = {"raw": served.input_shape, **{c: s.shape for c, s in served.cuts.items()}}
        train_set, holdout = HardSet.build(train, shapes), HardSet.build(held, shapes)
        calibration = HardSet.build(calibrate, shapes)
        counts = {
            "train": len(train_set),
            "holdout": len(holdout),
            "calibration": len(calibration),
            "skipped": skipped,
        }
        logger.info("hard examples: %s", counts)
        return train_set, holdout, calibration, counts

    def _original_data(
        self, data: Dataset, config: Any
    ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
        """Replay sample (from the training split), validation subset, test subset."""
        from edgecascade.training.train import training_split

        x_train, y_train, x_val, y_val = training_split(config, data)
        rng = np.random.default_rng(self.settings.seed)
        pick = np.sort(rng.permutation(len(x_train))[: self.settings.replay_size])
        n_val, n_test = self.settings.val_size, self.settings.test_size
        return (
            (x_train[pick], y_train[pick]),
            (x_val[:n_val], y_val[:n_val]),
            (data.x_test[:n_test], data.y_test[:n_test]),
        )


def _reuse_device_partition(out: Path, served: Bundle) -> Manifest:
    """Put the served device partition into the exported bundle, keeping the new exit settings.

    The device stage did not change, so devices keep their partition byte for byte and the
    cut-1 features they send stay exactly what the new gateway partition was trained on.
    """
    exported = load_bundle(out).manifest
    new_device, old_device = exported.partition("device"), served.manifest.partition("device")
    if new_device.file != old_device.file:
        (out / new_device.file).unlink()
    shutil.copyfile(served.file("device"), out / old_device.file)
    device = dataclasses.replace(old_device, exit=new_device.exit, cache=None)
    manifest = dataclasses.replace(exported, partitions=(device, *exported.partitions[1:]))
    write_manifest(out, manifest)
    return load_bundle(out).manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m edgecascade.training.retrain_job", description=__doc__.split("\n")[0]
    )
    parser.add_argument("spec", help="the job's spec.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)  # stderr is the job's log file

    def on_sigterm(signum: int, frame: object) -> None:
        raise SystemExit(f"terminated by signal {signum}")

    signal.signal(signal.SIGTERM, on_sigterm)
    spec = JobSpec.read(args.spec)
    return 0 if run_job(spec) in ("succeeded", "rejected") else 1


if __name__ == "__main__":
    sys.exit(main())
