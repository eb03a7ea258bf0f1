"""file descriptions and workspace scoping of files and jobs

Revision ID: 0002
Revises: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("files") as batch:
        batch.add_column(sa.Column("description", sa.Text(), nullable=False, server_default=""))
        batch.add_column(sa.Column("workspace", sa.String(length=64), nullable=True))
        batch.create_index("ix_files_workspace", ["workspace"])
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("workspace", sa.String(length=64), nullable=True))
        batch.create_index("ix_jobs_workspace", ["workspace"])


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_workspace")
        batch.drop_column("workspace")
    with op.batch_alter_table("files") as batch:
        batch.drop_index("ix_files_workspace")
        batch.drop_column("description")
        batch.drop_column("workspace")
