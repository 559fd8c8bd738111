"""Drift events (the devices' drift alarms) and the site that uploaded each hard example.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("hard_examples") as batch:
        batch.add_column(sa.Column("site", sa.String(length=64), nullable=True))
        batch.create_index("ix_hard_examples_site", ["site"], unique=False)
    op.create_table(
        "drift_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("site", sa.String(length=64), nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("model_version", sa.Integer(), nullable=False),
        sa.Column("detected_at", sa.Double(), nullable=False),
        sa.Column("received_at", sa.Double(), nullable=False),
        sa.Column("example_id", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("example_id"),
    )
    op.create_index("ix_drift_events_site", "drift_events", ["site"], unique=False)
    op.create_index("ix_drift_events_received_at", "drift_events", ["received_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_drift_events_received_at", table_name="drift_events")
    op.drop_index("ix_drift_events_site", table_name="drift_events")
    op.drop_table("drift_events")
    with op.batch_alter_table("hard_examples") as batch:
        batch.drop_index("ix_hard_examples_site")
        batch.drop_column("site")
