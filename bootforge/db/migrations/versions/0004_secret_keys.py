"""secret_keys: the fingerprint of the key that encrypts node secrets at rest

The data part of this change (encrypting the plaintext BMC passwords an older bootforge stored)
needs the key file, which a migration does not have: bootforge.db.secrets.open_with_key does it at
every start, right after the upgrade, in one transaction (see bootforge/db/secrets.py).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "secret_keys",
        sa.Column("purpose", sa.String(length=64), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("purpose", name=op.f("pk_secret_keys")),
    )


def downgrade() -> None:
    # Secrets stay encrypted after a downgrade: an older bootforge cannot read them. Set the BMC
    # passwords again after downgrading (or restore the backup taken before the upgrade).
    op.drop_table("secret_keys")
