"""``edgecascade bench novelty``: how well the cascade tells inputs of classes it was never taught.

A model is trained on all Fashion-MNIST classes but the held-out ones (by default ``Bag`` and
``Ankle boot``: one unlike every taught class, one close to ``Sneaker`` and ``Sandal``) and
exported with its unknown-input rules calibrated on its known validation split. The test
set of the taught classes is then streamed with the held-out classes' test images mixed in
(10 % of the stream by default), through the exported LiteRT partitions (the answers the
live cascade gives, :func:`~edgecascade.device_sdk.core.chain.run_partitions`).

Reported, for every exit and every familiarity score (:mod:`~edgecascade.device_sdk.core.novelty`):
the AUROC of known against unknown inputs and the recall of unknown inputs at 5 % of known
inputs flagged; and for the rule the bundle ships (the device exit's): the share of the
stream it flags, the precision of the ``unknown`` uploads (flagged inputs that really are of
a held-out class) and their recall.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgecascade.device_sdk.core.chain import run_partitions
from edgecascade.device_sdk.core.novelty import FAMILIARITY, is_unknown
from edgecascade.device_sdk.model.bundle import TIERS, load_bundle
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
    known_x: np.ndarray, unknown_x: np.ndarray, share: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Every known test image, held-out ones mixed in at ``share`` of the stream; and the unknown mask."""
    count = min(len(unknown_x), round(len(known_x) * share / (1 - share)))
    rng = np.random.default_rng(seed)
    x = np.concatenate([known_x, unknown_x[rng.permutation(len(unknown_x))[:count]]])
    is_new = np.concatenate([np.zeros(len(known_x), bool), np.ones(count, bool)])
    order = rng.permutation(len(x))
    return x[order], is_new[order]


def measure(bundle_dir: Path, x: np.ndarray, is_new: np.ndarray) -> dict[str, Any]:
    """Every exit's scores on the stream, and what the shipped device rule flags."""
    bundle = load_bundle(bundle_dir)
    logits = run_partitions(bundle, x).logits
    scores: dict[str, dict[str, dict[str, float]]] = {}
    for tier, z in zip(TIERS, logits, strict=True):
        scores[tier] = {}
        for name, score in FAMILIARITY.items():
            values = score(z, 1.0)
            scores[tier][name] = {
                "auroc": auroc(values[~is_new], values[is_new]),
                "recall_at_5pct_fpr": recall_at_fpr(values[~is_new], values[is_new]),
            }
    rule = bundle.manifest.partition("device").unknown
    if rule is None:
        raise ValueError(f"{bundle_dir}: the device exit has no unknown-input rule")
    flagged = is_unknown(logits[0], rule)
    shipped = scores["device"][rule.score]
    return {
        "rule": {"tier": "device", **asdict(rule)},
        "auroc": shipped["auroc"],
        "recall_at_5pct_fpr": shipped["recall_at_5pct_fpr"],
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

    known, unknown_x, _ = split_known(dataset, options.unknown_classes)
    config = replace(
        TrainConfig(), epochs=options.epochs, seed=options.seed, train_subset=options.train_subset
    )
    bundle_dir = workdir / "model"
    train_and_export(config, bundle_dir, known, progress=progress, checkpoint_dir=workdir / "checkpoint")
    x, is_new = stream(known.x_test, unknown_x, options.unknown_share, options.seed)
    return {
        "classes": {"known": list(known.classes), "unknown": list(options.unknown_classes)},
        "stream": {"n": len(x), "unknown": int(is_new.sum())},
        "epochs": options.epochs,
        "unknown": measure(bundle_dir, x, is_new),
        "model": str(bundle_dir),
    }


def format_novelty_report(report: dict[str, Any]) -> str:
    """The per-exit, per-score table and the shipped rule's numbers."""
    unknown = report["unknown"]
    lines = [
        f"held out {', '.join(report['classes']['unknown'])}: {report['stream']['unknown']} of "
        f"{report['stream']['n']} streamed inputs",
        f"{'exit':<8} {'score':<10} {'AUROC':>6} {'recall@5%FPR':>13}",
    ]
    for tier, per_score in unknown["scores"].items():
        for name, s in per_score.items():
            lines.append(f"{tier:<8} {name:<10} {s['auroc']:>6.3f} {s['recall_at_5pct_fpr']:>13.3f}")
    rule = unknown["rule"]
    lines.append(
        f"shipped rule ({rule['tier']} {rule['score']}): flags {unknown['flagged_share']:.1%} of the stream, "
        f"{unknown['known_flagged_share']:.1%} of known inputs; upload precision "
        f"{unknown['upload_precision']:.1%}, recall {unknown['upload_recall']:.1%}"
    )
    return "\n".join(lines)
