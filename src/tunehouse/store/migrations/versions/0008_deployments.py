"""deployments: models and checkpoints loaded by a serving engine; deleted fine-tuned models

Revision ID: 0008
Revises: 0007
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
WHEN = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "deployments",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("key", sa.String(16), nullable=False),
        sa.Column("account_id", BIG_ID, sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("model_name", sa.String(160), nullable=False),
        sa.Column("model_id", BIG_ID, sa.ForeignKey("models.id"), nullable=True),
        sa.Column("checkpoint_id", BIG_ID, sa.ForeignKey("checkpoints.id"), nullable=True),
        sa.Column("base_model", sa.String(128), nullable=False),
        sa.Column("base_path", sa.Text(), nullable=False),
        sa.Column("weights_path", sa.Text(), nullable=True),
        sa.Column("weights_kind", sa.String(16), nullable=False),
        sa.Column("engine", sa.String(16), nullable=False),
        sa.Column("capacity", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("endpoint", sa.String(160), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("requests", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("created_at", WHEN, nullable=False),
        sa.Column("updated_at", WHEN, nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("key"),
        sa.UniqueConstraint("account_id", "endpoint", name="uq_deployments_account_endpoint"),
    )
    op.create_index("ix_deployments_account_id", "deployments", ["account_id"])
    op.create_index("ix_deployments_status", "deployments", ["status"])
    with op.batch_alter_table("models") as batch:
        batch.add_column(sa.Column("deleted_at", WHEN, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.drop_column("deleted_at")
    op.drop_index("ix_deployments_status", "deployments")
    op.drop_index("ix_deployments_account_id", "deployments")
    op.drop_table("deployments")
