"""A site's labelled examples with their raw inputs, read from the example store.

Two readers share :func:`read_examples`: the exit-threshold fit
(:mod:`edgecascade.cloud_service.site_thresholds`) takes a site's *audited* examples, an
unbiased sample of its inputs; collaborative training takes the examples a person labelled
for the site (:func:`human_labelled`), handed back to the site as an ``.npz`` in the form
its SuperNode reads (:func:`npz_bytes`, the ``x``/``y`` arrays of
:mod:`edgecascade.federation.site_data`). Rows whose raw input cannot be read, has another
shape or holds a label outside the model's classes are left out and counted, never fatal.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import sqlalchemy as sa

from edgecascade.cloud_service.store import ExampleStore, hard_examples
from edgecascade.device_sdk.errors import WireError
from edgecascade.device_sdk.wire import decode_tensor

logger = logging.getLogger(__name__)

MAX_EXAMPLES = 100_000  # the most one answer holds (about 80 MB of 28x28 images)


@dataclass(frozen=True)
class SiteExamples:
    """A site's labelled raw inputs (the model's input shape) and their labels."""

    x: np.ndarray
    y: np.ndarray
    skipped: int = 0  # rows that could not be used: raw tensor unreadable, shape or label off
    ids: tuple[str, ...] = field(default=(), compare=False)

    def __len__(self) -> int:
        return len(self.y)


def read_examples(
    store: ExampleStore,
    conditions: Sequence[Any],
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    newest_first: bool = False,
    limit: int | None = None,
) -> SiteExamples:
    """The rows matching ``conditions`` that have a label and a raw input fitting the model.

    The label is the human's, else the teacher's. Grey inputs stored as ``(H, W)`` get
    their channel axis for an ``(H, W, 1)`` model.
    """
    c = hard_examples.c
    order = (c.received_at.desc(), c.id) if newest_first else (c.received_at, c.id)
    query = (
        sa.select(c.id, c.raw_path, c.human_label, c.teacher_label)
        .where(*conditions, c.raw_path.is_not(None))
        .where(sa.or_(c.human_label.is_not(None), c.teacher_label.is_not(None)))
        .order_by(*order)
        .limit(limit)
    )
    with store.engine.connect() as db:
        rows = db.execute(query).all()
    xs: list[np.ndarray] = []
    ys: list[int] = []
    ids: list[str] = []
    skipped = 0
    for row in rows:
        label = row.human_label if row.human_label is not None else row.teacher_label
        try:
            x = decode_tensor(store.blobs.get(row.raw_path))
        except (WireError, OSError, ValueError) as exc:
            logger.warning("example %s: unreadable raw input (%s); left out", row.id, exc)
            skipped += 1
            continue
        if x.shape != input_shape and (*x.shape, 1) == input_shape:
            x = x[..., None]
        if x.shape != input_shape or not 0 <= label < num_classes or not np.isfinite(x).all():
            skipped += 1
            continue
        xs.append(x)
        ys.append(int(label))
        ids.append(row.id)
    x_all = np.stack(xs) if xs else np.zeros((0, *input_shape), np.float32)
    return SiteExamples(x_all, np.asarray(ys, dtype=np.int64), skipped, tuple(ids))


def human_labelled(
    store: ExampleStore, site: str, input_shape: tuple[int, ...], num_classes: int, limit: int
) -> SiteExamples:
    """The newest ``limit`` examples of ``site`` a person labelled, with their raw inputs."""
    c = hard_examples.c
    return read_examples(
        store,
        [c.site == site, c.human_label.is_not(None)],
        input_shape,
        num_classes,
        newest_first=True,
        limit=limit,
    )


def npz_bytes(examples: SiteExamples, classes: Sequence[str]) -> bytes:
    """``examples`` as an ``.npz``: ``x`` raw 0-255 uint8 images, ``y`` labels, ``ids``, ``classes``.

    Plain arrays only (fixed-width strings, no objects), so a reader needs no pickle.
    """
    x = np.clip(np.rint(examples.x), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        x=x,
        y=examples.y.astype(np.int64),
        ids=np.array(examples.ids, dtype=np.str_),
        classes=np.array(tuple(classes), dtype=np.str_),
    )
    return buffer.getvalue()
