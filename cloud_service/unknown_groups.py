"""Groups of uploaded unknown inputs, and the new classes operators name them as.

Hard examples kept for reason ``unknown`` are inputs the model found unfamiliar. Many of
them are one thing the model was never taught (a new kind of object at a site); grouping
them lets an operator look at a few images and name the whole group as a class at once.

Tables (migration 0003), in the cloud database's one metadata:

* ``unknown_groups``: one row per group, of one cut (keys of different cuts are not
  comparable), its size and, once named, its class name and class index;
* ``unknown_group_members``: which example is in which group; an example is in at most
  one group and never moves (:mod:`edgecascade.cloud_service.unknown_refresh` only adds);
* ``named_classes``: each class operators added, its index and name both unique, so two
  server processes naming new classes at the same moment cannot hand out one index twice
  (the later insert fails, and its naming is tried again).

Naming a group (:func:`name_group`) gives its class the name's index in the served
classes, else the index of a new class after every class already known
(:func:`extended_classes`), and sets the human label of every member to it. A name is
final: the same name again changes nothing, another one is refused.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from edgecascade.cloud_service.store import ExampleRow, encode_cursor, hard_examples, metadata
from edgecascade.device_sdk.errors import EdgeCascadeError

UNKNOWN = "unknown"  # the hard-example reason grouped here
SHOWN_IDS = 5  # example ids a group's summary lists
MAX_CLASS_NAME = 64

unknown_groups = sa.Table(
    "unknown_groups",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("cut", sa.String(8), nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("size", sa.Integer, nullable=False),
    sa.Column("class_name", sa.String(MAX_CLASS_NAME), nullable=True),
    sa.Column("class_index", sa.Integer, nullable=True),
    sa.Column("named_at", sa.Double, nullable=True),
)

unknown_group_members = sa.Table(
    "unknown_group_members",
    metadata,
    sa.Column("group_id", sa.Integer, sa.ForeignKey("unknown_groups.id"), nullable=False, index=True),
    sa.Column("example_id", sa.String(64), sa.ForeignKey("hard_examples.id"), primary_key=True),
)

named_classes = sa.Table(
    "named_classes",
    metadata,
    sa.Column("class_index", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("class_name", sa.String(MAX_CLASS_NAME), nullable=False, unique=True),
    sa.Column("named_at", sa.Double, nullable=False),
)

NAMING_ATTEMPTS = 5  # tries of a naming whose new class index another process took first


class UnknownGroupError(EdgeCascadeError):
    """A group operation that cannot be done; ``status`` is the HTTP status that says why.

    404: no such group; 409: it conflicts with the groups' state (a group named otherwise,
    examples another refresh grouped meanwhile).
    """

    def __init__(self, message: str, status: int = 409) -> None:
        self.status = status
        super().__init__(message)


@dataclass(frozen=True)
class GroupRow:
    """A group and a glimpse of its members."""

    id: int
    cut: str
    created_at: float
    size: int
    class_name: str | None
    class_index: int | None
    named_at: float | None
    examples: tuple[str, ...] = ()  # the first few member ids
    has_images: bool = False  # some member was uploaded with its raw input

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["examples"] = list(self.examples)
        return data


def unknown_condition() -> Any:
    """SQL: the example's reasons include ``unknown`` (reasons are stored comma-separated)."""
    return (sa.literal(",") + hard_examples.c.reasons + sa.literal(",")).like(f"%,{UNKNOWN},%")


def ungrouped_condition() -> Any:
    """SQL: the example is in no group."""
    return hard_examples.c.id.not_in(sa.select(unknown_group_members.c.example_id))


def extended_classes(engine: Engine, served: tuple[str, ...]) -> tuple[str, ...]:
    """The served classes, then the names given to groups that are not among them, in naming order."""
    with engine.connect() as db:
        return _extended(db, served)


def _extended(db: Connection, served: tuple[str, ...]) -> tuple[str, ...]:
    query = sa.select(named_classes.c.class_name).order_by(named_classes.c.class_index)
    return (*served, *(name for name in db.execute(query).scalars() if name not in served))


def list_groups(engine: Engine) -> list[GroupRow]:
    """Every group, oldest first, each with its first few example ids."""
    with engine.connect() as db:
        rows = db.execute(sa.select(unknown_groups).order_by(unknown_groups.c.id)).all()
        return [_with_glimpse(db, row) for row in rows]


def get_group(engine: Engine, group_id: int) -> GroupRow | None:
    with engine.connect() as db:
        row = db.execute(sa.select(unknown_groups).where(unknown_groups.c.id == group_id)).first()
        return None if row is None else _with_glimpse(db, row)


def _with_glimpse(db: Connection, row: Any) -> GroupRow:
    m = unknown_group_members.c
    ids = db.execute(
        sa.select(m.example_id).where(m.group_id == row.id).order_by(m.example_id).limit(SHOWN_IDS)
    ).scalars()
    images = db.execute(
        sa.select(sa.func.count())
        .select_from(unknown_group_members.join(hard_examples, hard_examples.c.id == m.example_id))
        .where(m.group_id == row.id, hard_examples.c.raw_path.is_not(None))
    ).scalar_one()
    return GroupRow(**dict(row._mapping), examples=tuple(ids), has_images=images > 0)


