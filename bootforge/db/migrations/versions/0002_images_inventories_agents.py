"""image catalogue, node inventories and agent sessions

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(sa.JSON(none_as_null=True), "postgresql")
BIG = sa.Integer().with_variant(sa.BigInteger(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "agent_sessions",
        sa.Column("node_id", sa.Integer(), nullable=False),
        sa.Column("boot_id", sa.String(length=36), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("agent_address", sa.String(length=64), nullable=True),
        sa.Column("command_id", sa.String(length=36), nullable=True),
        sa.Column("command_status", sa.String(length=16), nullable=True),
        sa.Column("progress", JSON, nullable=False),
        sa.Column("result", JSON, nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["node_id"], ["nodes.id"], name=op.f("fk_agent_sessions_node_id_nodes"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("node_id", name=op.f("pk_agent_sessions")),
    )
    op.create_table(
        "images",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("uuid", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("disk_format", sa.String(length=16), nullable=False),
        sa.Column("size", BIG, nullable=False),
        sa.Column("virtual_size", BIG, nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("sha512", sa.String(length=128), nullable=False),
        sa.Column("stream_path", sa.Text(), nullable=False),
        sa.Column("stream_format", sa.String(length=16), nullable=False),
        sa.Column("stream_size", BIG, nullable=False),
        sa.Column("stream_sha256", sa.String(length=64), nullable=False),
        sa.Column("stream_sha512", sa.String(length=128), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_images")),
        sa.UniqueConstraint("name", name=op.f("uq_images_name")),
        sa.UniqueConstraint("uuid", name=op.f("uq_images_uuid")),
    )
    op.create_table(
        "node_inventories",
        sa.Column("node_id", sa.Integer(), nullable=False),
        sa.Column("inventory", JSON, nullable=False),
        sa.Column("plugin_data", JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["node_id"],
            ["nodes.id"],
            name=op.f("fk_node_inventories_node_id_nodes"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("node_id", name=op.f("pk_node_inventories")),
    )


def downgrade() -> None:
    op.drop_table("node_inventories")
    op.drop_table("images")
    op.drop_table("agent_sessions")
