"""Grouping the unknown uploads not in a group yet: embed, join existing groups, cluster the rest.

Per cut (cut-1 features come from devices, cut-2 from gateways, and their keys are not
comparable), the features are turned into the cache keys of the tier that sent them, with
the served bundle's key projection (:func:`~edgecascade.device_sdk.cache.from_bundle.load_embedder`:
``device`` for cut 1, ``gateway`` for cut 2). Then (:mod:`edgecascade.cloud_service.clustering`):

1. every existing group of the cut gets a centroid and a radius from its members' keys,
   computed again on each run, so a new served version's projection applies to old and new
   examples alike;
2. each ungrouped example joins the nearest group if within its radius (joining a named
   group labels it with the group's class);
3. the rest are clustered; each cluster becomes a new group, the rest stay ungrouped until
   a later run finds company for them.

Members never move, so an operator's view of a group (and the labels of a named one) only
grows. Features the served projection cannot read (another version's cut shape, a blob
gone missing) are counted ``unreadable`` and left out.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import sqlalchemy as sa

from edgecascade.cloud_service.clustering import NOISE, GroupingRule, plan
from edgecascade.cloud_service.store import ExampleStore, hard_examples
from edgecascade.cloud_service.unknown_groups import (
    UnknownGroupError,
    label_members,
    ungrouped_condition,
    unknown_condition,
    unknown_group_members,
    unknown_groups,
)
from edgecascade.device_sdk.cache.from_bundle import load_embedder
from edgecascade.device_sdk.cache.similarity import Embedder
from edgecascade.device_sdk.errors import ConfigError, WireError
from edgecascade.device_sdk.files import sha256_file
from edgecascade.device_sdk.model.bundle import Bundle
from edgecascade.device_sdk.wire import codec

logger = logging.getLogger(__name__)

TIERS = {"cut1": "device", "cut2": "gateway"}  # the tier whose cache keys a cut's features get
MAX_UNGROUPED = 5_000  # newest ungrouped examples one run considers per cut
MAX_CENTROID_MEMBERS = 300  # members that stand for a group (its centroid, its region): the lowest ids


@dataclass(frozen=True)
class CutReport:
    """What one run did with one cut's ungrouped unknown examples."""

    cut: str
    considered: int = 0
    unreadable: int = 0
    joined: int = 0  # into existing groups
    grouped: int = 0  # into new groups
    new_groups: int = 0
    ungrouped: int = 0  # left for a later run
    skipped: str | None = None  # why the cut was not grouped at all


@dataclass(frozen=True)
class RefreshReport:
    cuts: tuple[CutReport, ...]
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {"cuts": [asdict(c) for c in self.cuts], "seconds": round(self.seconds, 4)}


def refresh(store: ExampleStore, bundle: Bundle, rule: GroupingRule | None = None) -> RefreshReport:
    """Group the ungrouped unknown examples of both cuts with ``bundle``'s key projections."""
    started = time.perf_counter()
    reports = tuple(_refresh_cut(store, bundle, cut, rule or GroupingRule()) for cut in TIERS)
    report = RefreshReport(reports, time.perf_counter() - started)
    logger.info(
        "unknown groups refreshed in %.2f s: %s",
        report.seconds,
        "; ".join(
            f"{r.cut} {r.considered} considered, {r.joined} joined, {r.new_groups} new groups "
            f"({r.grouped}), {r.ungrouped} left, {r.unreadable} unreadable"
            for r in reports
        ),
    )
    return report


def _refresh_cut(store: ExampleStore, bundle: Bundle, cut: str, rule: GroupingRule) -> CutReport:
    try:
        embedder = verified_embedder(bundle, TIERS[cut])
    except ConfigError as exc:
        logger.warning("not grouping %s unknown examples: %s", cut, exc)
        return CutReport(cut, skipped=str(exc))
    pending = _ungrouped(store, cut)
    if not pending:
        return CutReport(cut)
    new_ids, new_keys = embed(store, embedder, pending)
    unreadable = len(pending) - len(new_ids)
    readable: list[tuple[int, np.ndarray]] = []  # groups whose members' features the projection reads
    for group_id, members in _existing_groups(store, cut):
        keys = embed(store, embedder, members)[1]
        if len(keys):
            readable.append((group_id, keys))
    placed = plan(new_keys, [keys for _, keys in readable], rule)
    joins: dict[int, list[str]] = {}
    clusters: dict[int, list[str]] = {}
    for example_id, group, founded in zip(
        new_ids, placed.joined.tolist(), placed.formed.tolist(), strict=True
    ):
        if group != NOISE:
            joins.setdefault(readable[group][0], []).append(example_id)
        elif founded != NOISE:
            clusters.setdefault(founded, []).append(example_id)
    _write(store, cut, joins, list(clusters.values()))
    n_joined = sum(len(ids) for ids in joins.values())
    n_grouped = sum(len(ids) for ids in clusters.values())
    return CutReport(
        cut,
        considered=len(pending),
        unreadable=unreadable,
        joined=n_joined,
        grouped=n_grouped,
        new_groups=len(clusters),
        ungrouped=len(new_ids) - n_joined - n_grouped,
    )


