"""A run as the status calls render it: one row of plain values, read without the ORM.

The calls clients poll (Qianfan DescribeFineTuningTask, OpenAI retrieve, DashScope get) need the run, a few
columns of its job, the name of the model it produced and how many checkpoints it saved. `find_run_view`
reads all of that in one compiled Core statement; building ORM objects for it cost more than the query.
Paths that already hold an ORM run (creates, cancels, lists) get the same view from `view_of`, so every
dialect has one renderer whichever way the run was read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Dialect, Select, bindparam, func, literal_column, select
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.orm import Session

from tunehouse.store.loop_reads import LoopReads
from tunehouse.store.models import Checkpoint, Job, Model, Run


@dataclass(frozen=True, slots=True)
class RunView:
    id: int
    key: str
    account_id: int
    base_model: str
    train_mode: str
    parameter_scale: str
    hyperparameters: dict[str, Any]
    dataset: dict[str, Any]
    extra: dict[str, Any]
    state: str
    progress: int
    metrics: dict[str, Any]
    error: str | None
    output_model_id: int | None
    output_name: str | None  # the name the run's output is to have (planned at create)
    created_at: datetime
    finished_at: datetime | None
    job_key: str
    job_name: str
    job_description: str
    job_base_model: str | None
    job_workspace: str | None
    output_model_name: str | None  # None also when the produced model row is gone
    checkpoint_count: int | None  # None: not counted (view_of without count=True)
    # (step, metrics) of each checkpoint in step order; None: not read with the run (see checkpoint_steps)
    checkpoints: list[tuple[int, dict[str, Any]]] | None = None


_COUNT = select(func.count()).where(Checkpoint.run_id == Run.id).correlate(Run).scalar_subquery()

# Built once: SQLAlchemy then finds the compiled form in its cache by identity of the statement.
_BY_KEY = (
    select(
        Run.id,
        Run.key,
        Run.account_id,
        Run.base_model,
        Run.train_mode,
        Run.parameter_scale,
        Run.hyperparameters,
        Run.dataset,
        Run.extra,
        Run.state,
        Run.progress,
        Run.metrics,
        Run.error,
        Run.output_model_id,
        Run.output_name,
        Run.created_at,
        Run.finished_at,
        Job.key,
        Job.name,
        Job.description,
        Job.base_model,
        Job.workspace,
        Model.name,
        _COUNT,
    )  # fmt: skip
    .join(Job, Job.id == Run.job_id)
    .outerjoin(Model, Model.id == Run.output_model_id)
    .where(Run.account_id == bindparam("account_id"), Run.key == bindparam("key"), Run.deleted_at.is_(None))
)


# The same row with the run's checkpoints folded in (PostgreSQL): Qianfan's task lists them, and one round
# trip per poll costs less than two.
_STEP = Checkpoint.step
_CHECKPOINT_LIST = (
    select(
        func.coalesce(
            func.json_agg(
                aggregate_order_by(func.json_build_array(Checkpoint.step, Checkpoint.metrics), _STEP)
            ),
            literal_column("'[]'::json"),
        )
    )
    .where(Checkpoint.run_id == Run.id)
    .correlate(Run)
    .scalar_subquery()
)
_BY_KEY_WITH_CHECKPOINTS = _BY_KEY.add_columns(_CHECKPOINT_LIST)


def find_run_view(conn: Connection | Session, account_id: int, key: str) -> RunView | None:
    """The account's run with this key, unless deleted (another account's run is simply not found)."""
    rows = _rows(conn, _BY_KEY, {"account_id": account_id, "key": key})
    return RunView(*rows[0]) if rows else None


async def fetch_run_view(
    reads: LoopReads, dialect: Dialect, account_id: int, key: str, checkpoints: bool = False
) -> RunView | None:
    """`find_run_view` on the event loop (PostgreSQL); `checkpoints` also reads the run's checkpoints."""
    stmt = _BY_KEY_WITH_CHECKPOINTS if checkpoints else _BY_KEY
    rows = await reads.fetch(_sql(stmt, dialect), {"account_id": account_id, "key": key})
    if not rows:
        return None
    if not checkpoints:
        return RunView(*rows[0])
    *row, steps = rows[0]
    return RunView(*row, checkpoints=[(int(step), metrics) for step, metrics in steps])


def view_of(s: Session, run: Run, count: bool = True) -> RunView:
    """The view of a run already loaded in `s`, as it stands in the session (unflushed changes included);
    `count=False` saves the checkpoint count's query where the rendering does not show it."""
    job = s.get_one(Job, run.job_id)
    model = s.get(Model, run.output_model_id) if run.output_model_id is not None else None
    n = (s.scalar(select(func.count()).where(Checkpoint.run_id == run.id)) or 0) if count else None
    return RunView(
        run.id, run.key, run.account_id, run.base_model, run.train_mode, run.parameter_scale,
        run.hyperparameters, run.dataset, run.extra, run.state, run.progress, run.metrics, run.error,
        run.output_model_id, run.output_name, run.created_at, run.finished_at,
        job.key, job.name, job.description, job.base_model, job.workspace,
        model.name if model is not None else None, n,
    )  # fmt: skip


_CHECKPOINTS = (
    select(Checkpoint.step, Checkpoint.metrics)
    .where(Checkpoint.run_id == bindparam("run"))
    .order_by(Checkpoint.step)
)


def checkpoint_steps(conn: Connection | Session, run_id: int) -> list[tuple[int, dict[str, Any]]]:
    """(step, metrics) of each checkpoint the run saved, in step order."""
    return [(int(step), metrics) for step, metrics in _rows(conn, _CHECKPOINTS, {"run": run_id})]


def _rows(conn: Connection | Session, stmt: Select[Any], params: dict[str, Any]) -> Sequence[Sequence[Any]]:
    """The statement's rows. On PostgreSQL, through the driver's cursor with the statement's SQL compiled
    once: SQLAlchemy's execution and result layers cost several times what psycopg does for these rows,
    and psycopg already hands back what the columns' types would (JSON decoded, aware datetimes). Should the
    driver fail (a connection lost to a database restart), the statement runs again through SQLAlchemy,
    which wraps the error and invalidates the pool as for any other query."""
    if isinstance(conn, Connection) and conn.dialect.name == "postgresql":
        try:
            cursor = conn.connection.driver_connection.execute(_sql(stmt, conn.dialect), params)  # type: ignore[union-attr]
            return cursor.fetchall()  # type: ignore[no-any-return]
        except Exception:
            pass
    return conn.execute(stmt, params).all()


_compiled: dict[tuple[int, str], str] = {}


def _sql(stmt: Select[Any], dialect: Dialect) -> str:
    sql = _compiled.get((id(stmt), dialect.name))
    if sql is None:
        sql = _compiled[(id(stmt), dialect.name)] = str(stmt.compile(dialect=dialect))
    return sql
