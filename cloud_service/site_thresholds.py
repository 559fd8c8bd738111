"""Fitting one site's exit thresholds on its own audited examples, as a signed overlay.

A site's *audited* hard examples (reason ``audit``: a uniform sample of everything its
devices saw, not only what looked hard) with a label (the human's, else the teacher's) and
their raw input are an unbiased sample of the site's inputs. The served bundle's whole
cascade runs on them with LiteRT (:func:`~edgecascade.device_sdk.core.chain.run_partitions`,
the manifest's temperatures), and the early exits' thresholds are chosen with the rule
training uses (:func:`~edgecascade.device_sdk.core.thresholds.choose_thresholds`): each
early exit answers only where it is as accurate as the final exit on the same inputs. The
result is a :class:`~edgecascade.device_sdk.model.overlay.SiteOverlay` for the served
version, signed with the registry's key and kept in the registry directory::

    sites/<site>/v<version>.json       the overlay (canonical JSON)
    sites/<site>/v<version>.json.sig   its signature

No I/O but the database and blob reads of :func:`audited_examples` and the files of
:func:`save_overlay`; the routes are in :mod:`edgecascade.cloud_service.sites`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

from edgecascade.cloud_service.site_examples import SiteExamples, read_examples
from edgecascade.cloud_service.store import ExampleStore, hard_examples
from edgecascade.device_sdk.core.chain import run_partitions
from edgecascade.device_sdk.core.thresholds import cascade_predictions, choose_thresholds
from edgecascade.device_sdk.model.bundle import Bundle
from edgecascade.device_sdk.model.overlay import SITE_NAME, SiteOverlay, signature_path, write_overlay
from edgecascade.device_sdk.model.signing import PrivateKeySource

logger = logging.getLogger(__name__)

AUDIT = "audit"
SITES_DIR = "sites"
MIN_EXAMPLES = 100
"""Labelled audited examples a fit needs by default: fewer leave each threshold to chance."""
FITTED_TIERS = ("device", "gateway")  # the early exits; the last tier answers everything


def _audited(site: str) -> list[Any]:
    """Conditions of ``site``'s audited examples with a label and a raw input."""
    c = hard_examples.c
    reasons = sa.literal(",") + c.reasons + sa.literal(",")  # a whole reason, not a part of one
    return [
        c.site == site,
        reasons.like(f"%,{AUDIT},%"),
        c.raw_path.is_not(None),
        sa.or_(c.human_label.is_not(None), c.teacher_label.is_not(None)),
    ]


def count_audited(store: ExampleStore, site: str) -> int:
    """How many audited examples of ``site`` have a label and a raw input (before reading any)."""
    query = sa.select(sa.func.count()).select_from(hard_examples).where(*_audited(site))
    with store.engine.connect() as db:
        return int(db.execute(query).scalar_one())


def audited_examples(
    store: ExampleStore, site: str, input_shape: tuple[int, ...], num_classes: int
) -> SiteExamples:
    """Every audited example of ``site`` with a label and a raw input that fits the model."""
    return read_examples(store, _audited(site), input_shape, num_classes)


def fit_overlay(
    bundle: Bundle, site: str, examples: SiteExamples, *, max_loss: float = 0.0, now: float | None = None
) -> SiteOverlay:
    """The site's overlay for ``bundle``: its early exits' thresholds chosen on ``examples``.

    Temperatures and the confidence score stay the manifest's; ``metrics`` compares the
    manifest's thresholds with the site's on these same examples (in-sample numbers).
    """
    if not SITE_NAME.fullmatch(site):
        raise ValueError(f"site must be 1-64 of [A-Za-z0-9_.-], got {site!r}")
    if len(examples) == 0:
        raise ValueError("no examples to fit on")
    manifest = bundle.manifest
    probs = run_partitions(bundle, examples.x).probs
    score = manifest.partitions[0].exit.score
    thresholds = choose_thresholds(probs, examples.y, max_loss, score)
    exits = {
        tier: dataclasses.replace(manifest.partition(tier).exit, threshold=float(t))
        for tier, t in zip(FITTED_TIERS, thresholds, strict=False)
    }
    metrics: dict[str, float] = {}
    for name, chosen in (
        ("manifest", tuple(p.exit.threshold for p in manifest.partitions)),
        ("site", (*thresholds[:2], manifest.partitions[-1].exit.threshold)),
    ):
        labels, taken = cascade_predictions(probs, chosen, score)
        metrics[f"{name}_accuracy"] = float(np.mean(labels == examples.y))
        metrics[f"{name}_device_share"] = float(np.mean(taken == 0))
    return SiteOverlay(
        model=manifest.name,
        version=manifest.version,
        site=site,
        exits=exits,
        examples=len(examples),
        fitted_at=time.time() if now is None else now,
        metrics=metrics,
    )


def overlay_path(models_dir: str | Path, site: str, version: int) -> Path:
    """Where the registry keeps ``site``'s overlay for model ``version``."""
    if not SITE_NAME.fullmatch(site):
        raise ValueError(f"site must be 1-64 of [A-Za-z0-9_.-], got {site!r}")
    return Path(models_dir) / SITES_DIR / site / f"v{version}.json"


def save_overlay(models_dir: str | Path, overlay: SiteOverlay, signing_key: PrivateKeySource) -> Path:
    """Write and sign ``overlay`` into the registry directory; returns the overlay file's path."""
    return write_overlay(overlay_path(models_dir, overlay.site, overlay.version), overlay, signing_key)


def saved_overlay(models_dir: str | Path, site: str, version: int) -> tuple[bytes, bytes] | None:
    """The stored overlay file and signature of ``site`` for ``version``, or None if there is none."""
    path = overlay_path(models_dir, site, version)
    try:
        return path.read_bytes(), signature_path(path).read_bytes()
    except FileNotFoundError:
        return None
