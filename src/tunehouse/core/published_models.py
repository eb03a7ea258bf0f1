"""Published models: a finished run's output, or one of its checkpoints, published as a version of a named
model set so that it can be served. Publishing copies nothing: a version points at the run's weights, so it
is ready at once. The first version of a set gives the set its key.
"""

from __future__ import annotations

from dataclasses import replace

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from tunehouse.core import deployments as dep_svc
from tunehouse.core.clock import utcnow
from tunehouse.core.deployments import ServingTarget
from tunehouse.core.errors import Conflict, InvalidParameter, NotFound
from tunehouse.core.ids import new_key
from tunehouse.core.states import RunState
from tunehouse.store.models import Checkpoint, Deployment, Model, PublishedModel, Run

MAX_NAME = 128


def publish(
    s: Session, account_id: int, run: Run, name: str | None, step: int | None, set_key: str | None = None
) -> PublishedModel:
    """A new version of the set `set_key`, or the first version of a new set called `name`."""
    if step is None and run.state != RunState.SUCCEEDED:
        raise Conflict(f"the run is {run.state}; only a finished run's model is published")
    if (
        step is not None
        and s.scalar(select(Checkpoint.id).where(Checkpoint.run_id == run.id, Checkpoint.step == step))
        is None
    ):
        raise InvalidParameter("step", f"the run has no checkpoint at step {step}")
    if set_key is not None:
        first = get_set(s, account_id, set_key)[-1]
        name = first.set_name
    else:
        if not name or len(name) > MAX_NAME:
            raise InvalidParameter("modelName", f"a name of 1 to {MAX_NAME} characters is required")
        taken = select(PublishedModel.id).where(
            PublishedModel.account_id == account_id, PublishedModel.set_name == name
        )
        if s.scalar(taken) is not None:
            raise Conflict(f"a model named {name!r} already exists")
    key = new_key()
    pm = PublishedModel(
        key=key,
        set_key=set_key or key,
        set_name=name,
        account_id=account_id,
        run_id=run.id,
        step=step,
        created_at=utcnow(),
    )
    s.add(pm)
    s.flush()
    return pm


def _live(account_id: int) -> Select[tuple[PublishedModel]]:
    # A deleted run takes its published versions with it.
    return (
        select(PublishedModel)
        .join(Run, Run.id == PublishedModel.run_id)
        .where(PublishedModel.account_id == account_id, Run.deleted_at.is_(None))
    )


def get_version(s: Session, account_id: int, key: str) -> PublishedModel:
    pm = s.scalar(_live(account_id).where(PublishedModel.key == key))
    if pm is None:
        raise NotFound("model version", key)
    return pm


def get_set(s: Session, account_id: int, set_key: str) -> list[PublishedModel]:
    """The set's versions, newest first; another account's set is not found."""
    rows = list(
        s.scalars(
            _live(account_id).where(PublishedModel.set_key == set_key).order_by(PublishedModel.id.desc())
        )
    )
    if not rows:
        raise NotFound("model set", set_key)
    return rows


def sets_query(account_id: int) -> Select[tuple[PublishedModel]]:
    """One row per set (its first version, whose key is the set's), for paging."""
    return _live(account_id).where(PublishedModel.key == PublishedModel.set_key)


def run_of(s: Session, pm: PublishedModel) -> Run:
    return s.get_one(Run, pm.run_id)


def target_of(s: Session, account_id: int, pm: PublishedModel, name: str) -> ServingTarget:
    """What an engine loads for the version; `name` is what the caller calls it."""
    run = run_of(s, pm)
    target: ServingTarget | None = None
    if run.output_name:
        if pm.step is None:
            found = dep_svc.resolve_model_target(s, account_id, run.output_name)
            target = None if found is None else replace(found, model_name=name)
        else:
            target = dep_svc.resolve_checkpoint_target(s, account_id, name, run.output_name, pm.step)
    if target is None:
        raise NotFound("model version", name)  # its weights are gone (the model was deleted)
    return target


def version_of_deployment(s: Session, dep: Deployment) -> PublishedModel | None:
    """The published version a deployment serves, if it serves one."""
    q = select(PublishedModel).where(PublishedModel.account_id == dep.account_id)
    if dep.checkpoint_id is not None:
        ckpt = s.get(Checkpoint, dep.checkpoint_id)
        if ckpt is None:
            return None
        q = q.where(PublishedModel.run_id == ckpt.run_id, PublishedModel.step == ckpt.step)
    elif dep.model_id is not None:
        model = s.get(Model, dep.model_id)
        if model is None or model.source_run_id is None:
            return None
        q = q.where(PublishedModel.run_id == model.source_run_id, PublishedModel.step.is_(None))
    else:
        return None
    return s.scalar(q.order_by(PublishedModel.id))
