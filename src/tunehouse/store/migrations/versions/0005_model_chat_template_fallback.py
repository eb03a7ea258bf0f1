"""what a base model without a chat template does with conversations

Revision ID: 0005
Revises: 0004
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.add_column(
            sa.Column("chat_template_fallback", sa.String(16), nullable=False, server_default="chatml")
        )


def downgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.drop_column("chat_template_fallback")
