"""Jobs: named containers of runs with a base model and a train mode."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from tunehouse.core import catalog
from tunehouse.core.clock import utcnow
from tunehouse.core.errors import Conflict, InvalidParameter, NotFound
from tunehouse.core.ids import new_key
from tunehouse.core.registry import resolve_base
from tunehouse.core.states import TERMINAL
from tunehouse.store.models import Job, Run

NAME_LEN = (2, 20)
DESCRIPTION_MAX = 500


def create_job(
    s: Session,
    account_id: int,
    name: str,
    description: str = "",
    model: str | None = None,
    train_mode: str | None = None,
    method: str | None = None,
    hyperparameters: dict[str, Any] | None = None,
) -> Job:
    if not NAME_LEN[0] <= len(name) <= NAME_LEN[1]:
        raise InvalidParameter("name", f"name length must be within [{NAME_LEN[0]}, {NAME_LEN[1]}]")
    if len(description) > DESCRIPTION_MAX:
        raise InvalidParameter("description", f"description length must be within [0, {DESCRIPTION_MAX}]")
    if model is not None:
        resolve_base(s, model)
        caps = catalog.capabilities(model)
        if train_mode is not None:
            caps.params_for(train_mode, method or "lora")
            if hyperparameters:
                # Job defaults are checked now, not first at the run that inherits them.
                caps.resolve(train_mode, method or "lora", hyperparameters)
    job = Job(
        key=new_key(),
        account_id=account_id,
        name=name,
        description=description,
        base_model=model,
        train_mode=train_mode,
        parameter_scale=method,
        hyperparameters=hyperparameters or {},
        created_at=utcnow(),
    )
    s.add(job)
    s.flush()
    return job


def jobs_query(account_id: int, train_mode: str | None = None, model: str | None = None) -> Select[Any]:
    q = select(Job).where(Job.account_id == account_id, Job.deleted_at.is_(None))
    if train_mode:
        q = q.where(Job.train_mode == train_mode)
    if model:
        q = q.where(Job.base_model == model)
    return q


def get_job(s: Session, account_id: int, key: str | None = None, int_id: int | None = None) -> Job:
    cond = Job.key == key if key is not None else Job.id == int_id
    job = s.scalar(jobs_query(account_id).where(cond))
    if job is None:
        raise NotFound("job", key if key is not None else str(int_id))
    return job


def delete_job(s: Session, job: Job) -> None:
    runs = list(s.scalars(select(Run).where(Run.job_id == job.id, Run.deleted_at.is_(None))))
    if any(r.state not in TERMINAL for r in runs):
        raise Conflict("the job has runs that have not ended; stop them first")
    now = utcnow()
    job.deleted_at = now
    for r in runs:
        r.deleted_at = now
