"""Runs: one training execution of a job, from creation to a terminal state."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, bindparam, func, select
from sqlalchemy.orm import Session, joinedload

from tunehouse.contract.datasets import formats_for_train_mode
from tunehouse.contract.spec import MAX_GPUS
from tunehouse.core import catalog, placement
from tunehouse.core.clock import utcnow
from tunehouse.core.errors import Conflict, InvalidParameter, NotFound, QuotaExceeded
from tunehouse.core.events import record_event
from tunehouse.core.ids import new_key
from tunehouse.core.registry import check_output_name, resolve_model
from tunehouse.core.states import TERMINAL, WANTS_TRAINER, RunState, check_move
from tunehouse.store.locks import lock_row
from tunehouse.store.models import Account, Checkpoint, File, Job, Model, Run

# Percent of training rows held out for evaluation; dialects may allow less (Qianfan: 20).
SPLIT_RATIO = (0, 50)
# Fewer training examples than this teach a model nothing: such a run is accepted, then fails validation.
MIN_EXAMPLES = 10
MODEL_NAME_MAX = 128  # the models table's limit


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
    validation: list[DatasetChoice] | None = None,
    increment_from: tuple[Run, int | None] | None = None,
    output_name: str | None = None,
    check_examples: bool = True,
    gpus: int = 1,
) -> Run:
    """Validate everything a run needs up front, then queue it. Unknown hyperparameter keys are kept.

    `increment_from` (a finished run and optionally one of its checkpoint steps) or a fine-tuned `model`
    give the starting weights; `output_name` names the produced model and may hold `{key}`; `gpus` is how
    many GPUs (ranks) it trains on. A run on too few examples is recorded and failed at once
    (`fail_if_too_few_examples`); `check_examples=False` leaves that to the caller, to log its own
    validation first.
    """
    model = _pin(job.base_model, model, "model")
    train_mode = _pin(job.train_mode, train_mode, "train_mode")
    target = resolve_model(s, job.account_id, model)
    caps = catalog.capabilities(target.base.name)
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
    if isinstance(gpus, bool) or not isinstance(gpus, int) or not 1 <= gpus <= MAX_GPUS:
        raise InvalidParameter("gpus", f"must be an integer within [1, {MAX_GPUS}]")
    if not datasets:
        raise InvalidParameter("datasets", "at least one training file is required")
    placement.refuse_unplaceable({**(extra or {}), "gpus": gpus})
    _check_formats(datasets, train_mode, "datasets")
    _check_formats(validation or [], train_mode, "validation")
    init_from = target.init_from
    if init_from is not None:
        init_from = {**init_from, "source": f"model:{model}"}
    if increment_from is not None:
        init_from = _increment_source(s, *increment_from, base=target.base.name)
    key = new_key()
    # Plain substitution, not str.format: a user-chosen name may contain braces.
    name = (output_name or "{base}-ft-{key}").replace("{key}", key).replace("{base}", target.base.name)
    if len(name) > MODEL_NAME_MAX:
        raise InvalidParameter("output_name", f"the model name must be at most {MODEL_NAME_MAX} characters")
    check_run_limit(s, job.account_id)
    # After the account's lock: two creates naming the same output take turns, and the second sees the first.
    check_output_name(s, job.account_id, name)
    # A file deleted meanwhile is refused; a delete from now on sees this run (files.delete_file).
    _hold_files(s, datasets, "datasets")
    _hold_files(s, validation or [], "validation")
    # The job's model and mode are fixed by its first run when the job was created without them.
    job.base_model, job.train_mode = model, train_mode
    # Creates in one job take turns from here (after the account's lock: always account, job, run), so
    # each counts the runs committed before it and versions stay unique.
    lock_row(s, job)
    version = (s.scalar(select(func.max(Run.version)).where(Run.job_id == job.id)) or 0) + 1
    run = Run(
        key=key,
        account_id=job.account_id,
        job_id=job.id,
        version=version,
        base_model=target.base.name,
        train_mode=train_mode,
        parameter_scale=method,
        hyperparameters=resolved,
        dataset={
            "files": [d.file.id for d in datasets],
            "validation_files": [d.file.id for d in validation or []],
            "split_ratio": split_ratio,
        },
        output_name=name,
        extra={
            **(extra or {}),
            "unknown_hyperparameters": unknown,
            "gpus": gpus,
            **({"init_from": init_from} if init_from else {}),
        },
        state=RunState.QUEUED,
        created_at=utcnow(),
    )
    s.add(run)
    s.flush()
    record_event(s, run, "status", {"state": RunState.QUEUED})
    if check_examples:
        fail_if_too_few_examples(s, run, datasets)
    return run


def too_few_examples(datasets: list[DatasetChoice]) -> str | None:
    """Why the training files are too small to train on, or None when they hold enough examples."""
    rows = sum(d.file.rows for d in datasets)
    if rows >= MIN_EXAMPLES:
        return None
    return f"Training file has {rows} example(s), but must have at least {MIN_EXAMPLES} examples"


def fail_if_too_few_examples(s: Session, run: Run, datasets: list[DatasetChoice]) -> str | None:
    """Fails a just-queued run whose training files are too small (the reason is returned), as a
    validation failure reported through the run rather than a refused request."""
    message = too_few_examples(datasets)
    if message is not None:
        move(s, run, RunState.FAILED, error=message)
    return message


def epoch_save_steps(rows: int, batch_size: int) -> int:
    """A checkpoint at the end of every epoch: the save interval when the caller chose none."""
    return max(1, math.ceil(rows / max(1, batch_size)))


def estimated_finish(run: Run, now: datetime | None = None) -> datetime | None:
    """When a running run should end, from the trainer's latest ETA; None when it is not training."""
    eta = run.metrics.get("eta_seconds")
    if run.state != RunState.RUNNING or eta is None:
        return None
    return (now or utcnow()) + timedelta(seconds=float(eta))


