"""images.cpu_arch: the architecture an image is built for (#12 ARM64); NULL = any

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable and without a default: images imported before this revision stay "any architecture",
    # which is what bootforge assumed of them until now.
    op.add_column("images", sa.Column("cpu_arch", sa.String(length=16), nullable=True))


def downgrade() -> None:
    # SQLite drops a column by copying the table (batch mode); PostgreSQL drops it in place.
    with op.batch_alter_table("images") as batch:
        batch.drop_column("cpu_arch")
