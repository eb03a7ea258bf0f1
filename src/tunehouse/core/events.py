"""A run's event record, and how trainer events change the run (progress, metrics, checkpoints)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tunehouse.core.clock import utcnow
from tunehouse.store.models import Checkpoint, Event, Run

# Latest value of each metric is kept on the run for cheap detail reads.
_METRIC_KEYS = (
    "train_loss",
    "train_token_accuracy",
    "eval_loss",
    "eval_token_accuracy",
    "learning_rate",
    "grad_norm",
)
# The trainer's phases (loading, running, stopped, ...) as it reported them; see apply_trainer_events.
TRAINER_STATUS = "trainer_status"
_PROGRESS_KEYS = ("tokens_per_second", "eta_seconds", "epoch", "trained_tokens", "padding_share")


def _next_seq(s: Session, run: Run) -> int:
    return (s.scalar(select(func.max(Event.seq)).where(Event.run_id == run.id)) or 0) + 1


def record_event(
    s: Session,
    run: Run,
    type_: str,
    payload: dict[str, Any],
    time: datetime | None = None,
    seq: int | None = None,
) -> Event:
    ev = Event(
        run_id=run.id, seq=seq or _next_seq(s, run), time=time or utcnow(), type=type_, payload=payload
    )
    s.add(ev)
    s.flush()
    return ev


def _parse_time(value: Any) -> datetime:
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            pass
    return utcnow()


def apply_trainer_events(s: Session, run: Run, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Store trainer events not seen before (idempotent by trainer seq) and fold them into the run.

    Returns the newly applied events; status changes are left to the caller (the scheduler decides them).
    The trainer's own status reports are kept as ``trainer_status``: in the record, ``status`` is the run's
    state as the server moved it, so no reader has to tell a state change from the trainer's echo of it.
    """
    fresh = [e for e in events if int(e.get("seq", 0)) > run.last_event_seq]
    first = _next_seq(s, run) if fresh else 0
    for i, e in enumerate(fresh):
        payload = e.get("payload") or {}
        type_ = str(e.get("type", "log"))
        stored = TRAINER_STATUS if type_ == "status" else type_
        record_event(s, run, stored, payload, _parse_time(e.get("time")), seq=first + i)
        run.last_event_seq = int(e["seq"])
        if type_ == "progress":
            run.step = int(payload.get("step", run.step))
            run.total_steps = int(payload.get("total_steps", run.total_steps))
            run.progress = max(0, min(100, int(payload.get("percent", run.progress))))
            run.metrics = {**run.metrics, **{k: payload[k] for k in _PROGRESS_KEYS if k in payload}}
        elif type_ == "metrics":
            run.metrics = {**run.metrics, **{k: payload[k] for k in _METRIC_KEYS if k in payload}}
        elif type_ == "checkpoint":
            step = int(payload.get("step", 0))
            exists = s.scalar(select(Checkpoint).where(Checkpoint.run_id == run.id, Checkpoint.step == step))
            if exists is None:
                s.add(
                    Checkpoint(
                        run_id=run.id,
                        step=step,
                        path=str(payload.get("path", "")),
                        metrics=dict(payload.get("metrics") or {}),
                        created_at=utcnow(),
                    )
                )
        elif type_ == "checkpoint_deleted":
            # The trainer's keep-last-K rotation removed it from disk; it is no longer resumable.
            gone = s.scalar(
                select(Checkpoint).where(
                    Checkpoint.run_id == run.id, Checkpoint.step == int(payload.get("step", -1))
                )
            )
            if gone is not None:
                s.delete(gone)
        elif type_ == "model" and "trained_tokens" in payload:
            run.metrics = {**run.metrics, "trained_tokens": payload["trained_tokens"]}
        elif type_ == "error":
            run.error = str(payload.get("reason", "the trainer failed"))
    s.flush()
    return fresh


def events_page(
    s: Session,
    run: Run,
    after_seq: int | None = None,
    before_seq: int | None = None,
    limit: int = 100,
    newest_first: bool = False,
) -> list[Event]:
    q = select(Event).where(Event.run_id == run.id)
    if after_seq is not None:
        q = q.where(Event.seq > after_seq)
    if before_seq is not None:
        q = q.where(Event.seq < before_seq)
    q = q.order_by(Event.seq.desc() if newest_first else Event.seq).limit(limit)
    return list(s.scalars(q))


def metric_rows(s: Session, run: Run) -> list[dict[str, Any]]:
    """Every metrics event's payload in step order (train and eval rows are separate events)."""
    q = select(Event.payload).where(Event.run_id == run.id, Event.type == "metrics").order_by(Event.seq)
    return [dict(p) for p in s.scalars(q)]