def run_gpus(extra: dict[str, Any] | None) -> int:
    """The GPUs a run asked for (runs created before the setting existed asked for one)."""
    value = (extra or {}).get("gpus", 1)
    return value if isinstance(value, int) and value >= 1 else 1


def check_run_limit(s: Session, account_id: int) -> None:
    """Refuse one more queued run when the account already has as many as its limit allows."""
    # The row lock makes concurrent creates of one account take turns, so each counts the others' runs.
    account = s.get_one(Account, account_id)
    lock_row(s, account)
    limit = account.max_active_runs
    if limit is None:
        return
    active = s.scalar(
        select(func.count())
        .select_from(Run)
        .where(
            Run.account_id == account_id,
            Run.deleted_at.is_(None),
            Run.state.in_([st.value for st in WANTS_TRAINER]),
        )
    )
    if (active or 0) >= limit:
        raise QuotaExceeded(
            f"Too many active fine-tuning jobs: this account may have {limit} queued or running at once "
            f"and has {active}. Wait for one to finish, or cancel or pause one.",
            limit,
        )


def _hold_files(s: Session, datasets: list[DatasetChoice], field: str) -> None:
    for d in datasets:
        lock_row(s, d.file)
        if d.file.deleted_at is not None:
            raise InvalidParameter(field, f"file {d.file.key} has been deleted")


def _check_formats(datasets: list[DatasetChoice], train_mode: str, field: str) -> None:
    allowed = formats_for_train_mode(train_mode)
    for d in datasets:
        if d.sampling_rate != 1:
            raise InvalidParameter("sampling_rate", "sampling rates other than 1 are not supported yet")
        if d.file.format not in allowed:
            raise InvalidParameter(
                field,
                f"file {d.file.key} holds {d.file.format} rows; {train_mode} needs "
                f"{' or '.join(sorted(allowed))}",
            )


