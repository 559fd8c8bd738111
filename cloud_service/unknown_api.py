"""The unknown-groups API: group the unknown uploads, look at a group, name it as a class.

Routes and scopes (all ``admin``)::

    GET  /v1/unknown-groups                    every group, and how many unknown examples wait
    POST /v1/unknown-groups/refresh            group the unknown examples not in a group yet
    GET  /v1/unknown-groups/<id>               the group and a page of its members ?limit=&cursor=
    GET  /v1/unknown-groups/<id>/examples.png  up to 16 members' raw inputs in one grid image
    PUT  /v1/unknown-groups/<id>               {"class_name": "Bag"}: name the group as a class

Grouping is in :mod:`edgecascade.cloud_service.unknown_refresh`, the tables and naming in
:mod:`edgecascade.cloud_service.unknown_groups`. The app's Prometheus registry also gets
the groups (named and not) and the unknown examples (grouped and not), read at scrape time.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Iterator
from typing import Any, cast

import numpy as np
from flask import Blueprint, Flask, Response, current_app, jsonify, request
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from werkzeug.exceptions import BadRequest, Conflict, HTTPException, NotFound, UnprocessableEntity

from edgecascade.cloud_service import unknown_groups, validation
from edgecascade.cloud_service.auth import require_scope
from edgecascade.cloud_service.dashboard.png import png_bytes
from edgecascade.cloud_service.learning import MAX_LIST, Learning, page_cursor
from edgecascade.cloud_service.store import database_exists
from edgecascade.cloud_service.unknown_groups import MAX_CLASS_NAME, UnknownGroupError
from edgecascade.cloud_service.unknown_refresh import refresh
from edgecascade.device_sdk import wire
from edgecascade.device_sdk.errors import WireError

logger = logging.getLogger(__name__)

ROUTE_UNKNOWN_GROUPS = "/v1/unknown-groups"
GRID_IMAGES = 16  # raw inputs a group's picture shows
_GRID_GAP = 2  # pixels between images
_GRID_GREY = 128

NAME_SCHEMA = {
    "type": "object",
    "required": ["class_name"],
    "additionalProperties": False,
    "properties": {
        "class_name": {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_CLASS_NAME,
            "pattern": r"^[^\s\x00-\x1f\x7f](?:[^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f])?$",  # printable, trimmed
        }
    },
}

unknown_api = Blueprint("unknown_groups", __name__)
_LEARNING = "edgecascade.learning"
_REFRESHING = threading.Lock()  # one refresh at a time in this process


def init_app(app: Flask) -> None:
    """Register the routes (after the learning loop); with the app's metrics registry, the gauges."""
    app.register_blueprint(unknown_api)
    registry = app.extensions.get("edgecascade.metrics")
    if registry is not None:
        registry.register(UnknownCollector(app))


def _learning() -> Learning:
    return cast(Learning, current_app.extensions[_LEARNING])


def _served() -> tuple[str, ...]:
    return tuple(_learning().inference.bundle.manifest.classes)


def _count(key: str, n: int = 1) -> None:
    if n:
        current_app.extensions["edgecascade"].counters.add(key, n)


@unknown_api.get(ROUTE_UNKNOWN_GROUPS)
@require_scope("admin")
def list_groups() -> Any:
    engine = _learning().store.engine
    groups = unknown_groups.list_groups(engine)
    return jsonify(
        groups=[g.to_json() for g in groups],
        ungrouped=unknown_groups.counts(engine)["examples_ungrouped"],
    )


@unknown_api.post(f"{ROUTE_UNKNOWN_GROUPS}/refresh")
@require_scope("admin")
def refresh_groups() -> Any:
    learning = _learning()
    if not _REFRESHING.acquire(blocking=False):
        raise Conflict("a refresh of the unknown groups is running; try again when it ends")
    try:
        report = refresh(learning.store, learning.inference.bundle)
    except UnknownGroupError as exc:
        raise _http(exc) from None
    finally:
        _REFRESHING.release()
    for cut in report.cuts:
        _count("unknown_groups_formed", cut.new_groups)
        _count("unknown_examples_grouped", cut.joined + cut.grouped)
    return jsonify(report.to_json())


# One rule for both methods: with two, werkzeug answers an id beyond the bound 405 for one of them.
@unknown_api.route(f"{ROUTE_UNKNOWN_GROUPS}/<int:group_id>", methods=["GET", "PUT"])
@require_scope("admin")
def group(group_id: int) -> Any:
    return name_group(group_id) if request.method == "PUT" else show_group(group_id)


