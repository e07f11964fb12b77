"""boot from volume: volume connectors and targets (#15, Ironic API 1.32)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(sa.JSON(none_as_null=True), "postgresql")


def upgrade() -> None:
    op.create_table(
        "volume_connectors",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("uuid", sa.String(length=36), nullable=False),
        sa.Column("node_id", sa.Integer(), nullable=False),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("connector_id", sa.String(length=255), nullable=False),
        sa.Column("extra", JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["node_id"], ["nodes.id"], name=op.f("fk_volume_connectors_node_id_nodes"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_volume_connectors")),
        sa.UniqueConstraint("type", "connector_id", name=op.f("uq_volume_connectors_type")),
        sa.UniqueConstraint("uuid", name=op.f("uq_volume_connectors_uuid")),
    )
    op.create_index(op.f("ix_volume_connectors_node_id"), "volume_connectors", ["node_id"], unique=False)
    op.create_table(
        "volume_targets",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("uuid", sa.String(length=36), nullable=False),
        sa.Column("node_id", sa.Integer(), nullable=False),
        sa.Column("volume_type", sa.String(length=64), nullable=False),
        sa.Column("properties", JSON, nullable=False),
        sa.Column("boot_index", sa.Integer(), nullable=False),
        sa.Column("volume_id", sa.String(length=255), nullable=False),
        sa.Column("extra", JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["node_id"], ["nodes.id"], name=op.f("fk_volume_targets_node_id_nodes"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_volume_targets")),
        sa.UniqueConstraint("node_id", "boot_index", name=op.f("uq_volume_targets_node_id")),
        sa.UniqueConstraint("uuid", name=op.f("uq_volume_targets_uuid")),
    )
    op.create_index(op.f("ix_volume_targets_node_id"), "volume_targets", ["node_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_volume_targets_node_id"), table_name="volume_targets")
    op.drop_table("volume_targets")
    op.drop_index(op.f("ix_volume_connectors_node_id"), table_name="volume_connectors")
    op.drop_table("volume_connectors")
