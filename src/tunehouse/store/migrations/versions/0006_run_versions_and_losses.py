"""run versions unique per job; count of lost trainers per run

Revision ID: 0006
Revises: 0005
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Concurrent creates once gave two runs of a job the same version: number such jobs' runs afresh by id.
    op.execute(
        """
        UPDATE runs SET version = (
            SELECT count(*) FROM runs AS r2 WHERE r2.job_id = runs.job_id AND r2.id <= runs.id
        )
        WHERE job_id IN (SELECT job_id FROM runs GROUP BY job_id, version HAVING count(*) > 1)
        """
    )
    with op.batch_alter_table("runs") as batch:
        batch.create_unique_constraint("uq_runs_job_id_version", ["job_id", "version"])
        batch.add_column(sa.Column("losses", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("losses")
        batch.drop_constraint("uq_runs_job_id_version", type_="unique")
