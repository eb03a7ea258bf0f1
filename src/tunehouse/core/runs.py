"""Runs: one training execution of a job, from creation to a terminal state."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from tunehouse.core import catalog
from tunehouse.core.clock import utcnow
from tunehouse.core.errors import Conflict, InvalidParameter, NotFound
from tunehouse.core.events import record_event
from tunehouse.core.ids import new_key
from tunehouse.core.registry import resolve_base
from tunehouse.core.states import TERMINAL, RunState, check_move
from tunehouse.store.models import Checkpoint, File, Job, Run
from tunehouse.trainer.data import formats_for_train_mode

SPLIT_RATIO = (0, 20)


@dataclass(frozen=True)
class DatasetChoice:
    file: File
    sampling_rate: float = 1.0


def create_run(
    s: Session,
    job: Job,
    method: str,
    hyperparameters: dict[str, Any],
    datasets: list[DatasetChoice],
    split_ratio: int = 0,
    model: str | None = None,
    train_mode: str | None = None,
    extra: dict[str, Any] | None = None,
) -> Run:
    """Validate everything a run needs up front, then queue it. Unknown hyperparameter keys are kept."""
    model = _pin(job.base_model, model, "model")
    train_mode = _pin(job.train_mode, train_mode, "train_mode")
    base = resolve_base(s, model)
    caps = catalog.capabilities(base.name)
    known = {**job.hyperparameters, **hyperparameters}
    resolved = caps.resolve(train_mode, method, known)
    unknown = {k: v for k, v in hyperparameters.items() if k not in resolved}
    if (
        isinstance(split_ratio, bool)
        or not isinstance(split_ratio, int)
        or not (SPLIT_RATIO[0] <= split_ratio <= SPLIT_RATIO[1])
    ):
        raise InvalidParameter(
            "split_ratio", f"must be an integer within [{SPLIT_RATIO[0]}, {SPLIT_RATIO[1]}]"
        )
    if not datasets:
        raise InvalidParameter("datasets", "at least one training file is required")
    allowed = formats_for_train_mode(train_mode)
    for d in datasets:
        if d.sampling_rate != 1:
            raise InvalidParameter("sampling_rate", "sampling rates other than 1 are not supported yet")
        if d.file.format not in allowed:
            raise InvalidParameter(
                "datasets",
                f"file {d.file.key} holds {d.file.format} rows; {train_mode} needs "
                f"{' or '.join(sorted(allowed))}",
            )
    # The job's model and mode are fixed by its first run when the job was created without them.
    job.base_model, job.train_mode = model, train_mode
    version = (s.scalar(select(func.count()).select_from(Run).where(Run.job_id == job.id)) or 0) + 1
    run = Run(
        key=new_key(),
        account_id=job.account_id,
        job_id=job.id,
        version=version,
        base_model=model,
        train_mode=train_mode,
        parameter_scale=method,
        hyperparameters=resolved,
        dataset={"files": [d.file.id for d in datasets], "split_ratio": split_ratio},
        extra={**(extra or {}), "unknown_hyperparameters": unknown},
        state=RunState.QUEUED,
        created_at=utcnow(),
    )
    s.add(run)
    s.flush()
    record_event(s, run, "status", {"state": RunState.QUEUED})
    return run


def _pin(fixed: str | None, given: str | None, field: str) -> str:
    if fixed is not None and given is not None and fixed != given:
        raise InvalidParameter(field, f"the job is for {fixed}, not {given}")
    value = fixed or given
    if value is None:
        raise InvalidParameter(field, f"{field} is required")
    return value


def runs_query(account_id: int, job_id: int | None = None) -> Select[Any]:
    q = select(Run).where(Run.account_id == account_id, Run.deleted_at.is_(None))
    return q if job_id is None else q.where(Run.job_id == job_id)


def get_run(s: Session, account_id: int, key: str | None = None, int_id: int | None = None) -> Run:
    cond = Run.key == key if key is not None else Run.id == int_id
    run = s.scalar(runs_query(account_id).where(cond))
    if run is None:
        raise NotFound("run", key if key is not None else str(int_id))
    return run


def move(s: Session, run: Run, target: RunState, error: str | None = None) -> None:
    run.state = check_move(run.state, target)
    now = utcnow()
    if target == RunState.RUNNING and run.started_at is None:
        run.started_at = now
    if target in TERMINAL:
        run.finished_at = now
        if target == RunState.SUCCEEDED:
            run.progress = 100
    if error is not None:
        run.error = error
    record_event(s, run, "status", {"state": target, **({"error": error} if error else {})})


def request_stop(s: Session, run: Run) -> bool:
    """False when the run has already ended; otherwise it will end stopped (at once unless it is running)."""
    if run.state in TERMINAL:
        return False
    if run.state in (RunState.RUNNING, RunState.PAUSING, RunState.STOPPING):
        # The scheduler delivers the stop to the trainer, which checkpoints and exits.
        run.stop_requested = True
        if run.state != RunState.STOPPING:
            move(s, run, RunState.STOPPING)
        return True
    move(s, run, RunState.STOPPED)
    return True


def delete_run(s: Session, run: Run) -> None:
    if run.state not in TERMINAL:
        raise Conflict("the run has not ended; stop it first")
    run.deleted_at = utcnow()


def checkpoints(s: Session, run: Run) -> list[Checkpoint]:
    return list(s.scalars(select(Checkpoint).where(Checkpoint.run_id == run.id).order_by(Checkpoint.step)))


def job_of(s: Session, run: Run) -> Job:
    return s.get_one(Job, run.job_id)
