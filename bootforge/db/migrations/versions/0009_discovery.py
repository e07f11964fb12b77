"""discovery (#15): discovery rules, and one node per machine serial

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(sa.JSON(none_as_null=True), "postgresql")


def upgrade() -> None:
    op.create_table(
        "discovery_rules",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("uuid", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=True),
        sa.Column("description", sa.String(length=255), nullable=True),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("match", sa.String(length=8), nullable=False),
        sa.Column("conditions", JSON, nullable=False),
        sa.Column("actions", JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_discovery_rules")),
        sa.UniqueConstraint("uuid", name=op.f("uq_discovery_rules_uuid")),
        sa.UniqueConstraint("name", name=op.f("uq_discovery_rules_name")),
    )
    op.create_table(
        "machine_serials",
        sa.Column("serial", sa.String(length=255), nullable=False),
        sa.Column("node_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["node_id"], ["nodes.id"], name=op.f("fk_machine_serials_node_id_nodes"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("serial", name=op.f("pk_machine_serials")),
    )
    op.create_index(op.f("ix_machine_serials_node_id"), "machine_serials", ["node_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_machine_serials_node_id"), table_name="machine_serials")
    op.drop_table("machine_serials")
    op.drop_table("discovery_rules")