def members_page(
    engine: Engine, group_id: int, limit: int, after: tuple[float, str] | None = None
) -> tuple[list[ExampleRow], str | None]:
    """Up to ``limit`` members oldest first (by arrival, as hard examples list) and the next cursor."""
    c = hard_examples.c
    query = (
        sa.select(hard_examples)
        .join(unknown_group_members, unknown_group_members.c.example_id == c.id)
        .where(unknown_group_members.c.group_id == group_id)
    )
    if after is not None:
        received_at, example_id = after
        query = query.where(
            sa.or_(c.received_at > received_at, sa.and_(c.received_at == received_at, c.id > example_id))
        )
    query = query.order_by(c.received_at, c.id).limit(limit + 1)
    with engine.connect() as db:
        rows = [ExampleRow.from_row(r) for r in db.execute(query)]
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, encode_cursor(rows[-1]) if more else None


def images_of(engine: Engine, group_id: int, limit: int) -> list[ExampleRow]:
    """Up to ``limit`` members that came with their raw input, oldest first."""
    c = hard_examples.c
    query = (
        sa.select(hard_examples)
        .join(unknown_group_members, unknown_group_members.c.example_id == c.id)
        .where(unknown_group_members.c.group_id == group_id, c.raw_path.is_not(None))
        .order_by(c.received_at, c.id)
        .limit(limit)
    )
    with engine.connect() as db:
        return [ExampleRow.from_row(r) for r in db.execute(query)]


def counts(engine: Engine) -> dict[str, int]:
    """Numbers for the metrics: groups named and not, unknown examples grouped and not."""
    g = unknown_groups.c
    with engine.connect() as db:
        named = db.execute(sa.select(sa.func.count()).where(g.class_name.is_not(None))).scalar_one()
        total = db.execute(sa.select(sa.func.count()).select_from(unknown_groups)).scalar_one()
        grouped = db.execute(sa.select(sa.func.count()).select_from(unknown_group_members)).scalar_one()
        unknown = db.execute(
            sa.select(sa.func.count()).select_from(hard_examples).where(unknown_condition())
        ).scalar_one()
    return {
        "groups_named": int(named),
        "groups_unnamed": int(total - named),
        "examples_grouped": int(grouped),
        "examples_ungrouped": max(0, int(unknown - grouped)),
    }


def name_group(engine: Engine, group_id: int, class_name: str, served: tuple[str, ...]) -> GroupRow:
    """Name a group as a class and label its members (see the module docstring); returns the group.

    Raises :class:`UnknownGroupError`: 404 for no such group, 409 for a group named otherwise.
    """
    for attempt in range(NAMING_ATTEMPTS):
        try:
            with engine.begin() as db:
                _name(db, group_id, class_name, served)
            break
        except (sa.exc.IntegrityError, sa.exc.OperationalError):
            # another process took the new index or name first (PostgreSQL: a unique violation;
            # SQLite: this transaction's snapshot went stale): read again and retry
            if attempt == NAMING_ATTEMPTS - 1:
                raise UnknownGroupError(
                    f"naming group {group_id} kept colliding with other namings"
                ) from None
    group = get_group(engine, group_id)
    assert group is not None  # groups are never deleted
    return group


def _name(db: Connection, group_id: int, class_name: str, served: tuple[str, ...]) -> None:
    row = db.execute(sa.select(unknown_groups).where(unknown_groups.c.id == group_id)).first()
    if row is None:
        raise UnknownGroupError(f"no unknown group {group_id}", 404)
    if row.class_name is not None:
        if row.class_name != class_name:
            raise UnknownGroupError(
                f"group {group_id} is already named {row.class_name!r} (class {row.class_index}); "
                "a name is final"
            )
        return
    now = time.time()
    index = class_index(db, class_name, served, now)
    db.execute(
        unknown_groups.update()
        .where(unknown_groups.c.id == group_id)
        .values(class_name=class_name, class_index=index, named_at=now)
    )
    label_members(db, group_id, index, now)


def class_index(db: Connection, class_name: str, served: tuple[str, ...], now: float) -> int:
    """The index of ``class_name``: in the served classes, else among the named ones, else the next
    (recorded in ``named_classes``; an IntegrityError if another process recorded it first)."""
    known = _extended(db, served)
    if class_name in known:
        return known.index(class_name)
    db.execute(named_classes.insert().values(class_index=len(known), class_name=class_name, named_at=now))
    return len(known)


def label_members(
    db: Connection, group_id: int, index: int, now: float, ids: list[str] | None = None
) -> None:
    """Set the human label of the group's members (or of ``ids`` among them) to ``index``."""
    members = sa.select(unknown_group_members.c.example_id).where(
        unknown_group_members.c.group_id == group_id
    )
    where = hard_examples.c.id.in_(ids) if ids is not None else hard_examples.c.id.in_(members)
    db.execute(hard_examples.update().where(where).values(human_label=index, labelled_at=now))