def _increment_source(s: Session, source: Run, step: int | None, base: str) -> dict[str, str]:
    """Starting weights from an earlier run of the same base model: one of its checkpoints or its output."""
    if source.base_model != base:
        raise InvalidParameter("increment_from", f"that run trained {source.base_model}, not {base}")
    kind = "lora_adapter" if source.parameter_scale == "lora" else "full"
    ref = {"run_id": source.id, "job_id": source.job_id}
    ckpts = checkpoints(s, source)
    if step is not None:
        match = [c for c in ckpts if c.step == step]
        if not match:
            steps = ", ".join(str(c.step) for c in ckpts) or "none"
            raise InvalidParameter("increment_step", f"no checkpoint at step {step}; available: {steps}")
        return {"path": match[0].path, "kind": kind, "source": f"run:{source.key}@{step}", **ref}
    if len(ckpts) > 1:
        steps = ", ".join(str(c.step) for c in ckpts)
        raise InvalidParameter("increment_step", f"required: that run has several checkpoints ({steps})")
    if ckpts:
        return {"path": ckpts[0].path, "kind": kind, "source": f"run:{source.key}@{ckpts[0].step}", **ref}
    if source.output_model_id is not None:
        out = s.get_one(Model, source.output_model_id)
        return {"path": out.path, "kind": out.kind, "source": f"run:{source.key}", **ref}
    raise InvalidParameter("increment_from", "that run has no checkpoint or output model to continue from")


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


def _run_lookup(by: Any) -> Select[Any]:
    # Its job comes in the same query: every rendering needs it, and job_of then finds it in the session.
    return (
        select(Run)
        .where(Run.account_id == bindparam("account_id"), Run.deleted_at.is_(None), by == bindparam("ident"))
        .options(joinedload(Run.job, innerjoin=True))
    )


# Built once: constructing the statement cost a polling request about as much as running it.
_RUN_BY_KEY = _run_lookup(Run.key)
_RUN_BY_ID = _run_lookup(Run.id)


def get_run(s: Session, account_id: int, key: str | None = None, int_id: int | None = None) -> Run:
    q, ident = (_RUN_BY_KEY, key) if key is not None else (_RUN_BY_ID, int_id)
    run = s.scalar(q, {"account_id": account_id, "ident": ident})
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
    lock_row(s, run)  # the scheduler may be claiming it right now: decide on the state it committed
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


def request_pause(s: Session, run: Run) -> None:
    """A running run checkpoints and frees its slot; a queued one is held back. Idempotent."""
    lock_row(s, run)
    if run.state in (RunState.PAUSING, RunState.PAUSED):
        return
    if run.state == RunState.RUNNING:
        move(s, run, RunState.PAUSING)
    elif run.state == RunState.QUEUED:
        move(s, run, RunState.PAUSED)
    else:
        raise Conflict(f"a {run.state} run cannot be paused")


def resume(s: Session, run: Run) -> None:
    """Queue a paused run again; it continues exactly from its last checkpoint."""
    _check_resumable(run)
    check_run_limit(s, run.account_id)  # account before run: the one lock order
    lock_row(s, run)
    _check_resumable(run)  # again, as committed now
    ckpts = checkpoints(s, run)
    if ckpts:
        run.resume_from = ckpts[-1].path
    move(s, run, RunState.QUEUED)


def _check_resumable(run: Run) -> None:
    if run.state != RunState.PAUSED:
        raise Conflict(f"a {run.state} run cannot be resumed; only a paused one")


def delete_run(s: Session, run: Run) -> None:
    lock_row(s, run)
    if run.state not in TERMINAL:
        raise Conflict("the run has not ended; stop it first")
    run.deleted_at = utcnow()


_CHECKPOINT_COUNT = select(func.count()).select_from(Checkpoint).where(Checkpoint.run_id == bindparam("run"))
_CHECKPOINTS = select(Checkpoint).where(Checkpoint.run_id == bindparam("run")).order_by(Checkpoint.step)


def checkpoint_count(s: Session, run: Run) -> int:
    return s.scalar(_CHECKPOINT_COUNT, {"run": run.id}) or 0


def checkpoints(s: Session, run: Run) -> list[Checkpoint]:
    return list(s.scalars(_CHECKPOINTS, {"run": run.id}))


def job_of(s: Session, run: Run) -> Job:
    return s.get_one(Job, run.job_id)
