"""``edgecascade bench novelty``: how well the cascade tells inputs of classes it was never taught.

A model is trained on all Fashion-MNIST classes but the held-out ones (by default ``Bag`` and
``Ankle boot``: one unlike every taught class, one close to ``Sneaker`` and ``Sandal``) and
exported with its unknown-input rules calibrated on its known validation split. The test
set of the taught classes is then streamed with the held-out classes' test images mixed in
(10 % of the stream by default), through the exported LiteRT partitions (the answers the
live cascade gives, :func:`~edgecascade.device_sdk.core.chain.run_partitions`).

Reported, for every exit and every familiarity score (:mod:`~edgecascade.device_sdk.core.novelty`;
``mahalanobis`` where the bundle ships its statistics):
the AUROC of known against unknown inputs and the recall of unknown inputs at 5 % of known
inputs flagged; and for the rule the bundle ships (the device exit's): the share of the
stream it flags, the precision of the ``unknown`` uploads (flagged inputs that really are of
a held-out class) and their recall.

Then ``drift``: the device's drift detector replayed over long streams
(:mod:`.bench_novelty_drift`), and ``new_classes``: the unknown uploads grouped and named in
the cloud, one retraining job, and the new model on the rest of the stream
(:mod:`.bench_novelty_classes`).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgecascade.device_sdk.core.chain import run_partitions
from edgecascade.device_sdk.core.novelty import FAMILIARITY, KEY_SCORE, UnknownRule
from edgecascade.device_sdk.model.bundle import TIERS, load_bundle
from edgecascade.tools.bench_novelty_classes import JobOptions, Stream, learn_new_classes
from edgecascade.tools.bench_novelty_drift import measure_drift
from edgecascade.training.data import Dataset

logger = logging.getLogger(__name__)

DEFAULT_UNKNOWN = ("Bag", "Ankle boot")
KNOWN_FPR = 0.05


@dataclass(frozen=True)
class NoveltyOptions:
    """What ``bench novelty`` trains and streams."""

    unknown_classes: tuple[str, ...] = DEFAULT_UNKNOWN
    unknown_share: float = 0.10  # of the stream
    epochs: int = 5
    seed: int = 0
    train_subset: int | None = None  # train on this many images only (quick runs)
    learn: bool = True  # name the groups of unknown uploads and retrain (the new_classes section)
    job: JobOptions = field(default_factory=JobOptions)  # the retraining job's epochs and replay


def auroc(known: np.ndarray, unknown: np.ndarray) -> float:
    """P(a known input scores higher than an unknown one), ties counting half (Mann-Whitney U)."""
    scores = np.concatenate([known, unknown])
    order = scores.argsort(kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    average = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(average, counts)
    u = ranks[: len(known)].sum() - len(known) * (len(known) + 1) / 2.0
    return float(u / (len(known) * len(unknown)))


def recall_at_fpr(known: np.ndarray, unknown: np.ndarray, fpr: float = KNOWN_FPR) -> float:
    """Share of unknown inputs below the threshold that flags ``fpr`` of the known ones."""
    return float((unknown < np.quantile(known, fpr)).mean())


def split_known(dataset: Dataset, unknown_classes: tuple[str, ...]) -> tuple[Dataset, np.ndarray, np.ndarray]:
    """The taught classes' dataset (labels renumbered), and the held-out classes' test images and labels."""
    missing = [c for c in unknown_classes if c not in dataset.classes]
    if missing:
        raise ValueError(f"no class {missing} in the dataset (classes: {', '.join(dataset.classes)})")
    held = [dataset.classes.index(c) for c in unknown_classes]
    kept = [i for i in range(len(dataset.classes)) if i not in held]
    remap = np.full(len(dataset.classes), -1, dtype=np.int64)
    remap[kept] = np.arange(len(kept))
    train, test = np.isin(dataset.y_train, kept), np.isin(dataset.y_test, kept)
    known = Dataset(
        dataset.x_train[train],
        remap[dataset.y_train[train]],
        dataset.x_test[test],
        remap[dataset.y_test[test]],
        tuple(dataset.classes[i] for i in kept),
    )
    return known, dataset.x_test[~test], dataset.y_test[~test]


def stream(
    known: Dataset,
    unknown_x: np.ndarray,
    unknown_y: np.ndarray,
    classes: tuple[str, ...],
    share: float,
    seed: int,
) -> Stream:
    """Every known test image, held-out ones (labels ``unknown_y`` into ``classes``) mixed in at
    ``share`` of the stream, in random order."""
    count = min(len(unknown_x), round(len(known.x_test) * share / (1 - share)))
    rng = np.random.default_rng(seed)
    pick = rng.permutation(len(unknown_x))[:count]
    x = np.concatenate([known.x_test, unknown_x[pick]])
    names = np.array([*(known.classes[y] for y in known.y_test), *(classes[y] for y in unknown_y[pick])])
    is_new = np.concatenate([np.zeros(len(known.x_test), bool), np.ones(count, bool)])
    order = rng.permutation(len(x))
    return Stream(x[order], names[order], is_new[order])


def measure(bundle_dir: Path, x: np.ndarray, is_new: np.ndarray) -> dict[str, Any]:
    """Every exit's scores on the stream, and what the shipped device rule flags."""
    bundle = load_bundle(bundle_dir)
    chain = run_partitions(bundle, x)
    scores: dict[str, dict[str, dict[str, float]]] = {}
    for i, (tier, z) in enumerate(zip(TIERS, chain.logits, strict=True)):
        values = {name: score(z, 1.0) for name, score in FAMILIARITY.items()}
        rule = UnknownRule.from_bundle(bundle, tier)
        if rule is not None and rule.statistics is not None:
            values[KEY_SCORE] = rule.familiarity(z, chain.features[i])
        scores[tier] = {
            name: {
                "auroc": auroc(v[~is_new], v[is_new]),
                "recall_at_5pct_fpr": recall_at_fpr(v[~is_new], v[is_new]),
            }
            for name, v in values.items()
        }
    shipped = UnknownRule.from_bundle(bundle, "device")
    if shipped is None:
        raise ValueError(f"{bundle_dir}: the device exit has no unknown-input rule")
    flagged = shipped.flags(chain.logits[0], chain.features[0])
    spec = asdict(shipped.spec)
    del spec["statistics_sha256"]
    return {
        "rule": {"tier": "device", **spec},
        **scores["device"][shipped.spec.score],
        "flagged_share": float(flagged.mean()),
        "known_flagged_share": float(flagged[~is_new].mean()),
        "upload_precision": float(is_new[flagged].mean()) if flagged.any() else 0.0,
        "upload_recall": float(flagged[is_new].mean()),
        "scores": scores,
    }


