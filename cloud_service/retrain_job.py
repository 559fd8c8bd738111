"""One retraining job, in its own process: ``python -m edgecascade.cloud_service.retrain_job <spec.json>``.

Steps (each one reported as the job's stage and progress); the model's side of each is a
library function of :mod:`edgecascade.training.retrain`:

1. load the served bundle and the Keras checkpoint it came from (its published one when
   the registry has it, :func:`~edgecascade.cloud_service.candidates.checkpoint_for`), twice:
   the current model and the one to fine-tune;
2. read the labelled hard examples received up to the job's watermark from the example
   store into training, the gate's held-out slice and a calibration slice
   (:mod:`edgecascade.training.hard_examples`), and take a replay sample of the original data;
3. fine-tune (:mod:`edgecascade.training.finetune`), then fit temperatures and thresholds
   again on the original validation split plus the calibration slice;
4. run the evaluation gate (:mod:`edgecascade.training.gate`); a rejected candidate ends the
   job ``rejected`` with the numbers;
5. export the candidate as version ``current + 1`` (or above any published version), the
   served device partition reused byte for byte when the device stage was frozen, signed
   when a signing key is configured, and publish it into the registry's directory, where
   it is a registered candidate (:func:`~edgecascade.cloud_service.candidates.publish_candidate`);
   promoting it is the registry's business (``retrain.auto_promote`` or an operator).

When operators named new classes (:func:`class_list`), the candidate is widened to them
before fine-tuning and its manifest lists them after the served ones; the job's metrics
say which were added (``new_classes``), how often the candidate gets their held-out
examples right (``new_classes_accuracy``) and how its accuracy on the original test data
moved (``old_classes_change``, points).

Everything is built in the job's own directory; the served bundle and its checkpoint are
only read. TensorFlow is imported once the job has reported itself running, so this module
imports without it. Any exception ends the job ``failed`` with the error, SIGTERM included;
a hard crash is caught by the watcher in the cloud (:mod:`edgecascade.cloud_service.scheduler`).
Exit status: 0 when the job succeeded or was rejected, 1 when it failed.
"""

from __future__ import annotations

import argparse
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
from typing import Any

