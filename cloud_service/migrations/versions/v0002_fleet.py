"""The fleet: gateways' heartbeats and the devices the cloud has seen (the dashboard's tables).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "gateway_heartbeats",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("gateway_id", sa.String(length=64), nullable=False),
        sa.Column("token_name", sa.String(length=64), nullable=False),
        sa.Column("received_at", sa.Double(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_gateway_heartbeats_gateway_id", "gateway_heartbeats", ["gateway_id"], unique=False)
    op.create_index("ix_gateway_heartbeats_received_at", "gateway_heartbeats", ["received_at"], unique=False)
    op.create_table(
        "fleet_devices",
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("first_seen", sa.Double(), nullable=False),
        sa.Column("last_seen", sa.Double(), nullable=False),
        sa.Column("via", sa.String(length=80), nullable=False),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("device_id"),
    )


def downgrade() -> None:
    op.drop_table("fleet_devices")
    op.drop_index("ix_gateway_heartbeats_received_at", table_name="gateway_heartbeats")
    op.drop_index("ix_gateway_heartbeats_gateway_id", table_name="gateway_heartbeats")
    op.drop_table("gateway_heartbeats")
