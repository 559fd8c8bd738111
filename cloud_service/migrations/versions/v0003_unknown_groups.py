"""Groups of unknown uploads and their members (operators name a group as a new class).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "unknown_groups",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("cut", sa.String(length=8), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("class_name", sa.String(length=64), nullable=True),
        sa.Column("class_index", sa.Integer(), nullable=True),
        sa.Column("named_at", sa.Double(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "unknown_group_members",
        sa.Column("group_id", sa.Integer(), nullable=False),
        sa.Column("example_id", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["example_id"], ["hard_examples.id"]),
        sa.ForeignKeyConstraint(["group_id"], ["unknown_groups.id"]),
        sa.PrimaryKeyConstraint("example_id"),
    )
    op.create_index("ix_unknown_group_members_group_id", "unknown_group_members", ["group_id"], unique=False)
    op.create_table(
        "named_classes",
        sa.Column("class_index", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("class_name", sa.String(length=64), nullable=False),
        sa.Column("named_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("class_index"),
        sa.UniqueConstraint("class_name"),
    )


def downgrade() -> None:
    op.drop_table("named_classes")
    op.drop_index("ix_unknown_group_members_group_id", table_name="unknown_group_members")
    op.drop_table("unknown_group_members")
    op.drop_table("unknown_groups")
