"""Baseline: hard examples, model versions and retraining jobs, as ``create_all`` made them.

Databases made before migrations existed already have some or all of these tables, with
exactly these definitions; each table is created only when it is missing, so upgrading
such a database adopts it without touching its rows.

Revision ID: 0001
Revises:
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    if "hard_examples" not in existing:
        op.create_table(
            "hard_examples",
            sa.Column("id", sa.String(length=64), nullable=False),
            sa.Column("device_id", sa.String(length=64), nullable=False),
            sa.Column("model_version", sa.Integer(), nullable=False),
            sa.Column("cut", sa.String(length=8), nullable=False),
            sa.Column("encoding", sa.String(length=16), nullable=False),
            sa.Column("reasons", sa.String(length=200), nullable=False),
            sa.Column("predicted", sa.Integer(), nullable=False),
            sa.Column("confidence", sa.Double(), nullable=False),
            sa.Column("tier", sa.String(length=32), nullable=False),
            sa.Column("created_at", sa.Double(), nullable=False),
            sa.Column("received_at", sa.Double(), nullable=False),
            sa.Column("teacher_label", sa.Integer(), nullable=True),
            sa.Column("human_label", sa.Integer(), nullable=True),
            sa.Column("labelled_at", sa.Double(), nullable=True),
            sa.Column("features_path", sa.String(length=100), nullable=False),
            sa.Column("raw_path", sa.String(length=100), nullable=True),
            sa.PrimaryKeyConstraint("id"),
        )
        op.create_index("ix_hard_examples_device_id", "hard_examples", ["device_id"], unique=False)
        op.create_index("ix_hard_examples_model_version", "hard_examples", ["model_version"], unique=False)
        op.create_index("ix_hard_examples_received", "hard_examples", ["received_at", "id"], unique=False)
    if "model_versions" not in existing:
        op.create_table(
            "model_versions",
            sa.Column("version", sa.Integer(), autoincrement=False, nullable=False),
            sa.Column("name", sa.String(length=200), nullable=False),
            sa.Column("num_classes", sa.Integer(), nullable=False),
            sa.Column("spec", sa.Text(), nullable=False),
            sa.Column("first_served_at", sa.Double(), nullable=False),
            sa.PrimaryKeyConstraint("version"),
        )
    if "retrain_jobs" not in existing:
        op.create_table(
            "retrain_jobs",
            sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
            sa.Column("state", sa.String(length=16), nullable=False),
            sa.Column("trigger", sa.String(length=16), nullable=False),
            sa.Column("created_at", sa.Double(), nullable=False),
            sa.Column("started_at", sa.Double(), nullable=True),
            sa.Column("finished_at", sa.Double(), nullable=True),
            sa.Column("heartbeat_at", sa.Double(), nullable=True),
            sa.Column("progress", sa.Double(), nullable=False),
            sa.Column("stage", sa.String(length=200), nullable=False),
            sa.Column("base_version", sa.Integer(), nullable=True),
            sa.Column("candidate_version", sa.Integer(), nullable=True),
            sa.Column("examples_until", sa.Double(), nullable=False),
            sa.Column("metrics", sa.Text(), nullable=True),
            sa.Column("error", sa.Text(), nullable=True),
            sa.Column("log_path", sa.String(length=500), nullable=True),
            sa.Column("pid", sa.Integer(), nullable=True),
            sa.Column("active", sa.Integer(), nullable=True),
            sa.PrimaryKeyConstraint("id"),
            sa.UniqueConstraint("active"),
        )


def downgrade() -> None:
    op.drop_table("retrain_jobs")
    op.drop_table("model_versions")
    op.drop_index("ix_hard_examples_received", table_name="hard_examples")
    op.drop_index("ix_hard_examples_model_version", table_name="hard_examples")
    op.drop_index("ix_hard_examples_device_id", table_name="hard_examples")
    op.drop_table("hard_examples")
