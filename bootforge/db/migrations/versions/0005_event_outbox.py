"""event_outbox: outbound events (webhooks) waiting for delivery, written with the change they report

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "event_outbox",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("target", sa.String(length=64), nullable=False),
        sa.Column("conductor", sa.String(length=255), nullable=False),
        sa.Column("node_uuid", sa.String(length=36), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_event_outbox")),
    )
    op.create_index(
        "ix_event_outbox_target_conductor_id", "event_outbox", ["target", "conductor", "id"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_event_outbox_target_conductor_id", table_name="event_outbox")
    op.drop_table("event_outbox")