from edgecascade.cloud_service.blobs import BlobStore
from edgecascade.cloud_service.candidates import checkpoint_for, next_version, publish_candidate
from edgecascade.cloud_service.config import DEFAULT_MODELS_DIR, RetrainSettings
from edgecascade.cloud_service.intake import VersionSpec
from edgecascade.cloud_service.jobs import JobSpec, JobStore
from edgecascade.cloud_service.store import ExampleStore, open_engine
from edgecascade.cloud_service.unknown_groups import extended_classes
from edgecascade.device_sdk.model.bundle import Manifest, load_bundle
from edgecascade.training.gate import GateRule
from edgecascade.training.hard_examples import HardExampleSets, HardExampleSplit, StoredExample

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

    ``log_file``: also write the job's log (the ``edgecascade.training`` and
    ``edgecascade.cloud_service`` loggers, at INFO) to its log file, for callers whose output
    does not already go there, such as the ``edgecascade retrain`` command.
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
        settings = self.settings
        self.report(0.01, "importing TensorFlow")
        from edgecascade.training import retrain
        from edgecascade.training.finetune import FinetuneConfig, finetune, trains_device

        self.report(0.02, "loading the served model")
        bundle = load_bundle(self.spec.bundle, public_key=self.spec.verify_key)
        manifest = bundle.manifest
        checkpoint = checkpoint_for(self.models_dir, manifest.version, settings.checkpoint)
        classes = class_list(self.examples, manifest)
        added = list(classes[len(manifest.classes) :])
        logger.info(
            "served %s v%d; fine-tuning from %s%s",
            manifest.name,
            manifest.version,
            checkpoint,
            f"; adding classes {added}" if added else "",
        )
        current, candidate = retrain.load_for_finetuning(checkpoint, manifest, classes)

        self.report(0.06, "loading hard examples")
        hard = self._hard_examples(manifest, len(classes))
        metrics: dict[str, Any] = {"examples": hard.counts(), "new_classes": added}
        outcome = Outcome("rejected", metrics, base_version=manifest.version)
        if not len(hard.train):
            metrics["gate"] = {"promote": False, "reason": "no labelled hard examples to train on"}
            return outcome

        self.report(0.1, "loading the original data")
        original = original_data(settings, current.config, known=len(manifest.classes))

        self.report(0.15, "fine-tuning")
        config = FinetuneConfig(
            epochs=settings.epochs,
            batch_size=settings.batch_size,
            learning_rate=settings.learning_rate,
            hard_weight=settings.hard_weight,
            train_device=settings.train_device,
            seed=settings.seed,
            known_classes=len(manifest.classes) if added else None,
        )

        def on_epoch(epoch: int, epochs: int, loss: float) -> None:
            self.report(0.15 + 0.55 * epoch / epochs, f"fine-tuning: epoch {epoch}/{epochs}, loss {loss:.4f}")

        tic = time.monotonic()
        metrics["finetune"] = finetune(candidate, hard.train, original.replay, config, on_epoch)
        self.seconds["finetune"] = time.monotonic() - tic

        self.report(0.72, "calibrating temperatures and thresholds")
        retrain.recalibrate(candidate, original.validation, hard.calibration)

        self.report(0.78, "evaluating: current vs candidate")
        rule = GateRule(settings.min_gain, settings.tolerance, settings.min_holdout)
        decision = retrain.gate_candidate(current, candidate, original.test, hard.holdout, rule)
        metrics["gate"] = decision.to_json()
        metrics["new_classes_accuracy"] = decision.candidate.new_classes
        metrics["old_classes_change"] = round(decision.old_classes_change, 4)
        if not decision.promote:
            return self._done(outcome, start)

        version = next_version(self.models_dir, manifest.version)
        self.report(0.82, f"exporting candidate v{version}")
        tic = time.monotonic()
        out = self.workdir / "bundle"
        retrain.export_candidate(
            candidate,
            out,
            bundle,
            version,
            replay=original.replay,
            validation=original.validation,
            device_frozen=not trains_device(candidate, hard.train, config),
            examples=(hard.train.raw, hard.train.raw_y),
            signing_key=settings.signing_key,
        )
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

    def _hard_examples(self, manifest: Manifest, num_classes: int) -> HardExampleSets:
        """The stored examples the job may use, read into the served model's training sets.

        Features are readable when the version that made them has the served cut's shape
        and encoding (every version the cloud served is in the example store); labels must
        be below ``num_classes`` (the served classes and any added).
        """
        served = VersionSpec.from_manifest(manifest)
        versions = self.examples.versions()
        shapes = {"raw": served.input_shape, **{c: s.shape for c, s in served.cuts.items()}}
        split = HardExampleSplit(
            shapes,
            holdout_fraction=self.settings.holdout_fraction,
            calibration_fraction=self.settings.calibration_fraction,
            num_classes=num_classes,
        )
        for row in self.examples.for_training(self.spec.examples_until, self.settings.max_examples):
            try:
                features, raw = self.examples.tensors(row)
            except OSError as exc:
                split.skip(row.id, exc)
                continue
            assert row.label is not None  # for_training returns labelled rows only
            made_by = versions.get(row.model_version)
            stored = StoredExample(
                example_id=row.id,
                cut=row.cut,
                encoding=row.encoding,
                features=features,
                raw=raw,
                label=row.label,
                reasons=row.reasons,
                features_readable=made_by is not None and made_by.cuts[row.cut] == served.cuts[row.cut],
                human=row.human_label is not None,
            )
            split.add(stored)
        hard = split.sets()
        logger.info("hard examples: %s", hard.counts())
        return hard


def original_data(settings: RetrainSettings, train_config: Any, known: int) -> Any:
    """The slices of the original data (``retrain.data``, else Fashion-MNIST) a candidate is
    fine-tuned against, recalibrated and gated on (``training.retrain.OriginalSlices``)."""
    from edgecascade.training import retrain
    from edgecascade.training.data import load_fashion_mnist, load_npz

    data = load_npz(settings.data) if settings.data else load_fashion_mnist()
    return retrain.original_slices(
        data,
        train_config,
        replay_size=settings.replay_size,
        val_size=settings.val_size,
        test_size=settings.test_size,
        seed=settings.seed,
        known=known,
    )


def class_list(examples: ExampleStore, manifest: Manifest) -> tuple[str, ...]:
    """The classes the job trains for: the served ones followed by those operators named
    (:func:`edgecascade.cloud_service.unknown_groups.extended_classes`), in the order they
    were named."""
    return tuple(extended_classes(examples.engine, manifest.classes))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m edgecascade.cloud_service.retrain_job", description=__doc__.split("\n")[0]
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
