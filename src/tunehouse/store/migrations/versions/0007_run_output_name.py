"""the output model name as a column of runs, indexed per account (it lived in runs.extra)

Revision ID: 0007
Revises: 0006
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX = "ix_runs_account_id_output_name"


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("output_name", sa.String(128), nullable=True))
        batch.create_index(INDEX, ["account_id", "output_name"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            """
            UPDATE runs SET output_name = extra->>'output_name',
                extra = (extra::jsonb - 'output_name')::json
            WHERE extra::jsonb ? 'output_name'
            """
        )
    else:
        op.execute(
            """
            UPDATE runs SET output_name = json_extract(extra, '$.output_name'),
                extra = json_remove(extra, '$.output_name')
            WHERE json_type(extra, '$.output_name') IS NOT NULL
            """
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            """
            UPDATE runs SET extra = (extra::jsonb || jsonb_build_object('output_name', output_name))::json
            WHERE output_name IS NOT NULL
            """
        )
    else:
        op.execute(
            """
            UPDATE runs SET extra = json_set(extra, '$.output_name', output_name)
            WHERE output_name IS NOT NULL
            """
        )
    with op.batch_alter_table("runs") as batch:
        batch.drop_index(INDEX)
        batch.drop_column("output_name")
