"""published_models: runs' outputs and checkpoints published as versions of named model sets

Revision ID: 0010
Revises: 0009
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
WHEN = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "published_models",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("key", sa.String(16), nullable=False),
        sa.Column("set_key", sa.String(16), nullable=False),
        sa.Column("set_name", sa.String(128), nullable=False),
        sa.Column("account_id", BIG_ID, sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("run_id", BIG_ID, sa.ForeignKey("runs.id"), nullable=False),
        sa.Column("step", sa.Integer(), nullable=True),
        sa.Column("created_at", WHEN, nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("key"),
    )
    op.create_index("ix_published_models_set_key", "published_models", ["set_key"])
    op.create_index("ix_published_models_account_id", "published_models", ["account_id"])
    op.create_index("ix_published_models_run_id", "published_models", ["run_id"])


def downgrade() -> None:
    op.drop_index("ix_published_models_run_id", "published_models")
    op.drop_index("ix_published_models_account_id", "published_models")
    op.drop_index("ix_published_models_set_key", "published_models")
    op.drop_table("published_models")
