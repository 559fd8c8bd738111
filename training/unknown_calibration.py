"""Calibrate the key-space unknown-input rules (``mahalanobis``) of an exported bundle.

For each tier whose cache has a key projection (the device and the gateway), this fits the
class means and shared precision of the cache keys of training images, by their true
class (:class:`~edgecascade.device_sdk.core.novelty.ClassStatistics`), writes them into
the bundle (``<tier>.unknown.npz``, hashed in the manifest), and sets the threshold that
flags ``known_fpr`` of the validation images. A tier without a projection keeps its rule
over the logits. Run after :func:`~edgecascade.training.cache_calibration.calibrate_cache`,
which fits the projections. Inputs and keys are what the deployed tiers compute: LiteRT
partitions, features through their wire encoding.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np

from edgecascade.device_sdk.cache.from_bundle import load_embedder
from edgecascade.device_sdk.core.chain import run_partitions
from edgecascade.device_sdk.core.novelty import KEY_SCORE, ClassStatistics, threshold_at
from edgecascade.device_sdk.files import atomic_write, sha256_file
from edgecascade.device_sdk.model.bundle import Manifest, UnknownSpec, load_bundle, write_manifest

logger = logging.getLogger(__name__)

FIT_SAMPLES = 20_000
"""Most training images the class statistics are fitted on."""


def calibrate_unknown_keys(
    bundle_dir: str | Path,
    fit_images: np.ndarray,
    fit_labels: np.ndarray,
    val_images: np.ndarray,
    known_fpr: float = 0.05,
    seed: int = 0,
) -> Manifest:
    """Give each tier with cache keys a ``mahalanobis`` unknown-input rule; rewrite the manifest."""
    bundle = load_bundle(bundle_dir)
    manifest = bundle.manifest
    if len(fit_images) > FIT_SAMPLES:
        pick = np.sort(np.random.default_rng(seed).choice(len(fit_images), FIT_SAMPLES, replace=False))
        fit_images, fit_labels = fit_images[pick], fit_labels[pick]
    fit, val = run_partitions(bundle, fit_images), run_partitions(bundle, val_images)
    rules: dict[str, UnknownSpec] = {}
    for i, part in enumerate(manifest.partitions[:-1]):
        if part.cache is None or part.cache.embedding is None:
            logger.info("%s: no cache key projection, the unknown-input rule stays over logits", part.tier)
            continue
        embedder = load_embedder(bundle, part.tier)
        statistics = ClassStatistics.fit(embedder(fit.features[i]), np.asarray(fit_labels))
        threshold = threshold_at(statistics.familiarity(embedder(val.features[i])), known_fpr)
        name = f"{part.tier}.unknown.npz"
        atomic_write(bundle.path / name, statistics.to_bytes())
        rules[part.tier] = UnknownSpec(
            KEY_SCORE,
            threshold,
            known_fpr=known_fpr,
            statistics=name,
            statistics_sha256=sha256_file(bundle.path / name),
        )
        logger.info(
            "%s: mahalanobis unknown-input rule over %d-d keys, threshold %.3f",
            part.tier,
            embedder.dim,
            threshold,
        )
    partitions = tuple(
        dataclasses.replace(p, unknown=rules.get(p.tier, p.unknown)) for p in manifest.partitions
    )
    calibrated = dataclasses.replace(manifest, partitions=partitions)
    write_manifest(bundle.path, calibrated)
    return calibrated