def verified_embedder(bundle: Bundle, tier: str) -> Embedder:
    """``tier``'s key projection, its file checked against the manifest's sha256 first.

    The cloud loads its bundle for the cloud partition only, so the device and gateway
    projections were not hashed when it was loaded; the manifest (signed when a key is
    configured) holds their hashes.
    """
    cache = bundle.manifest.partition(tier).cache
    if cache is not None and cache.embedding is not None:
        path = bundle.path / cache.embedding
        try:
            digest = sha256_file(path)
        except OSError as exc:
            raise ConfigError(f"{tier} cache embedding {cache.embedding}: {exc.strerror or exc}") from None
        if digest != cache.embedding_sha256:
            raise ConfigError(f"{tier} cache embedding {cache.embedding} does not match its sha256")
    return load_embedder(bundle, tier)


def embed(store: ExampleStore, embedder: Embedder, rows: Iterable[Any]) -> tuple[list[str], np.ndarray]:
    """Ids and keys ``(n, d)`` of the rows (``id``, ``encoding``, ``features_path``) that decode."""
    ids, features = [], []
    for row in rows:
        try:
            body = store.blobs.get(row.features_path)
            features.append(codec.decode_features(body, row.encoding, embedder.feature_shape))
            ids.append(row.id)
        except (OSError, ValueError, WireError) as exc:
            logger.debug("unknown example %s not embedded: %s", row.id, exc)
    if not features:
        return [], np.zeros((0, embedder.dim), np.float32)
    return ids, embedder(np.stack(features))


def _ungrouped(store: ExampleStore, cut: str) -> list[Any]:
    c = hard_examples.c
    query = (
        sa.select(c.id, c.encoding, c.features_path)
        .where(c.cut == cut, unknown_condition(), ungrouped_condition())
        .order_by(c.received_at.desc(), c.id)
        .limit(MAX_UNGROUPED)
    )
    with store.engine.connect() as db:
        return list(db.execute(query))


def _existing_groups(store: ExampleStore, cut: str) -> list[tuple[int, list[Any]]]:
    """Each group of ``cut`` with up to :data:`MAX_CENTROID_MEMBERS` members, the lowest ids: content
    hashes, so a sample that does not favour old or new members."""
    c, m = hard_examples.c, unknown_group_members.c
    rank = sa.func.row_number().over(partition_by=m.group_id, order_by=m.example_id).label("n")
    ranked = (
        sa.select(m.group_id, c.id, c.encoding, c.features_path, rank)
        .join(hard_examples, c.id == m.example_id)
        .join(unknown_groups, unknown_groups.c.id == m.group_id)
        .where(unknown_groups.c.cut == cut)
        .subquery()
    )
    query = sa.select(ranked).where(ranked.c.n <= MAX_CENTROID_MEMBERS).order_by(ranked.c.group_id)
    groups: dict[int, list[Any]] = {}
    with store.engine.connect() as db:
        for row in db.execute(query):
            groups.setdefault(row.group_id, []).append(row)
    return list(groups.items())


def _write(store: ExampleStore, cut: str, joins: dict[int, list[str]], clusters: list[list[str]]) -> None:
    """Add the joined members and the new groups in one transaction (named groups label theirs)."""
    if not joins and not clusters:
        return
    now = time.time()
    g = unknown_groups.c
    try:
        with store.engine.begin() as db:
            for group_id, ids in joins.items():
                db.execute(
                    unknown_group_members.insert(), [{"group_id": group_id, "example_id": i} for i in ids]
                )
                db.execute(unknown_groups.update().where(g.id == group_id).values(size=g.size + len(ids)))
                index = db.execute(sa.select(g.class_index).where(g.id == group_id)).scalar_one()
                if index is not None:
                    label_members(db, group_id, index, now, ids)
            for ids in clusters:
                group_id = db.execute(
                    unknown_groups.insert().values(cut=cut, created_at=now, size=len(ids)).returning(g.id)
                ).scalar_one()
                db.execute(
                    unknown_group_members.insert(), [{"group_id": group_id, "example_id": i} for i in ids]
                )
    except sa.exc.IntegrityError:
        raise UnknownGroupError(
            "another refresh grouped some of these examples meanwhile; run it again"
        ) from None