def show_group(group_id: int) -> Any:
    problems: list[str] = []
    limit = validation.query_arg(request.args, "limit", validation.bounded_int(1, MAX_LIST), problems)
    after = validation.query_arg(request.args, "cursor", page_cursor, problems)
    if problems:
        raise BadRequest("invalid query: " + "; ".join(problems))
    engine = _learning().store.engine
    group = unknown_groups.get_group(engine, group_id)
    if group is None:
        raise NotFound(f"no unknown group {group_id}")
    rows, cursor = unknown_groups.members_page(engine, group_id, limit or 100, after)
    return jsonify(group=group.to_json(), examples=[r.to_json() for r in rows], next_cursor=cursor)


def name_group(group_id: int) -> Any:
    class_name = validation.json_body(NAME_SCHEMA)["class_name"]
    try:
        group = unknown_groups.name_group(_learning().store.engine, group_id, class_name, _served())
    except UnknownGroupError as exc:
        raise _http(exc) from None
    logger.info("unknown group %d is class %d %r", group.id, group.class_index, group.class_name)
    return jsonify(group.to_json())


@unknown_api.get(f"{ROUTE_UNKNOWN_GROUPS}/<int:group_id>/examples.png")
@require_scope("admin")
def group_picture(group_id: int) -> Any:
    store = _learning().store
    if unknown_groups.get_group(store.engine, group_id) is None:
        raise NotFound(f"no unknown group {group_id}")
    rows = unknown_groups.images_of(store.engine, group_id, GRID_IMAGES)
    if not rows:
        raise NotFound(f"no member of unknown group {group_id} was uploaded with its raw input")
    images: list[np.ndarray] = []
    for row in rows:
        try:
            _, raw = store.tensors(row)
            assert raw is not None  # images_of picks rows with a raw input
            images.append(wire.decode_tensor(raw))
        except (OSError, ValueError, WireError) as exc:
            logger.warning("raw input of %s not shown: %s", row.id, exc)
    try:
        picture = png_bytes(grid(images))
    except ValueError as exc:
        raise UnprocessableEntity(f"the raw inputs of group {group_id} are not images: {exc}") from None
    return Response(picture, mimetype="image/png", headers={"Cache-Control": "no-store"})


def grid(images: list[np.ndarray]) -> np.ndarray:
    """The images (uint8, one shape: that of the first) side by side, four to a row, grey between;
    small images are doubled so a browser shows them at a readable size. ValueError: nothing to show."""
    if not images:
        raise ValueError("no raw input could be read")
    first = images[0] if images[0].ndim == 3 else images[0][..., None]
    shown = [i if i.ndim == 3 else i[..., None] for i in images]
    shown = [i for i in shown if i.shape == first.shape and i.dtype == np.uint8]
    if not shown:
        raise ValueError(f"raw inputs are {images[0].dtype}, not uint8")
    scale = 2 if max(first.shape[:2]) < 64 else 1
    h, w, channels = first.shape[0] * scale, first.shape[1] * scale, first.shape[2]
    columns = min(4, len(shown))
    rows = math.ceil(len(shown) / columns)
    out = np.full(
        (rows * h + (rows - 1) * _GRID_GAP, columns * w + (columns - 1) * _GRID_GAP, channels),
        _GRID_GREY,
        np.uint8,
    )
    for n, image in enumerate(shown):
        y, x = divmod(n, columns)
        top, left = y * (h + _GRID_GAP), x * (w + _GRID_GAP)
        out[top : top + h, left : left + w] = image.repeat(scale, axis=0).repeat(scale, axis=1)
    return out


def _http(exc: UnknownGroupError) -> HTTPException:
    return NotFound(str(exc)) if exc.status == 404 else Conflict(str(exc))


class UnknownCollector(Collector):
    """Groups and unknown examples as gauges, read at scrape time once the database exists."""

    def __init__(self, app: Flask) -> None:
        self.app = app

    def collect(self) -> Iterator[Metric]:
        learning = self.app.extensions.get(_LEARNING)
        if learning is None or not database_exists(learning.config.cloud.database_url):
            return
        try:
            numbers = unknown_groups.counts(learning.store.engine)
        except Exception as exc:  # a scrape reports what it can; the database's trouble shows elsewhere
            logger.warning("cannot count unknown groups: %s", exc)
            return
        groups = GaugeMetricFamily(
            "edgecascade_cloud_unknown_groups", "Groups of unknown uploads, named or not", labels=["state"]
        )
        groups.add_metric(["named"], numbers["groups_named"])
        groups.add_metric(["unnamed"], numbers["groups_unnamed"])
        yield groups
        examples = GaugeMetricFamily(
            "edgecascade_cloud_unknown_examples",
            "Stored hard examples kept as unknown, in a group or not",
            labels=["state"],
        )
        examples.add_metric(["grouped"], numbers["examples_grouped"])
        examples.add_metric(["ungrouped"], numbers["examples_ungrouped"])
        yield examples
