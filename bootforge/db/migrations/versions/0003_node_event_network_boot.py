"""node_events.network_boot: which timeline events are the machine network-booting

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("node_events", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("network_boot", sa.Boolean(), server_default=sa.false(), nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("node_events", schema=None) as batch_op:
        batch_op.drop_column("network_boot")