def bench_novelty(
    dataset: Dataset, workdir: Path, options: NoveltyOptions, progress: bool = True
) -> dict[str, Any]:
    """Train on the taught classes, export, stream with held-out classes mixed in; the report."""
    from edgecascade.training.config import TrainConfig
    from edgecascade.training.export import train_and_export

    known, unknown_x, unknown_y = split_known(dataset, options.unknown_classes)
    config = replace(
        TrainConfig(), epochs=options.epochs, seed=options.seed, train_subset=options.train_subset
    )
    bundle_dir, checkpoint = workdir / "model", workdir / "checkpoint"
    step("training on the taught classes", progress)
    train_and_export(config, bundle_dir, known, progress=progress, checkpoint_dir=checkpoint)
    streamed = stream(known, unknown_x, unknown_y, dataset.classes, options.unknown_share, options.seed)
    step("scoring the stream", progress)
    unknown = measure(bundle_dir, streamed.x, streamed.is_new)
    step("replaying the drift detector", progress)
    drift = measure_drift(bundle_dir, known.x_test, unknown_x, options.unknown_share, options.seed)
    report = {
        "classes": {"known": list(known.classes), "unknown": list(options.unknown_classes)},
        "stream": {"n": len(streamed.x), "unknown": int(streamed.is_new.sum())},
        "epochs": options.epochs,
        "unknown": unknown,
        "drift": drift,
        "model": str(bundle_dir),
    }
    if options.learn:
        step("uploading, grouping, naming, retraining", progress)
        report["new_classes"] = learn_new_classes(
            workdir, bundle_dir, checkpoint, known, streamed, options.job, progress
        )
    return report


def step(message: str, progress: bool) -> None:
    if progress:
        print(f"bench novelty: {message}", file=sys.stderr, flush=True)


def format_novelty_report(report: dict[str, Any]) -> str:
    """The per-exit, per-score table and the shipped rule's numbers."""
    unknown = report["unknown"]
    lines = [
        f"held out {', '.join(report['classes']['unknown'])}: {report['stream']['unknown']} of "
        f"{report['stream']['n']} streamed inputs",
        f"{'exit':<8} {'score':<11} {'AUROC':>6} {'recall@5%FPR':>13}",
    ]
    for tier, per_score in unknown["scores"].items():
        for name, s in per_score.items():
            lines.append(f"{tier:<8} {name:<11} {s['auroc']:>6.3f} {s['recall_at_5pct_fpr']:>13.3f}")
    rule = unknown["rule"]
    lines.append(
        f"shipped rule ({rule['tier']} {rule['score']}): flags {unknown['flagged_share']:.1%} of the stream, "
        f"{unknown['known_flagged_share']:.1%} of known inputs; upload precision "
        f"{unknown['upload_precision']:.1%}, recall {unknown['upload_recall']:.1%}"
    )
    drift = report["drift"]
    for name, shift in drift["shifts"].items():
        lines.append(
            f"drift ({name}): median delay {shift['median_delay_inputs']} inputs "
            f"(max {shift['max_delay_inputs']}, missed {shift['missed']} of {shift['trials']})"
        )
    lines.append(f"drift: {drift['false_alarms_per_100k']:.1f} false alarms per 100k undrifted inputs")
    new = report.get("new_classes")
    if new is not None:
        lines.append(
            f"new classes: {new['uploads']['total']} unknown uploads, {len(new['groups'])} groups, "
            f"{new['labelled']} labelled by naming; retraining job {new['job']['state']}"
        )
        if new["new_classes_accuracy"] is not None:
            lines.append(
                f"after one retrain: new classes {new['new_classes_accuracy']:.1%}, "
                f"old classes {new['old_classes_change']:+.2f} pt"
            )
    return "\n".join(lines)
